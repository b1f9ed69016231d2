"""Reports from workers (POST /results, POST /failures) and delivery (GET /results)."""

import json

import orjson
import structlog
from fastapi import APIRouter, Depends, Query

from rainchanel.errors import NotFound, PayloadTooLarge
from rainchanel.server.auth import Principal
from rainchanel.server.envelope import ok
from rainchanel.server.schemas import FailureReport, ResultReport
from rainchanel.server.services import Services, current_principal, get_services
from rainchanel.store.clock import to_rfc3339
from rainchanel.store.queue import Outcome, TaskRecord
from rainchanel.store.status import TaskStatus

log = structlog.get_logger("rainchanel.results")
router = APIRouter()

MAX_DELIVERY_BATCH = 100


@router.post("/results")
async def post_result(
    body: ResultReport,
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    result_json = encode_result(body.result, services.settings.limits.max_result_bytes)
    outcome = await services.queue.complete(
        body.task_id, principal.user_id, result_json, body.lease_token, body.created_by
    )
    _record_outcome(services, outcome, principal)
    return ok({"task_id": body.task_id, "status": outcome.status.value})


@router.post("/failures")
async def post_failure(
    body: FailureReport,
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    error = truncate_utf8(body.error_msg, services.settings.limits.max_error_bytes)
    outcome = await services.queue.fail(
        body.task_id, principal.user_id, error, body.lease_token, body.created_by, body.retryable
    )
    _record_outcome(services, outcome, principal, error)
    return ok({"task_id": body.task_id, "status": outcome.status.value, "retried": outcome.retried})


@router.get("/results")
async def get_results(
    max: int | None = Query(default=None, ge=1, le=MAX_DELIVERY_BATCH, description="deliver up to this many results"),
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    records = await services.queue.deliver_results(principal.user_id, max or 1)
    for record in records:
        log.info("result_delivered", task_id=record.id, owner=record.owner_id, status=record.status.value)
    if not records:
        raise NotFound("no undelivered result; try again later")
    if max is None:
        return ok({"result": result_view(records[0])})
    return ok({"results": [result_view(record) for record in records]})


def result_view(record: TaskRecord) -> dict:
    failed = record.status == TaskStatus.FAILED
    return {
        "task_id": record.id,
        "created_by": record.owner_id,
        "status": record.status.value,
        "result": None if failed else record.result,
        "error": record.last_error if failed else None,
        "attempts": record.attempts,
        "func": record.func,
        "finished_at": to_rfc3339(record.finished_at),
    }


def encode_result(result: object, max_result_bytes: int) -> str:
    """Serialise a result as JSON, refusing one over the size limit."""
    try:
        encoded = orjson.dumps(result).decode()
    except TypeError:
        # orjson stops at 64-bit integers; a result may carry bigger ones.
        encoded = json.dumps(result, separators=(",", ":"))
    size = len(encoded.encode())
    if size > max_result_bytes:
        raise PayloadTooLarge(f"result is {size} bytes as JSON, over the {max_result_bytes} byte limit")
    return encoded


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Cut text to at most max_bytes of UTF-8 without splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode("utf-8", errors="ignore")


def _record_outcome(services: Services, outcome: Outcome, principal: Principal, error: str | None = None) -> None:
    metrics = services.metrics
    if outcome.run_seconds is not None:
        metrics.run_time.observe(outcome.run_seconds)
    fields = {"task_id": outcome.task_id, "owner": outcome.owner_id, "worker": principal.user_id, "attempt": outcome.attempt}
    if outcome.status == TaskStatus.COMPLETED:
        metrics.completed.inc()
        log.info("task_completed", **fields)
    elif outcome.retried:
        metrics.retried.inc()
        log.info("task_retried", error=error, **fields)
    else:
        metrics.failed.inc()
        log.warning("task_failed", error=error, **fields)

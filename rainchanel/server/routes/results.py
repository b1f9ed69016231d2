"""Reports from workers (POST /results, POST /failures) and delivery (GET /results)."""

import json
from typing import Annotated

import orjson
import structlog
from fastapi import APIRouter, Body, Depends, Query, Request

from rainchanel.errors import InvalidRequest, NotFound, PayloadTooLarge, RainChanelError
from rainchanel.server.auth import Principal
from rainchanel.server.envelope import ok
from rainchanel.server.schemas import FailureReport, ResultReport
from rainchanel.server.services import Services, current_principal, get_services
from rainchanel.store.clock import to_rfc3339
from rainchanel.server.waiting import BATCH_LINGER_SECONDS, MAX_WAIT_SECONDS, fetch_or_wait
from rainchanel.store.queue import Outcome, Report, TaskRecord
from rainchanel.store.status import TERMINAL_STATUSES, TaskStatus

log = structlog.get_logger("rainchanel.results")
router = APIRouter()

MAX_DELIVERY_BATCH = 100
MAX_REPORT_BATCH = 1000


@router.post("/results")
async def post_results(
    body: Annotated[ResultReport | list[ResultReport], Body()],
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    """Record one result, or a list of results in one transaction."""
    max_result_bytes = services.settings.limits.max_result_bytes
    if isinstance(body, ResultReport):
        report = Report(
            body.task_id, principal.user_id, body.lease_token, body.created_by, completed=True,
            result_json=encode_result(body.result, max_result_bytes),
        )
        return ok(_single_answer(await _record(services, [report], principal)))

    _check_batch_size(body)
    reports, refused = [], {}
    for index, item in enumerate(body):
        try:
            result_json = encode_result(item.result, max_result_bytes)
        except RainChanelError as exc:
            refused[index] = exc
            continue
        reports.append(
            Report(item.task_id, principal.user_id, item.lease_token, item.created_by, completed=True, result_json=result_json)
        )
    answers = await _record(services, reports, principal) if reports else []
    return ok({"results": _merge_answers(body, answers, refused)})


@router.post("/failures")
async def post_failures(
    body: Annotated[FailureReport | list[FailureReport], Body()],
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    """Record one failed attempt, or a list of them in one transaction."""
    max_error_bytes = services.settings.limits.max_error_bytes
    items = [body] if isinstance(body, FailureReport) else body
    if isinstance(body, list):
        _check_batch_size(body)
    reports = [
        Report(
            item.task_id, principal.user_id, item.lease_token, item.created_by, completed=False,
            error=truncate_utf8(item.error_msg, max_error_bytes), retryable=item.retryable,
        )
        for item in items
    ]
    answers = await _record(services, reports, principal)
    if isinstance(body, FailureReport):
        return ok(_single_answer(answers))
    return ok({"results": [_answer_view(answer) for answer in answers]})


async def _record(services: Services, reports: list[Report], principal: Principal) -> list:
    answers = await services.queue.report(reports)
    for report, answer in zip(reports, answers):
        if isinstance(answer, Outcome):
            _record_outcome(services, answer, principal, report.error)
    if any(isinstance(answer, Outcome) and answer.status in TERMINAL_STATUSES for answer in answers):
        services.result_signal.notify()
    return answers


def _check_batch_size(items: list) -> None:
    if not 1 <= len(items) <= MAX_REPORT_BATCH:
        raise InvalidRequest(f"a list of reports must hold 1 to {MAX_REPORT_BATCH} items, got {len(items)}")


def _single_answer(answers: list) -> dict:
    answer = answers[0]
    if isinstance(answer, RainChanelError):
        raise answer
    return _answer_view(answer)


def _answer_view(answer) -> dict:
    if isinstance(answer, RainChanelError):
        return {"error": {"code": answer.status_code, "message": answer.message}}
    return {"task_id": answer.task_id, "status": answer.status.value, "retried": answer.retried}


def _merge_answers(items: list, answers: list, refused: dict[int, RainChanelError]) -> list[dict]:
    """Put the answers from the queue and the reports refused before it back in request order."""
    merged, remaining = [], iter(answers)
    for index, item in enumerate(items):
        view = _answer_view(refused[index] if index in refused else next(remaining))
        merged.append({"task_id": item.task_id, **view})
    return merged


@router.get("/results")
async def get_results(
    request: Request,
    max: int | None = Query(default=None, ge=1, le=MAX_DELIVERY_BATCH, description="deliver up to this many results"),
    wait: float = Query(default=0, ge=0, le=MAX_WAIT_SECONDS, description="seconds to wait for a result"),
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    records = await fetch_or_wait(
        lambda: services.queue.deliver_results(principal.user_id, max or 1),
        services.result_signal,
        wait,
        request.is_disconnected,
        linger_seconds=BATCH_LINGER_SECONDS if max else 0,
    )
    if records and wait and await request.is_disconnected():
        # The client left during the delivery; keep the results for its next request.
        await services.queue.undeliver(records)
        log.info("delivery_abandoned", owner=principal.user_id, task_ids=[record.id for record in records])
        return ok({"results": []})
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

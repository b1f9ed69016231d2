"""Publishing, claiming and leasing tasks: /tasks and /tasks/{id}/..."""

import structlog
from fastapi import APIRouter, Depends, Query, Request

from rainchanel.errors import InvalidRequest, NotFound, RainChanelError
from rainchanel.server.auth import Principal
from rainchanel.server.envelope import ok
from rainchanel.server.schemas import LeaseRequest, PublishRequest, TaskDraft
from rainchanel.server.services import Services, current_principal, get_services
from rainchanel.server.validation import decode_module
from rainchanel.server.waiting import BATCH_LINGER_SECONDS, MAX_WAIT_SECONDS, fetch_or_wait
from rainchanel.store.clock import to_rfc3339
from rainchanel.store.queue import ClaimedTask, NewTask
from rainchanel.wasm.inspect import ModuleInfo, check_call

log = structlog.get_logger("rainchanel.tasks")
router = APIRouter()

MAX_PUBLISH_BATCH = 1000
MAX_CLAIM_BATCH = 100
MODULE_REFERENCE_PREFIX = "sha256:"


@router.post("/tasks")
async def publish(
    body: PublishRequest,
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    if (body.task is None) == (body.tasks is None):
        raise InvalidRequest('send either "task" (one task) or "tasks" (a list), not both or neither')

    modules = ModuleResolver(services)
    if body.task is not None:
        new_task = await _prepare(body.task, principal, services, modules)
        task_ids = await services.queue.publish([new_task])
        _record_published(services, task_ids, principal)
        return ok({"task_id": task_ids[0]})

    drafts = body.tasks or []
    if not 1 <= len(drafts) <= MAX_PUBLISH_BATCH:
        raise InvalidRequest(f"tasks must hold 1 to {MAX_PUBLISH_BATCH} tasks, got {len(drafts)}")
    new_tasks = []
    for index, draft in enumerate(drafts):
        try:
            new_tasks.append(await _prepare(draft, principal, services, modules))
        except RainChanelError as exc:
            # All or nothing: name the first bad task and store none.
            exc.message = f"tasks[{index}]: {exc.message}"
            raise
    task_ids = await services.queue.publish(new_tasks)
    _record_published(services, task_ids, principal)
    return ok({"task_ids": task_ids})


class ModuleResolver:
    """Resolves the modules of one publish request, each distinct one once."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._resolved: dict[tuple[str | None, str | None], tuple[bytes, str, ModuleInfo]] = {}

    async def resolve(self, draft: TaskDraft) -> tuple[bytes, str, ModuleInfo]:
        """Return the draft's module bytes, SHA-256 and description."""
        key = (draft.wasm_module, draft.module)
        if key not in self._resolved:
            wasm, known_sha256 = await _module_bytes(draft, self.services)
            sha256, info = await self.services.validator.validate(wasm, known_sha256)
            self._resolved[key] = (wasm, sha256, info)
        return self._resolved[key]


async def _prepare(draft: TaskDraft, principal: Principal, services: Services, modules: ModuleResolver) -> NewTask:
    """Validate one draft against the module and the server's limits."""
    task_settings = services.settings.task
    wasm, sha256, info = await modules.resolve(draft)
    args = check_call(info, draft.func, draft.args)

    timeout_seconds = _within(
        "timeout_seconds",
        draft.timeout_seconds,
        task_settings.timeout_seconds,
        task_settings.min_timeout_seconds,
        task_settings.max_timeout_seconds,
    )
    max_retries = _within("max_retries", draft.max_retries, task_settings.max_retries, 0, task_settings.max_retries_limit)
    return NewTask(
        owner_id=principal.user_id,
        module_sha256=sha256,
        wasm=wasm,
        func=draft.func,
        args=args,
        max_attempts=max_retries + 1,
        timeout_seconds=timeout_seconds,
        stdin=draft.stdin,
        env=draft.env,
        priority=draft.priority,
        delay_seconds=draft.delay_seconds,
    )


async def _module_bytes(draft: TaskDraft, services: Services) -> tuple[bytes, str | None]:
    """Return the module's bytes, and its SHA-256 when the draft named it by hash."""
    if (draft.wasm_module is None) == (draft.module is None):
        raise InvalidRequest('give the module either inline as "wasm_module" (base64) or as "module": "sha256:<hex>"')
    if draft.wasm_module is not None:
        return decode_module(draft.wasm_module, services.settings.limits.max_module_bytes), None

    reference = draft.module or ""
    sha256 = reference.removeprefix(MODULE_REFERENCE_PREFIX).lower()
    if not reference.startswith(MODULE_REFERENCE_PREFIX) or len(sha256) != 64:
        raise InvalidRequest(f'module reference {reference!r} must look like "sha256:<64 hex digits>"')
    wasm = await services.modules.load(sha256)
    if wasm is None:
        raise NotFound(f"module {reference} not found; upload it with POST /modules first")
    return wasm, sha256


def _within(name: str, value: int | None, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not low <= value <= high:
        raise InvalidRequest(f"{name}={value} is outside the server's limits [{low}, {high}]")
    return value


def _record_published(services: Services, task_ids: list[int], principal: Principal) -> None:
    services.task_signal.notify(len(task_ids))
    services.metrics.published.inc(len(task_ids))
    for task_id in task_ids:
        log.info("task_published", task_id=task_id, owner=principal.user_id)


@router.get("/tasks")
async def claim(
    request: Request,
    max: int | None = Query(default=None, ge=1, le=MAX_CLAIM_BATCH, description="claim up to this many tasks"),
    inline_module: bool = Query(default=True, description="include the module bytes as base64"),
    wait: float = Query(default=0, ge=0, le=MAX_WAIT_SECONDS, description="seconds to wait for a task"),
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    claimed = await fetch_or_wait(
        lambda: services.queue.claim(principal.user_id, max or 1),
        services.task_signal,
        wait,
        request.is_disconnected,
        linger_seconds=BATCH_LINGER_SECONDS if max else 0,
        # The server's watch_database task polls the database once for all waiting claims.
        poll_database=False,
    )
    if claimed and wait and await request.is_disconnected():
        # The long poll's client left while its claim ran. Release the tasks
        # so they are not leased to a closed connection until they expire.
        for task in claimed:
            await services.queue.release(task.id, principal.user_id, task.lease_token)
        services.metrics.released.inc(len(claimed))
        services.task_signal.notify(len(claimed))
        log.info("claim_abandoned", worker=principal.user_id, task_ids=[task.id for task in claimed])
        return ok({"tasks": []})
    for task in claimed:
        _record_claimed(services, task, principal)

    if max is None:
        if not claimed:
            raise NotFound("no task available; try again later")
        return ok({"task": _claim_view(claimed[0], inline_module)})
    if not claimed:
        raise NotFound("no task available; try again later")
    return ok({"tasks": [_claim_view(task, inline_module) for task in claimed]})


def _record_claimed(services: Services, task: ClaimedTask, principal: Principal) -> None:
    services.metrics.claimed.inc()
    services.metrics.queue_wait.observe(max(0, task.claimed_at - task.created_at) / 1_000_000)
    log.info("task_claimed", task_id=task.id, owner=task.owner_id, worker=principal.user_id, attempt=task.attempt)


def _claim_view(task: ClaimedTask, inline_module: bool) -> dict:
    view = {
        "id": task.id,
        "module_sha256": task.module_sha256,
        "func": task.func,
        "args": task.args,
        "created_by": task.owner_id,
        "stdin": task.stdin,
        "env": task.env,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "lease_token": task.lease_token,
        "lease_expires_at": to_rfc3339(task.lease_expires_at),
        "timeout_seconds": task.timeout_seconds,
        "priority": task.priority,
    }
    if inline_module:
        view["wasm_module"] = task.wasm_base64
    return view


@router.get("/tasks/{task_id}")
async def get_task(
    task_id: int,
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    record = await services.queue.get_task(task_id, principal.user_id)
    return ok(
        {
            "task": {
                "id": record.id,
                "func": record.func,
                "args": record.args,
                "module_sha256": record.module_sha256,
                "status": record.status.value,
                "attempts": record.attempts,
                "max_attempts": record.max_attempts,
                "timeout_seconds": record.timeout_seconds,
                "priority": record.priority,
                "last_error": record.last_error,
                "created_at": to_rfc3339(record.created_at),
                "updated_at": to_rfc3339(record.updated_at),
                "finished_at": to_rfc3339(record.finished_at),
                "result": record.result if record.status == "completed" else None,
            }
        }
    )


@router.post("/tasks/{task_id}/heartbeat")
async def heartbeat(
    task_id: int,
    body: LeaseRequest,
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    expires_at = await services.queue.heartbeat(task_id, principal.user_id, body.lease_token)
    log.debug("task_heartbeat", task_id=task_id, worker=principal.user_id)
    return ok({"task_id": task_id, "lease_expires_at": to_rfc3339(expires_at)})


@router.post("/tasks/{task_id}/release")
async def release(
    task_id: int,
    body: LeaseRequest,
    principal: Principal = Depends(current_principal),
    services: Services = Depends(get_services),
):
    await services.queue.release(task_id, principal.user_id, body.lease_token)
    services.metrics.released.inc()
    # The task can be claimed again at once, so a waiting claim may take it.
    services.task_signal.notify(1)
    log.info("task_released", task_id=task_id, worker=principal.user_id)
    return ok({"task_id": task_id, "status": "pending"})

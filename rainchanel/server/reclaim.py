"""The background loop that reclaims tasks whose lease expired."""

import asyncio

import structlog
from sqlalchemy.exc import DBAPIError

from rainchanel.server.metrics import Metrics
from rainchanel.server.waiting import Signal
from rainchanel.store.queue import RECLAIM_BATCH_SIZE, TaskQueue

log = structlog.get_logger("rainchanel.reclaim")


async def reclaim_once(queue: TaskQueue, metrics: Metrics, result_signal: Signal | None = None) -> int:
    """Reclaim every expired lease now, in batches; return how many."""
    total = 0
    while True:
        retried, failed = await queue.reclaim_expired()
        if retried or failed:
            metrics.reclaimed.inc(retried + failed)
            metrics.retried.inc(retried)
            metrics.failed.inc(failed)
            log.warning("tasks_reclaimed", retried=retried, failed=failed)
        if failed and result_signal is not None:
            result_signal.notify()
        total += retried + failed
        if retried + failed < RECLAIM_BATCH_SIZE:
            return total


async def run_reclaim_loop(
    queue: TaskQueue,
    metrics: Metrics,
    interval_seconds: float,
    stopping: asyncio.Event,
    result_signal: Signal | None = None,
) -> None:
    """Reclaim expired leases every interval_seconds until stopping is set.

    Several server processes may run this loop against one database: each
    reclaim is a conditional update, so a task is reclaimed once. A reclaim
    in progress when stopping is set finishes first, so shutdown never
    abandons a transaction halfway.
    """
    while not stopping.is_set():
        try:
            await reclaim_once(queue, metrics, result_signal)
        except (DBAPIError, OSError) as exc:
            log.error("reclaim_failed", error=f"{type(exc).__name__}: {exc}")
        try:
            await asyncio.wait_for(stopping.wait(), interval_seconds)
        except TimeoutError:
            pass

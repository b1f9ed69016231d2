"""Reporting task outcomes to the server, one at a time or in batches.

Every computed outcome is sent until the server accepts it or rejects it
for good (404, 403 or 409: the lease was lost or the task is finished). It
is dropped only when the worker is stopped a second time, or a shutdown
runs out of time while the server is unreachable, and that is logged as
outcome_abandoned.
"""

import threading
import time
from dataclasses import dataclass
from typing import Any

from rainchanel.client import ApiError
from rainchanel.logs import get_logger
from rainchanel.worker.execution import TaskTiming
from rainchanel.worker.leases import Lease, LeaseKeeper
from rainchanel.worker.session import Backoff, GaveUp, ServerSession

log = get_logger("rainchanel.worker")

# Per-item statuses after which the server will never accept this outcome.
FINAL_REJECTION_STATUSES = (403, 404, 409)

# Statuses of a rejected result (not storable or too large); the task then
# fails with the server's reason instead.
RESULT_REJECTED_STATUSES = (400, 413, 422)

# Outcomes in one POST /results or /failures (the server takes up to 1000).
MAX_REPORT_BATCH = 100

# A batch is sent once this many outcomes are queued, or after the linger
# time, whichever comes first. The linger is short, so a lone task is not
# held back noticeably.
REPORT_FLUSH_COUNT = 16
REPORT_LINGER_SECONDS = 0.005

# Delays before re-sending items the server could not record (5xx per item).
RESEND_INITIAL_DELAY_SECONDS = 0.1
RESEND_MAX_DELAY_SECONDS = 5.0


@dataclass(eq=False)
class FinishedTask:
    """A task whose outcome is computed but not yet recorded by the server."""

    task: dict
    lease: Lease
    timing: TaskTiming
    started_at: float  # time.perf_counter() when the slot took the task
    completed: bool
    result: Any = None
    error: str | None = None
    retryable: bool = True
    submitted_at: float = 0.0  # time.perf_counter() when handed to the reporter

    def __post_init__(self) -> None:
        self.lease.outcome_ready = True

    @property
    def task_id(self) -> int:
        return self.task["id"]

    def reject_result(self, message: str) -> None:
        """Turn a result the server cannot store into a final failure with the server's reason."""
        self.completed = False
        self.result = None
        self.error = f"result rejected by the server: {message}"
        self.retryable = False

    def result_report(self) -> dict[str, Any]:
        report = {"task_id": self.task_id, "result": self.result, "lease_token": self.task["lease_token"]}
        if self.task.get("created_by") is not None:
            report["created_by"] = self.task["created_by"]
        return report

    def failure_report(self) -> dict[str, Any]:
        report = {"task_id": self.task_id, "error_msg": self.error or "task failed", "lease_token": self.task["lease_token"]}
        if not self.retryable:
            report["retryable"] = False
        return report


def log_task_finished(finished: FinishedTask, outcome: str) -> None:
    """Log the task_finished event of a task whose outcome is settled."""
    timing = finished.timing
    duration_ms = (time.perf_counter() - finished.started_at) * 1000
    log_method = log.info if outcome in ("completed", "released") else log.warning
    log_method(
        "task_finished", task_id=finished.task_id, func=finished.task.get("func"), attempt=finished.task.get("attempt"),
        outcome=outcome, duration_ms=round(duration_ms, 2), claim_ms=round(timing.claim_ms, 3),
        module_ms=round(timing.module_ms, 3), run_ms=round(timing.run_ms, 3), report_ms=round(timing.report_ms, 3),
        claim_batch_size=timing.claim_batch_size, report_batch_size=timing.report_batch_size,
        lease_lost=finished.lease.lost, error=finished.error,
    )


def send_single(session: ServerSession, finished: FinishedTask) -> str:
    """Send one outcome with POST /results or /failures; return "completed", "failed" or "refused".

    Raises GaveUp when the worker stops while the server is unreachable.
    """
    task_id = finished.task_id
    if finished.completed:
        try:
            session.call("complete", lambda client: client.complete(
                task_id, finished.result, finished.task["lease_token"], created_by=finished.task.get("created_by"),
            ), task_id=task_id)
            return "completed"
        except ApiError as exc:
            if exc.status not in RESULT_REJECTED_STATUSES:
                return _refused(task_id, exc.status, exc.message)
            finished.reject_result(exc.message)

    try:
        session.call("fail", lambda client: client.fail(
            task_id, finished.error or "task failed", finished.task["lease_token"], retryable=finished.retryable,
        ), task_id=task_id)
        return "failed"
    except ApiError as exc:
        return _refused(task_id, exc.status, exc.message)


def _refused(task_id: int, status: int | None, message: str) -> str:
    level = log.warning if status in FINAL_REJECTION_STATUSES else log.error
    level("outcome_refused", task_id=task_id, status=status, error=message)
    return "refused"


class OutcomeReporter:
    """A thread that sends the outcomes handed over by slots in batches.

    An accepted outcome ends its lease here, so the heartbeat thread keeps
    the lease alive while the outcome waits to be sent.
    """

    def __init__(self, session: ServerSession, leases: LeaseKeeper, flush_count: int = REPORT_FLUSH_COUNT) -> None:
        self._session = session
        self._leases = leases
        self._flush_count = max(1, min(flush_count, MAX_REPORT_BATCH))
        self._queue: list[FinishedTask] = []
        self._condition = threading.Condition()
        self._closed = False
        self._resend_backoff = Backoff(RESEND_INITIAL_DELAY_SECONDS, RESEND_MAX_DELAY_SECONDS)
        self._batches_rejected = 0
        self.thread = threading.Thread(target=self._run, name="reporter", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, finished: FinishedTask) -> None:
        """Queue an outcome for sending; returns at once."""
        finished.submitted_at = time.perf_counter()
        with self._condition:
            self._queue.append(finished)
            self._condition.notify()

    def close(self) -> None:
        """Send what is queued, then end the thread; submit() must not be called afterwards."""
        with self._condition:
            self._closed = True
            self._condition.notify()

    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if not batch:
                    return
                self._send(batch)
        except GaveUp:
            with self._condition:
                abandoned, self._queue = self._queue, []
            for finished in abandoned:
                log.error("outcome_abandoned", task_id=finished.task_id, reason="the worker was stopped while the server was unreachable")
        finally:
            self._session.close()

    def _next_batch(self) -> list[FinishedTask]:
        """Wait for outcomes, linger briefly for more, and take up to MAX_REPORT_BATCH of them."""
        with self._condition:
            while not self._queue and not self._closed:
                self._condition.wait()
            if not self._queue:
                return []
            linger_until = time.monotonic() + REPORT_LINGER_SECONDS
            while len(self._queue) < self._flush_count and not self._closed:
                remaining = linger_until - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch = self._queue[:MAX_REPORT_BATCH]
            del self._queue[:MAX_REPORT_BATCH]
            return batch

    def _send(self, batch: list[FinishedTask]) -> None:
        """Send one batch: results first, then failures (including rejected results)."""
        to_resend: list[FinishedTask] = []
        results = [finished for finished in batch if finished.completed]
        if results:
            to_resend += self._send_list(results, "complete_many", lambda client, items: client.complete_many(items))
        resent = {id(finished) for finished in to_resend}
        failures = [finished for finished in batch if not finished.completed and id(finished) not in resent]
        if failures:
            to_resend += self._send_list(failures, "fail_many", lambda client, items: client.fail_many(items))

        if not to_resend:
            self._resend_backoff.reset()
            return
        with self._condition:
            self._queue[:0] = to_resend
        delay = self._resend_backoff.next_delay()
        if self._session.give_up.wait(delay):
            raise GaveUp(f"re-sending {len(to_resend)} outcomes abandoned")

    def _send_list(self, items: list[FinishedTask], action: str, request) -> list[FinishedTask]:
        """Send items with one list request; return the items to send again later.

        Results the server cannot store are turned into failures and are
        left for the failures list of the same batch.
        """
        reports = [item.result_report() if item.completed else item.failure_report() for item in items]
        try:
            answers = self._session.call(action, lambda client: request(client, reports), count=len(items))
        except ApiError as exc:
            # The list form was rejected as a whole (a body over the server's
            # limit, or a server without list reports), so each item goes alone.
            # NOTE: batches are not split by size, so one large result sends
            # its whole batch down this slower path.
            self._batches_rejected += 1
            if self._batches_rejected == 1 or self._batches_rejected % 100 == 0:
                log.warning(
                    "report_batch_rejected", action=action, status=exc.status, error=exc.message,
                    count=len(items), rejected_batches=self._batches_rejected,
                )
            for item in items:
                self._settle(item, send_single(self._session, item))
            return []

        to_resend = []
        for item, answer in zip(items, answers):
            item.timing.report_batch_size = len(items)
            error = answer.get("error")
            if error is None:
                self._settle(item, "completed" if item.completed else "failed")
            elif item.completed and error.get("code") in RESULT_REJECTED_STATUSES:
                item.reject_result(error.get("message", ""))
            elif error.get("code") in FINAL_REJECTION_STATUSES:
                self._settle(item, _refused(item.task_id, error.get("code"), error.get("message", "")))
            else:
                log.warning("outcome_resending", task_id=item.task_id, status=error.get("code"), error=error.get("message"))
                to_resend.append(item)
        return to_resend

    def _settle(self, finished: FinishedTask, outcome: str) -> None:
        finished.timing.report_ms = (time.perf_counter() - finished.submitted_at) * 1000
        self._leases.remove(finished.task_id)
        log_task_finished(finished, outcome)

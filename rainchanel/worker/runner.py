"""The worker process: slot threads that claim, run and report tasks.

Each of the N slot threads loops over claim -> run -> report, so up to N
modules execute in parallel (wasmtime releases the GIL while wasm runs).
Stopping takes two steps: claiming stops at once, running tasks get a grace
period, and tasks still running after it are interrupted and released back
to the queue without counting the attempt.
"""

import base64
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from rainchanel.client import ApiError
from rainchanel.logs import get_logger
from rainchanel.worker.leases import LeaseKeeper
from rainchanel.worker.session import Backoff, Credentials, GaveUp, ServerSession

log = get_logger("rainchanel.worker")

# Delays between claims while the queue is empty.
IDLE_INITIAL_DELAY_SECONDS = 0.05
IDLE_MAX_DELAY_SECONDS = 1.0


@dataclass
class WorkerSettings:
    """Options of one worker process."""

    server_url: str
    username: str
    password: str
    concurrency: int = os.cpu_count() or 1
    memory_limit_mib: int = 256
    fuel: int | None = None
    grace_seconds: float = 10.0
    request_timeout_seconds: float = 30.0
    module_cache_size: int = 64
    stdout_limit_bytes: int = 256 * 1024
    stderr_limit_bytes: int = 256 * 1024


@dataclass
class TaskTiming:
    """Milliseconds a slot spent on each step of one task."""

    claim_ms: float = 0.0
    decode_ms: float = 0.0
    run_ms: float = 0.0
    report_ms: float = 0.0


def failed_outcome(error: str):
    """Return a retryable failure Outcome for an error outside the module."""
    from rainchanel.wasm.execute import Outcome

    return Outcome(completed=False, error=error, retryable=True)


def create_executor(settings: WorkerSettings):
    """Build the wasm Executor with the sandbox limits from the settings."""
    from rainchanel.wasm.execute import Executor, SandboxLimits

    limits = SandboxLimits(
        memory_limit_bytes=settings.memory_limit_mib * 1024 * 1024,
        fuel=settings.fuel,
        stdout_limit_bytes=settings.stdout_limit_bytes,
        stderr_limit_bytes=settings.stderr_limit_bytes,
    )
    return Executor(limits, module_cache_size=settings.module_cache_size)


class Worker:
    """Runs tasks from one server until stopped; see the module docstring."""

    def __init__(self, settings: WorkerSettings, executor: Any = None, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self._transport = transport
        self.executor = executor if executor is not None else create_executor(settings)
        self.credentials = Credentials(settings.username, settings.password)
        # Set on the first stop request: slots claim no more tasks.
        self.stopping = threading.Event()
        # Set when the process must end now: retries are abandoned.
        self.aborting = threading.Event()
        self._heartbeat_stopped = threading.Event()
        self.leases = LeaseKeeper(self._new_session(self._heartbeat_stopped))
        self._slots: list[threading.Thread] = []
        self._interrupted = False

    # Lifecycle

    def start(self) -> None:
        """Log in and start the heartbeat and slot threads.

        Raises ApiError when the server rejects the credentials. An
        unreachable server is retried until it responds or the worker stops.
        """
        from rainchanel.wasm.execute import WASM_THREAD_STACK_BYTES

        session = self._new_session(self.aborting)
        try:
            session.call("login", lambda client: self.credentials.refresh(client, None))
        finally:
            session.close()

        self.leases.start()
        # Threads take the stack size in force when they are created; wasm
        # code runs on the slot threads and needs the larger stack.
        previous_stack_size = threading.stack_size(WASM_THREAD_STACK_BYTES)
        try:
            for index in range(self.settings.concurrency):
                slot = threading.Thread(target=self._run_slot, name=f"slot-{index}", daemon=True)
                slot.start()
                self._slots.append(slot)
        finally:
            threading.stack_size(previous_stack_size)
        log.info(
            "worker_started", server=self.settings.server_url, username=self.settings.username,
            concurrency=self.settings.concurrency, memory_limit_mib=self.settings.memory_limit_mib,
            fuel=self.settings.fuel,
        )

    def request_stop(self) -> None:
        """Stop claiming; a second call also abandons retries and interrupts running tasks."""
        if self.stopping.is_set():
            log.warning("worker_stopping_now")
            self.aborting.set()
            self._interrupt_running()
            return
        log.info("worker_stopping", grace_seconds=self.settings.grace_seconds, running=len(self.leases.active()))
        self.stopping.set()

    def wait_and_shut_down(self) -> None:
        """Block until stop is requested, then finish, interrupt and release as described above."""
        while not self.stopping.wait(0.5):
            if not any(slot.is_alive() for slot in self._slots):
                log.error("worker_slots_ended")
                self.stopping.set()

        deadline = time.monotonic() + self.settings.grace_seconds
        self._join_slots(deadline)
        if any(slot.is_alive() for slot in self._slots):
            log.warning("grace_period_over", running=len(self.leases.active()))
            self._interrupt_running()
            # Interrupted tasks are released; that needs the server but is short.
            self._join_slots(time.monotonic() + self.settings.request_timeout_seconds)
        if any(slot.is_alive() for slot in self._slots):
            log.error("worker_slots_still_busy", slots=sum(slot.is_alive() for slot in self._slots))
            self.aborting.set()
            self._join_slots(time.monotonic() + 1)

        self._heartbeat_stopped.set()
        self.leases.stop()
        self.executor.close()
        log.info("worker_stopped")

    def run(self) -> None:
        """Run until SIGTERM or SIGINT; must be called from the main thread."""
        self.start()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.wait_and_shut_down()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        self.request_stop()

    def _interrupt_running(self) -> None:
        self._interrupted = True
        self.executor.interrupt_all()

    def _join_slots(self, deadline: float) -> None:
        for slot in self._slots:
            slot.join(timeout=max(0.0, deadline - time.monotonic()))

    def _new_session(self, give_up: threading.Event) -> ServerSession:
        return ServerSession(
            self.settings.server_url, self.credentials, give_up, self.settings.request_timeout_seconds, self._transport,
        )

    # Slots

    def _run_slot(self) -> None:
        session = self._new_session(self.aborting)
        idle = Backoff(IDLE_INITIAL_DELAY_SECONDS, IDLE_MAX_DELAY_SECONDS, jitter=0.1)
        try:
            while not self.stopping.is_set():
                claim_started = time.perf_counter()
                task = self._claim(session)
                if task is None:
                    self.stopping.wait(idle.next_delay())
                    continue
                idle.reset()
                timing = TaskTiming(claim_ms=(time.perf_counter() - claim_started) * 1000)
                self._process(session, task, timing)
        except GaveUp:
            pass
        finally:
            session.close()

    def _claim(self, session: ServerSession) -> dict | None:
        try:
            return session.call("claim", lambda client: client.claim())
        except ApiError as exc:
            log.error("claim_failed", status=exc.status, error=str(exc))
            self.stopping.wait(IDLE_MAX_DELAY_SECONDS)
            return None

    def _process(self, session: ServerSession, task: dict, timing: TaskTiming) -> None:
        """Run one claimed task and report its outcome; never raises except GaveUp."""
        started = time.perf_counter()
        lease = self.leases.add(task)
        fields = {"task_id": task["id"], "func": task.get("func"), "attempt": task.get("attempt")}
        try:
            try:
                outcome = self._execute(task, timing)
            except Exception as exc:  # a fault of the worker, not of the module
                log.exception("task_execution_error", **fields)
                outcome = failed_outcome(f"worker error while running the task: {exc}")
            report_started = time.perf_counter()
            if outcome is None or outcome.interrupted:
                result = self._release(session, task)
            else:
                result = self._report(session, task, outcome)
            timing.report_ms = (time.perf_counter() - report_started) * 1000
        except GaveUp:
            log.error("outcome_abandoned", **fields, reason="the worker was stopped while the server was unreachable")
            raise
        finally:
            self.leases.remove(task["id"])

        duration_ms = (time.perf_counter() - started) * 1000
        log_method = log.info if result in ("completed", "released") else log.warning
        log_method(
            "task_finished", **fields, outcome=result, duration_ms=round(duration_ms, 2),
            claim_ms=round(timing.claim_ms, 3), decode_ms=round(timing.decode_ms, 3),
            run_ms=round(timing.run_ms, 3), report_ms=round(timing.report_ms, 3),
            lease_lost=lease.lost,
            error=None if outcome is None else outcome.error,
        )

    def _execute(self, task: dict, timing: TaskTiming):
        """Run the task's function; return the Outcome, or None if the task cannot start."""
        from rainchanel.wasm.execute import TaskSpec

        spec = TaskSpec(
            task_id=task["id"],
            module_sha256=task["module_sha256"],
            func=task["func"],
            args=task.get("args") or [],
            timeout_seconds=task.get("timeout_seconds") or 30,
            stdin=task.get("stdin"),
            env=task.get("env"),
        )
        decode_started = time.perf_counter()
        module = None
        if not self.executor.has_module(spec.module_sha256):
            module = base64.b64decode(task["wasm_module"])
        timing.decode_ms = (time.perf_counter() - decode_started) * 1000

        if self.stopping.is_set() and self._interrupted:
            return None
        run_started = time.perf_counter()
        outcome = self.executor.run(spec, module)
        if module is None and not outcome.completed and not self.executor.has_module(spec.module_sha256):
            # Another slot evicted the module from the cache between the
            # check above and the run, so run again with the decoded bytes.
            outcome = self.executor.run(spec, base64.b64decode(task["wasm_module"]))
        timing.run_ms = (time.perf_counter() - run_started) * 1000
        return outcome

    def _report(self, session: ServerSession, task: dict, outcome) -> str:
        """Send the outcome until the server accepts or refuses it; return what happened."""
        task_id = task["id"]
        lease_token = task["lease_token"]
        if outcome.completed:
            try:
                session.call(
                    "complete",
                    lambda client: client.complete(task_id, outcome.result, lease_token, created_by=task.get("created_by")),
                    task_id=task_id,
                )
                return "completed"
            except ApiError as exc:
                if exc.status not in (400, 413):
                    return self._refused(task_id, exc)
                # The server rejects this result (too large or not storable),
                # so the task fails with the server's reason instead.
                error, retryable = f"result rejected by the server: {exc.message}", False
        else:
            error, retryable = outcome.error or "task failed", outcome.retryable

        try:
            session.call(
                "fail",
                lambda client: client.fail(task_id, error, lease_token, retryable=retryable),
                task_id=task_id,
            )
            return "failed"
        except ApiError as exc:
            return self._refused(task_id, exc)

    def _refused(self, task_id: int, exc: ApiError) -> str:
        # 409 or 404: the lease was reclaimed or the task already finished, so
        # sending the outcome again cannot succeed.
        level = log.warning if exc.status in (404, 409) else log.error
        level("outcome_refused", task_id=task_id, status=exc.status, error=exc.message)
        return "refused"

    def _release(self, session: ServerSession, task: dict) -> str:
        try:
            session.call("release", lambda client: client.release(task["id"], task["lease_token"]), task_id=task["id"])
            return "released"
        except ApiError as exc:
            log.warning("release_refused", task_id=task["id"], status=exc.status, error=exc.message)
            return "refused"

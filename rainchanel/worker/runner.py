"""The worker process: a claimer, a prefetch buffer, N slot threads and a reporter.

By default the claimer long-polls GET /tasks without the module bytes and
keeps up to `prefetch` claimed tasks in a buffer beyond the N running ones.
It claims again once the buffer is half empty, asking for as many tasks as
there is room for, so a claim brings several tasks even when slots free up
one at a time. A slot takes the oldest buffered task and downloads its
module only when the executor has not compiled it yet. It then runs the task
and hands the outcome to the reporter, which sends outcomes in batches.
wasmtime releases the GIL while wasm runs, so up to N modules execute in
parallel.

A task's lease runs from its claim, so buffered tasks are tracked by the
LeaseKeeper from the moment they arrive and are heartbeated like running
ones.

On a stop request the buffered tasks are released at once. The claimer's
long poll is not cut short, because the server would go on waiting for the
closed connection and could claim tasks for it. The poll returns within
claim_wait_seconds, and the tasks it brings are released.

With `legacy_routes`, each slot instead loops over the original single-task
routes: claim one task with its module inline, run it, report it, and poll
with backoff while the queue is empty.

Stopping takes two steps: claiming stops at once, running tasks get a grace
period, and tasks still running after it are interrupted and released back
to the queue without counting the attempt.
"""

import base64
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from rainchanel.client import MAX_FETCH_BATCH, ApiError
from rainchanel.logs import get_logger
from rainchanel.worker.execution import TaskTiming, WorkerSettings, create_executor, failed_outcome, task_spec
from rainchanel.worker.leases import Lease, LeaseKeeper
from rainchanel.worker.modules import ModuleFetcher, ModuleUnavailable
from rainchanel.worker.reporter import FinishedTask, OutcomeReporter, log_task_finished, send_single
from rainchanel.worker.session import Backoff, Credentials, GaveUp, ServerSession

log = get_logger("rainchanel.worker")

# Delays between claims while the queue is empty, when the server does not
# hold the request (legacy routes, or a server without long polling).
IDLE_INITIAL_DELAY_SECONDS = 0.05
IDLE_MAX_DELAY_SECONDS = 1.0

# Extra seconds the shutdown waits for a long poll beyond its wait time.
CLAIM_RETURN_MARGIN_SECONDS = 2.0

# Without --prefetch the buffer adapts to how long tasks run: it holds
# about PREFETCH_BUFFER_SECONDS of work per slot, between none and
# MAX_AUTO_PREFETCH_PER_SLOT tasks, so short tasks travel in large batches
# while long ones are not hoarded away from other workers. The cap only
# matters for sub-millisecond tasks, where a claim of 100 is well under
# PREFETCH_BUFFER_SECONDS of work and needs a fifth of the requests that
# claims of 20 do.
INITIAL_PREFETCH_PER_SLOT = 4
MAX_AUTO_PREFETCH_PER_SLOT = 128
PREFETCH_BUFFER_SECONDS = 0.1
# Weight of the newest task in the running average of run times.
RUN_TIME_SMOOTHING = 0.1


class Worker:
    """Runs tasks from one server until stopped; see the module docstring."""

    def __init__(self, settings: WorkerSettings, executor: Any = None, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self._transport = transport
        self.executor = executor if executor is not None else create_executor(settings)
        self.credentials = Credentials(settings.username, settings.password)
        # Set on the first stop request: no more tasks are claimed.
        self.stopping = threading.Event()
        # Set when the process must end now: retries are abandoned.
        self.aborting = threading.Event()
        self._heartbeat_stopped = threading.Event()
        self.leases = LeaseKeeper(self._new_session(self._heartbeat_stopped))
        self.modules = ModuleFetcher()
        self.reporter: OutcomeReporter | None = None
        self._claimer: threading.Thread | None = None
        self._slots: list[threading.Thread] = []
        self._interrupted = False

        self.adaptive_prefetch = settings.prefetch is None
        self.prefetch = settings.prefetch if settings.prefetch is not None else INITIAL_PREFETCH_PER_SLOT * settings.concurrency
        if self.prefetch < 0:
            raise ValueError(f"invalid prefetch {self.prefetch}: use 0 or more tasks")
        self._average_run_seconds: float | None = None
        # Claimed tasks waiting for a slot, oldest first.
        self._buffer: deque[tuple[dict, Lease, TaskTiming]] = deque()
        self._running = 0  # tasks taken from the buffer by a slot and not finished
        self._dispatch_closed = False
        # One lock guards the buffer, _running and _dispatch_closed. Slots
        # wait for a task, the claimer waits for room in the buffer.
        self._dispatch_lock = threading.Lock()
        self._task_available = threading.Condition(self._dispatch_lock)
        self._room_available = threading.Condition(self._dispatch_lock)

    # Lifecycle

    def start(self) -> None:
        """Log in and start the heartbeat, claimer, reporter and slot threads.

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
        legacy = self.settings.legacy_routes
        if not legacy:
            self.reporter = OutcomeReporter(self._new_session(self.aborting), self.leases, self.settings.concurrency)
            self.reporter.start()
        # Threads take the stack size in force when they are created; wasm
        # code runs on the slot threads and needs the larger stack.
        previous_stack_size = threading.stack_size(WASM_THREAD_STACK_BYTES)
        try:
            for index in range(self.settings.concurrency):
                target = self._run_legacy_slot if legacy else self._run_slot
                slot = threading.Thread(target=target, name=f"slot-{index}", daemon=True)
                slot.start()
                self._slots.append(slot)
        finally:
            threading.stack_size(previous_stack_size)
        if not legacy:
            self._claimer = threading.Thread(target=self._run_claimer, name="claimer", daemon=True)
            self._claimer.start()
        log.info(
            "worker_started", server=self.settings.server_url, username=self.settings.username,
            concurrency=self.settings.concurrency, memory_limit_mib=self.settings.memory_limit_mib,
            fuel=self.settings.fuel, legacy_routes=legacy, prefetch=None if legacy else self.prefetch,
            claim_wait_seconds=None if legacy else self.settings.claim_wait_seconds,
        )

    def request_stop(self) -> None:
        """Stop claiming; a second call also abandons retries and interrupts running tasks."""
        if self.stopping.is_set():
            log.warning("worker_stopping_now")
            self.aborting.set()
            self._interrupt_running()
            return
        with self._dispatch_lock:
            running, buffered = self._running, len(self._buffer)
        log.info("worker_stopping", grace_seconds=self.settings.grace_seconds, running=running, buffered=buffered)
        self.stopping.set()
        with self._dispatch_lock:
            self._room_available.notify_all()

    def wait_and_shut_down(self) -> None:
        """Block until stop is requested, then finish, interrupt and release as described above."""
        while not self.stopping.wait(0.5):
            if not all(thread.is_alive() for thread in self._threads()):
                log.error("worker_threads_ended", threads=[thread.name for thread in self._threads() if not thread.is_alive()])
                self.request_stop()

        claim_deadline = time.monotonic() + self.settings.claim_wait_seconds + CLAIM_RETURN_MARGIN_SECONDS
        self._release_buffered(self._close_dispatch())
        deadline = time.monotonic() + self.settings.grace_seconds
        self._join_slots(deadline)
        if any(slot.is_alive() for slot in self._slots):
            log.warning("grace_period_over", running=self._running)
            self._interrupt_running()
            # Interrupted tasks are released; that needs the server but is short.
            self._join_slots(time.monotonic() + self.settings.request_timeout_seconds)
        if any(slot.is_alive() for slot in self._slots):
            log.error("worker_slots_still_busy", slots=sum(slot.is_alive() for slot in self._slots))
            self.aborting.set()
            self._join_slots(time.monotonic() + 1)
        self._join_claimer(claim_deadline)
        self._drain_reporter()

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

    def _threads(self) -> list[threading.Thread]:
        threads = list(self._slots)
        if self._claimer is not None and not self.stopping.is_set():
            threads.append(self._claimer)
        if self.reporter is not None:
            threads.append(self.reporter.thread)
        return threads

    def _close_dispatch(self) -> list[tuple[dict, Lease, TaskTiming]]:
        """Stop handing tasks to slots, end the idle slots, and return the tasks taken out of the buffer."""
        with self._dispatch_lock:
            self._dispatch_closed = True
            buffered = list(self._buffer)
            self._buffer.clear()
            self._task_available.notify_all()
        return buffered

    def _release_buffered(self, buffered: list[tuple[dict, Lease, TaskTiming]]) -> None:
        """Release claimed tasks that never reached a slot, so other workers can run them now."""
        if not buffered:
            return
        session = self._new_session(self.aborting)
        released = 0
        try:
            for task, _lease, _timing in buffered:
                self._release_unstarted(session, task)
                released += 1
        except GaveUp:
            log.error(
                "release_abandoned", task_ids=[task["id"] for task, _lease, _timing in buffered[released:]],
                reason="the worker was stopped while the server was unreachable; the tasks wait for lease expiry",
            )
        finally:
            session.close()

    def _join_claimer(self, deadline: float) -> None:
        """Wait for a long poll in flight to return, so tasks it claims are released, not stranded.

        This server notices a closed long poll between its database polls
        and releases what it claimed for it, but a server without that check
        would keep such tasks leased until the lease expires, which counts as
        a failed attempt. So the claim is not abandoned unless the worker is
        stopped a second time or the deadline passes.
        """
        if self._claimer is None:
            return
        while self._claimer.is_alive() and not self.aborting.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("claim_abandoned", reason="the long poll did not return in time; tasks it claims wait for lease expiry")
                return
            self._claimer.join(timeout=min(remaining, 0.1))

    def _drain_reporter(self) -> None:
        if self.reporter is None:
            return
        self.reporter.close()
        self.reporter.thread.join(timeout=self.settings.request_timeout_seconds)
        if self.reporter.thread.is_alive():
            log.error("reporter_still_busy")
            self.aborting.set()
            self.reporter.thread.join(timeout=1)

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

    # Claimer

    def _run_claimer(self) -> None:
        session = self._new_session(self.aborting)
        idle = Backoff(IDLE_INITIAL_DELAY_SECONDS, IDLE_MAX_DELAY_SECONDS, jitter=0.1)
        wait_seconds = self.settings.claim_wait_seconds
        try:
            while True:
                room = self._wait_for_room()
                if room == 0:
                    return
                claim_started = time.perf_counter()
                tasks = self._claim_batch(session, min(room, MAX_FETCH_BATCH))
                claim_seconds = time.perf_counter() - claim_started
                if not tasks:
                    # An empty answer well before the wait is over means the
                    # server did not hold the request, so back off as when polling.
                    if claim_seconds < wait_seconds / 2:
                        self.stopping.wait(idle.next_delay())
                    continue
                idle.reset()
                self._dispatch(session, tasks, claim_seconds * 1000)
        except GaveUp:
            pass
        finally:
            session.close()

    def _wait_for_room(self) -> int:
        """Block until the buffer is at most half full and a task fits; return how many fit, or 0 once stopping.

        With prefetch 0 this waits for a free slot.
        """
        capacity = self.settings.concurrency + self.prefetch
        refill_level = self.prefetch // 2
        with self._dispatch_lock:
            while not self.stopping.is_set():
                room = capacity - self._running - len(self._buffer)
                if room > 0 and len(self._buffer) <= refill_level:
                    return room
                self._room_available.wait()
            return 0

    def _claim_batch(self, session: ServerSession, max_tasks: int) -> list[dict]:
        wait_seconds = self.settings.claim_wait_seconds
        try:
            return session.call(
                "claim", lambda client: client.claim(max=max_tasks, wait=wait_seconds, inline_module=False),
            )
        except ApiError as exc:
            log.error("claim_failed", status=exc.status, error=str(exc))
            self.stopping.wait(IDLE_MAX_DELAY_SECONDS)
            return []

    def _dispatch(self, session: ServerSession, tasks: list[dict], claim_ms: float) -> None:
        """Start the leases of claimed tasks and queue them for the slots, or release them when stopping."""
        leases = [self.leases.add(task) for task in tasks]
        with self._dispatch_lock:
            accepted = not self._dispatch_closed
            if accepted:
                for task, lease in zip(tasks, leases):
                    self._buffer.append((task, lease, TaskTiming(claim_ms=claim_ms, claim_batch_size=len(tasks))))
                self._task_available.notify(len(tasks))
        if not accepted:
            for task in tasks:
                self._release(session, task)
                self.leases.remove(task["id"])

    # Slots

    def _run_slot(self) -> None:
        session = self._new_session(self.aborting)
        try:
            while True:
                item = self._next_task()
                if item is None:
                    return
                task, lease, timing = item
                try:
                    if self.stopping.is_set():
                        self._release_unstarted(session, task)
                    else:
                        self._process(session, task, lease, timing)
                finally:
                    with self._dispatch_lock:
                        self._running -= 1
                        self._room_available.notify()
        except GaveUp:
            pass
        finally:
            session.close()

    def _next_task(self) -> tuple[dict, Lease, TaskTiming] | None:
        """Block until a task is buffered and take it, or return None once dispatch is closed."""
        with self._dispatch_lock:
            while not self._buffer and not self._dispatch_closed:
                self._task_available.wait()
            if not self._buffer:
                return None
            self._running += 1
            item = self._buffer.popleft()
            # The buffer may have dropped to its refill level.
            self._room_available.notify()
            return item

    def _process(self, session: ServerSession, task: dict, lease: Lease, timing: TaskTiming) -> None:
        """Run one claimed task and hand its outcome to the reporter, or release it when interrupted."""
        started_at = time.perf_counter()
        outcome = self._run_task(session, task, timing)
        if outcome is None or outcome.interrupted:
            finished = FinishedTask(task, lease, timing, started_at, completed=False, error=None if outcome is None else outcome.error)
            try:
                log_task_finished(finished, self._release(session, task))
            finally:
                self.leases.remove(task["id"])
            return
        self.reporter.submit(FinishedTask(
            task, lease, timing, started_at, completed=outcome.completed, result=outcome.result,
            error=outcome.error, retryable=outcome.retryable,
        ))

    def _release_unstarted(self, session: ServerSession, task: dict) -> None:
        try:
            outcome = self._release(session, task)
        finally:
            self.leases.remove(task["id"])
        log.info("task_not_started", task_id=task["id"], outcome=outcome, reason="the worker is stopping")

    def _run_legacy_slot(self) -> None:
        session = self._new_session(self.aborting)
        idle = Backoff(IDLE_INITIAL_DELAY_SECONDS, IDLE_MAX_DELAY_SECONDS, jitter=0.1)
        try:
            while not self.stopping.is_set():
                claim_started = time.perf_counter()
                task = self._claim_one(session)
                if task is None:
                    self.stopping.wait(idle.next_delay())
                    continue
                idle.reset()
                timing = TaskTiming(claim_ms=(time.perf_counter() - claim_started) * 1000)
                self._process_legacy(session, task, timing)
        except GaveUp:
            pass
        finally:
            session.close()

    def _claim_one(self, session: ServerSession) -> dict | None:
        try:
            return session.call("claim", lambda client: client.claim())
        except ApiError as exc:
            log.error("claim_failed", status=exc.status, error=str(exc))
            self.stopping.wait(IDLE_MAX_DELAY_SECONDS)
            return None

    def _process_legacy(self, session: ServerSession, task: dict, timing: TaskTiming) -> None:
        """Run one claimed task and report its outcome with the single routes; never raises except GaveUp."""
        started_at = time.perf_counter()
        lease = self.leases.add(task)
        try:
            outcome = self._run_task(session, task, timing)
            finished = FinishedTask(
                task, lease, timing, started_at, completed=bool(outcome and outcome.completed),
                result=None if outcome is None else outcome.result, error=None if outcome is None else outcome.error,
                retryable=True if outcome is None else outcome.retryable,
            )
            report_started = time.perf_counter()
            if outcome is None or outcome.interrupted:
                result = self._release(session, task)
            else:
                result = send_single(session, finished)
            timing.report_ms = (time.perf_counter() - report_started) * 1000
        except GaveUp:
            log.error("outcome_abandoned", task_id=task["id"], reason="the worker was stopped while the server was unreachable")
            raise
        finally:
            self.leases.remove(task["id"])
        log_task_finished(finished, result)

    # Running a task

    def _run_task(self, session: ServerSession, task: dict, timing: TaskTiming):
        """Run the task's function; return the Outcome, or None if the task must not start.

        Errors of the worker itself become a retryable failure; GaveUp is raised.
        """
        try:
            return self._execute(session, task, timing)
        except GaveUp:
            raise
        except ApiError as exc:
            log.warning("module_download_failed", task_id=task["id"], module_sha256=task.get("module_sha256"), status=exc.status, error=exc.message)
            return failed_outcome(f"cannot download module {task.get('module_sha256')}: {exc.message}")
        except ModuleUnavailable as exc:
            return failed_outcome(str(exc))
        except Exception as exc:  # a fault of the worker, not of the module
            log.exception("task_execution_error", task_id=task["id"], func=task.get("func"), attempt=task.get("attempt"))
            return failed_outcome(f"worker error while running the task: {exc}")

    def _execute(self, session: ServerSession, task: dict, timing: TaskTiming):
        spec = task_spec(task)
        module_started = time.perf_counter()
        with self._module_bytes(session, task) as (module, verified):
            timing.module_ms = (time.perf_counter() - module_started) * 1000
            if self.stopping.is_set() and self._interrupted:
                return None
            run_started = time.perf_counter()
            outcome = self.executor.run(spec, module, bytes_verified=verified)
        if module is None and not outcome.completed and not self.executor.has_module(spec.module_sha256):
            # Another slot evicted the module from the cache between the
            # check and the run, so run again with the module's bytes.
            with self._module_bytes(session, task) as (module, verified):
                outcome = self.executor.run(spec, module, bytes_verified=verified)
        timing.run_ms = (time.perf_counter() - run_started) * 1000
        self._adapt_prefetch(timing.run_ms / 1000)
        return outcome

    def _adapt_prefetch(self, run_seconds: float) -> None:
        """Size the buffer to about PREFETCH_BUFFER_SECONDS of work per slot (without --prefetch)."""
        if not self.adaptive_prefetch:
            return
        average = self._average_run_seconds
        average = run_seconds if average is None else average + RUN_TIME_SMOOTHING * (run_seconds - average)
        self._average_run_seconds = average
        per_slot = min(MAX_AUTO_PREFETCH_PER_SLOT, int(PREFETCH_BUFFER_SECONDS / max(average, 1e-6)))
        # A plain assignment; the claimer reads whichever value is current.
        self.prefetch = per_slot * self.settings.concurrency

    @contextmanager
    def _module_bytes(self, session: ServerSession, task: dict) -> Iterator[tuple[bytes | None, bool]]:
        """Yield (None, False) when the module is compiled already, else (its bytes, whether they were checked).

        Downloaded bytes are checked against the SHA-256 by the ModuleFetcher;
        inline bytes are not, so the executor checks them.
        """
        sha256 = task["module_sha256"]
        if self.executor.has_module(sha256):
            yield None, False
        elif task.get("wasm_module") is not None:
            yield base64.b64decode(task["wasm_module"]), False
        else:
            with self.modules.module(session, sha256, self.executor.has_module) as module:
                yield module, module is not None

    def _release(self, session: ServerSession, task: dict) -> str:
        try:
            session.call("release", lambda client: client.release(task["id"], task["lease_token"]), task_id=task["id"])
            return "released"
        except ApiError as exc:
            log.warning("release_refused", task_id=task["id"], status=exc.status, error=exc.message)
            return "refused"

"""Worker against a fake server (httpx.MockTransport) and a fake executor."""

import base64
import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

import rainchanel

pytest.importorskip("rainchanel.wasm.execute")

from rainchanel.worker import Worker, WorkerSettings  # noqa: E402
from rainchanel.worker.session import Backoff  # noqa: E402


@dataclass
class FakeOutcome:
    completed: bool
    result: object = None
    error: str | None = None
    retryable: bool = True
    interrupted: bool = False


class FakeExecutor:
    """Runs "tasks" by looking up func in a table of Python callables."""

    def __init__(self):
        self.cached = set()
        self.received_modules = []
        self.interrupted = threading.Event()
        self.closed = False

    def has_module(self, sha256):
        return sha256 in self.cached

    def run(self, spec, module, bytes_verified=False):
        self.received_modules.append(module)
        self.cached.add(spec.module_sha256)
        if spec.func == "add":
            return FakeOutcome(True, sum(spec.args))
        if spec.func == "trap":
            return FakeOutcome(False, error="wasm trap: integer divide by zero", retryable=False)
        if spec.func == "sleep":
            if self.interrupted.wait(spec.args[0]):
                return FakeOutcome(False, error="interrupted", interrupted=True)
            return FakeOutcome(True, "slept")
        raise AssertionError(f"unexpected func {spec.func}")

    def interrupt_all(self):
        self.interrupted.set()

    def close(self):
        self.closed = True


MODULE = b"\0asm\1\0\0\0"
MODULE_SHA256 = hashlib.sha256(MODULE).hexdigest()


def lease_expiry(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + seconds)) + "Z"


class FakeServer:
    """Keeps tasks and reported outcomes, with the single and the batch routes; can fail requests on demand."""

    def __init__(self, tasks, lease_seconds=30.0, long_polling=True):
        self.pending = list(tasks)
        self.results = {}
        self.failures = {}
        self.releases = []
        self.heartbeats = []
        self.logins = 0
        self.claims = []  # query parameters of each GET /tasks
        self.report_requests = []  # (path, number of items or None for a single body)
        self.downloads = []
        self.modules = {MODULE_SHA256: MODULE}
        self.corrupt_downloads = 0
        self.download_delay_seconds = 0.0
        self.long_polling = long_polling
        self.lock = threading.Condition()
        self.lease_seconds = lease_seconds
        self.fail_next = {}  # path -> list of statuses to return before succeeding
        self.fail_items = {}  # task_id -> list of per-item statuses for batch reports
        self.valid_token = "token-1"
        self.user_agents = set()

    def add_task(self, task):
        with self.lock:
            self.pending.append(task)
            self.lock.notify_all()

    def handle(self, request):
        path = request.url.path
        with self.lock:
            self.user_agents.add(request.headers.get("user-agent"))
            statuses = self.fail_next.get(path)
            if statuses:
                status = statuses.pop(0)
                if status == "connect":
                    raise httpx.ConnectError("connection refused", request=request)
                return httpx.Response(status, json={"error": {"code": status, "message": f"injected {status}"}})
            if path == "/login":
                self.logins += 1
                return httpx.Response(200, json={"data": {"token": self.valid_token, "user_id": 1, "username": "w", "expires_at": None}})
            if request.headers.get("authorization") != f"Bearer {self.valid_token}":
                return httpx.Response(401, json={"error": {"code": 401, "message": "token expired"}})
            if path == "/tasks" and request.method == "GET":
                return self._claim(dict(request.url.params))
            if path.startswith("/modules/"):
                return self._download(path.removeprefix("/modules/"))
            body = json.loads(request.content) if request.content else None
            if path in ("/results", "/failures"):
                return self._report(path, body)
            if path.endswith("/release"):
                self.releases.append(int(path.split("/")[2]))
            elif path.endswith("/heartbeat"):
                self.heartbeats.append(int(path.split("/")[2]))
                return httpx.Response(200, json={"data": {"lease_expires_at": lease_expiry(self.lease_seconds)}})
            return httpx.Response(200, json={"data": {"message": "ok"}})

    def _claim(self, params):
        # Called with self.lock held; wait() releases it while holding the request.
        self.claims.append(params)
        wait = float(params.get("wait", 0)) if self.long_polling else 0
        self.lock.wait_for(lambda: self.pending, timeout=wait)
        if not self.pending:
            return httpx.Response(404, json={"error": {"code": 404, "message": "no task available"}})
        count = int(params["max"]) if "max" in params else 1
        claimed, self.pending = self.pending[:count], self.pending[count:]
        views = []
        for task in claimed:
            view = dict(task, lease_expires_at=lease_expiry(self.lease_seconds))
            if params.get("inline_module") == "false":
                view.pop("wasm_module")
            views.append(view)
        if "max" in params:
            return httpx.Response(200, json={"data": {"tasks": views}})
        return httpx.Response(200, json={"data": {"task": views[0]}})

    def _download(self, sha256):
        self.downloads.append(sha256)
        if self.download_delay_seconds:
            self.lock.wait(self.download_delay_seconds)
        module = self.modules.get(sha256)
        if module is None:
            return httpx.Response(404, json={"error": {"code": 404, "message": f"module sha256:{sha256} not found"}})
        if self.corrupt_downloads:
            self.corrupt_downloads -= 1
            module = module + b"corrupt"
        return httpx.Response(200, content=module, headers={"content-type": "application/wasm"})

    def _report(self, path, body):
        store = self.results if path == "/results" else self.failures
        if isinstance(body, dict):
            self.report_requests.append((path, None))
            store[body["task_id"]] = body
            return httpx.Response(200, json={"data": {"task_id": body["task_id"], "status": "completed", "retried": False}})
        self.report_requests.append((path, len(body)))
        answers = []
        for item in body:
            statuses = self.fail_items.get(item["task_id"])
            if statuses:
                status = statuses.pop(0)
                answers.append({"task_id": item["task_id"], "error": {"code": status, "message": f"injected {status}"}})
                continue
            store[item["task_id"]] = item
            answers.append({"task_id": item["task_id"], "status": "completed", "retried": False})
        return httpx.Response(200, json={"data": {"results": answers}})


def make_task(task_id, func="add", args=(2, 3), sha=MODULE_SHA256, timeout_seconds=30):
    return {
        "id": task_id, "wasm_module": base64.b64encode(MODULE).decode(), "module_sha256": sha, "func": func,
        "args": list(args), "created_by": 1, "stdin": None, "env": None, "attempt": 1, "max_attempts": 3,
        "lease_token": f"lease-{task_id}", "timeout_seconds": timeout_seconds,
    }


def start_worker(
    server, executor=None, concurrency=2, grace_seconds=5.0, legacy=False, claim_wait_seconds=1.0, prefetch=None,
):
    settings = WorkerSettings(
        server_url="http://rainchanel.test", username="w", password="pw", concurrency=concurrency,
        grace_seconds=grace_seconds, legacy_routes=legacy, claim_wait_seconds=claim_wait_seconds, prefetch=prefetch,
    )
    worker = Worker(settings, executor=executor or FakeExecutor(), transport=httpx.MockTransport(server.handle))
    worker.start()
    return worker


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def stop(worker):
    worker.request_stop()
    worker.wait_and_shut_down()


ROUTE_MODES = pytest.mark.parametrize("legacy", [False, True], ids=["batch-routes", "legacy-routes"])


@ROUTE_MODES
def test_worker_completes_and_fails_tasks(legacy):
    server = FakeServer([make_task(1), make_task(2, func="trap"), make_task(3, args=(10, 20))])
    worker = start_worker(server, legacy=legacy)

    assert wait_until(lambda: len(server.results) == 2 and len(server.failures) == 1)
    stop(worker)

    assert server.results[1]["result"] == 5
    assert server.results[1]["lease_token"] == "lease-1"
    assert server.results[1]["created_by"] == 1
    assert server.results[3]["result"] == 30
    assert server.failures[2]["error_msg"] == "wasm trap: integer divide by zero"
    assert server.failures[2]["retryable"] is False
    assert worker.executor.closed
    assert server.user_agents == {f"rainchanel-worker/{rainchanel.__version__} ({socket.gethostname()}; pid {os.getpid()})"}


@ROUTE_MODES
def test_worker_skips_decoding_cached_module(legacy):
    executor = FakeExecutor()
    server = FakeServer([make_task(1), make_task(2)])
    worker = start_worker(server, executor, concurrency=1, legacy=legacy)

    assert wait_until(lambda: len(server.results) == 2)
    stop(worker)

    assert executor.received_modules == [MODULE, None]


@ROUTE_MODES
def test_worker_resends_outcome_after_transient_errors(legacy):
    server = FakeServer([make_task(1)])
    server.fail_next["/results"] = [503, "connect", 500]
    worker = start_worker(server, concurrency=1, legacy=legacy)

    assert wait_until(lambda: 1 in server.results)
    stop(worker)

    assert server.results[1]["result"] == 5


@ROUTE_MODES
def test_worker_logs_in_again_after_401(legacy):
    server = FakeServer([make_task(1)])
    worker = start_worker(server, concurrency=1, legacy=legacy)
    assert wait_until(lambda: 1 in server.results)

    server.valid_token = "token-2"
    server.add_task(make_task(2))

    assert wait_until(lambda: 2 in server.results)
    stop(worker)
    assert server.logins >= 2


def test_worker_legacy_drops_outcome_refused_with_409():
    server = FakeServer([make_task(1), make_task(2)])
    server.fail_next["/results"] = [409]
    worker = start_worker(server, concurrency=1, legacy=True)

    assert wait_until(lambda: 2 in server.results)
    stop(worker)

    assert 1 not in server.results


def test_worker_drops_batch_item_refused_with_409():
    server = FakeServer([make_task(1), make_task(2)])
    server.fail_items[1] = [409]
    worker = start_worker(server, concurrency=1)

    assert wait_until(lambda: 2 in server.results)
    stop(worker)

    assert 1 not in server.results
    sent_items = sum(count or 1 for path, count in server.report_requests if path == "/results")
    assert sent_items == 2


def test_worker_resends_batch_item_after_500():
    server = FakeServer([make_task(1)])
    server.fail_items[1] = [500, 503]
    worker = start_worker(server, concurrency=1)

    assert wait_until(lambda: 1 in server.results)
    stop(worker)

    assert server.results[1]["result"] == 5
    assert len([path for path, _ in server.report_requests if path == "/results"]) == 3


def test_worker_turns_rejected_result_into_failure():
    server = FakeServer([make_task(1)])
    server.fail_items[1] = [413]
    worker = start_worker(server, concurrency=1)

    assert wait_until(lambda: 1 in server.failures)
    stop(worker)

    assert 1 not in server.results
    assert server.failures[1]["error_msg"] == "result rejected by the server: injected 413"
    assert server.failures[1]["retryable"] is False


def test_worker_falls_back_to_single_reports():
    server = FakeServer([make_task(1), make_task(2)])
    server.fail_next["/results"] = [422]
    worker = start_worker(server, concurrency=2)

    assert wait_until(lambda: len(server.results) == 2)
    stop(worker)

    assert server.results[1]["result"] == 5
    assert server.results[2]["result"] == 5
    assert (("/results", None)) in server.report_requests


def test_worker_claims_batches_without_modules():
    server = FakeServer([make_task(task_id) for task_id in range(1, 9)])
    worker = start_worker(server, concurrency=4)

    assert wait_until(lambda: len(server.results) == 8)
    stop(worker)

    # 4 slots and the default prefetch of 4 tasks per slot.
    first_claim = server.claims[0]
    assert first_claim == {"max": "20", "wait": "1.0", "inline_module": "false"}
    assert all(1 <= int(claim["max"]) <= 20 for claim in server.claims)
    assert server.downloads == [MODULE_SHA256]


def test_worker_without_prefetch_claims_for_free_slots():
    server = FakeServer([make_task(task_id) for task_id in range(1, 9)])
    worker = start_worker(server, concurrency=4, prefetch=0)

    assert wait_until(lambda: len(server.results) == 8)
    stop(worker)

    assert server.claims[0]["max"] == "4"
    assert all(1 <= int(claim["max"]) <= 4 for claim in server.claims)


def test_worker_prefetch_claims_several_tasks_per_request():
    server = FakeServer([make_task(task_id) for task_id in range(1, 101)])
    worker = start_worker(server, concurrency=2, prefetch=8)

    assert wait_until(lambda: len(server.results) == 100)
    stop(worker)

    # The buffer is refilled once it is half empty: 4 or more tasks a claim.
    large_claims = [claim for claim in server.claims if int(claim["max"]) >= 4]
    assert all(int(claim["max"]) <= 10 for claim in server.claims)
    assert len(large_claims) == len(server.claims)
    assert len(server.claims) <= 100 / 4 + 2


def test_worker_stop_releases_buffered_tasks_at_once():
    executor = FakeExecutor()
    tasks = [make_task(1, func="sleep", args=(2.0,))] + [make_task(task_id) for task_id in range(2, 6)]
    server = FakeServer(tasks)
    worker = start_worker(server, executor, concurrency=1, grace_seconds=10, prefetch=4)
    assert wait_until(lambda: executor.received_modules)
    assert wait_until(lambda: not server.pending)

    worker.request_stop()
    shutdown = threading.Thread(target=worker.wait_and_shut_down)
    shutdown.start()

    # Released while task 1 still runs, not after it.
    assert wait_until(lambda: len(server.releases) == 4, timeout=1.5)
    assert 1 not in server.results
    shutdown.join(timeout=10)
    assert sorted(server.releases) == [2, 3, 4, 5]
    assert server.results[1]["result"] == "slept"
    assert all(task_id not in server.results for task_id in range(2, 6))


def test_worker_heartbeats_buffered_task():
    executor = FakeExecutor()
    server = FakeServer([make_task(1, func="sleep", args=(1.5,)), make_task(2)], lease_seconds=1.0)
    worker = start_worker(server, executor, concurrency=1, prefetch=1)

    assert wait_until(lambda: 2 in server.results)
    stop(worker)

    # Task 2 waited about 1.5 s in the buffer with a 1 s lease.
    assert server.heartbeats.count(2) >= 1
    assert server.claims[0]["max"] == "2"


def test_worker_reports_outcomes_in_batches():
    server = FakeServer([make_task(task_id) for task_id in range(1, 41)])
    worker = start_worker(server, concurrency=4)

    assert wait_until(lambda: len(server.results) == 40)
    stop(worker)

    result_requests = [count for path, count in server.report_requests if path == "/results"]
    assert sum(result_requests) == 40
    assert len(result_requests) < 40
    assert None not in result_requests


def test_worker_downloads_module_once_for_concurrent_tasks():
    executor = FakeExecutor()
    server = FakeServer([make_task(task_id) for task_id in range(1, 5)])
    server.download_delay_seconds = 0.3
    worker = start_worker(server, executor, concurrency=4)

    assert wait_until(lambda: len(server.results) == 4)
    stop(worker)

    assert server.downloads == [MODULE_SHA256]
    assert [module for module in executor.received_modules if module is not None] == [MODULE] * 4


def test_worker_downloads_corrupt_module_again():
    server = FakeServer([make_task(1)])
    server.corrupt_downloads = 1
    worker = start_worker(server, concurrency=1)

    assert wait_until(lambda: 1 in server.results)
    stop(worker)

    assert server.downloads == [MODULE_SHA256, MODULE_SHA256]
    assert server.results[1]["result"] == 5


def test_worker_fails_task_of_unknown_module():
    server = FakeServer([make_task(1, sha="b" * 64)])
    worker = start_worker(server, concurrency=1)

    assert wait_until(lambda: 1 in server.failures)
    stop(worker)

    assert server.failures[1]["error_msg"].startswith(f"cannot download module {'b' * 64}: module sha256:")
    assert "retryable" not in server.failures[1]


def test_worker_idle_long_poll_is_one_request_per_wait():
    server = FakeServer([])
    worker = start_worker(server, concurrency=4, claim_wait_seconds=1.0)

    time.sleep(2.5)
    stop(worker)

    assert 2 <= len(server.claims) <= 4


def test_worker_backs_off_when_server_does_not_hold_claims():
    server = FakeServer([], long_polling=False)
    worker = start_worker(server, concurrency=4, claim_wait_seconds=10.0)

    time.sleep(1.5)
    stop(worker)

    # Backoff from 50 ms doubling to 1 s: about 5 claims in 1.5 s, not hundreds.
    assert len(server.claims) <= 10


def test_worker_stop_waits_for_long_poll_only():
    server = FakeServer([])
    worker = start_worker(server, concurrency=2, claim_wait_seconds=1.0)
    assert wait_until(lambda: server.claims)
    started = time.monotonic()

    stop(worker)

    assert time.monotonic() - started < 2
    assert len(server.claims) == 1


def test_worker_picks_up_task_during_long_poll():
    server = FakeServer([])
    worker = start_worker(server, concurrency=2)
    assert wait_until(lambda: server.claims)

    server.add_task(make_task(1))

    assert wait_until(lambda: 1 in server.results, timeout=3)
    stop(worker)
    assert len(server.claims) <= 3


def test_worker_legacy_uses_single_routes():
    server = FakeServer([make_task(1), make_task(2, func="trap")])
    worker = start_worker(server, concurrency=1, legacy=True)

    assert wait_until(lambda: 1 in server.results and 2 in server.failures)
    stop(worker)

    assert all(claim == {} for claim in server.claims)
    assert server.report_requests == [("/results", None), ("/failures", None)]
    assert server.downloads == []


@ROUTE_MODES
def test_worker_heartbeats_long_task(legacy):
    server = FakeServer([make_task(1, func="sleep", args=(1.5,))], lease_seconds=1.0)
    worker = start_worker(server, concurrency=1, legacy=legacy)

    assert wait_until(lambda: 1 in server.results)
    stop(worker)

    assert server.heartbeats.count(1) >= 2


@ROUTE_MODES
def test_worker_stop_lets_running_task_finish(legacy):
    executor = FakeExecutor()
    server = FakeServer([make_task(1, func="sleep", args=(0.5,))])
    worker = start_worker(server, executor, concurrency=1, grace_seconds=5, legacy=legacy)
    assert wait_until(lambda: executor.received_modules)

    stop(worker)

    assert server.results[1]["result"] == "slept"
    assert server.releases == []


@ROUTE_MODES
def test_worker_stop_releases_task_after_grace(legacy):
    executor = FakeExecutor()
    server = FakeServer([make_task(1, func="sleep", args=(30,))])
    worker = start_worker(server, executor, concurrency=1, grace_seconds=0.2, legacy=legacy)
    assert wait_until(lambda: executor.received_modules)
    started = time.monotonic()

    stop(worker)

    assert time.monotonic() - started < 5
    assert server.releases == [1]
    assert 1 not in server.results
    assert 1 not in server.failures


def test_worker_releases_tasks_claimed_after_stop():
    server = FakeServer([])
    worker = start_worker(server, concurrency=2)
    assert wait_until(lambda: server.claims)

    worker.request_stop()
    server.add_task(make_task(1))
    worker.wait_and_shut_down()

    # The long poll in flight returns the task after the stop request, so
    # the task is released, never run.
    assert server.releases == [1]
    assert 1 not in server.results
    assert 1 not in server.failures


def test_backoff_doubles_up_to_max():
    backoff = Backoff(0.05, 1.0, jitter=0)

    delays = [backoff.next_delay() for _ in range(7)]

    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.05


def test_worker_prefetch_adapts_to_run_time():
    settings = WorkerSettings(server_url="http://127.0.0.1:9", username="w", password="secret-password", concurrency=2)
    worker = Worker(settings, executor=FakeExecutor())

    for _ in range(50):
        worker._adapt_prefetch(0.0005)
    short_tasks = worker.prefetch
    for _ in range(100):
        worker._adapt_prefetch(0.005)
    millisecond_tasks = worker.prefetch
    for _ in range(100):
        worker._adapt_prefetch(2.0)
    long_tasks = worker.prefetch

    assert short_tasks == 256, "the cap of 128 per slot for sub-millisecond tasks"
    assert 36 <= millisecond_tasks <= 40, "about 0.1 s of work per slot: 20 tasks of 5 ms"
    assert long_tasks == 0, "no hoarding of tasks that run for seconds"


def test_worker_explicit_prefetch_stays_fixed():
    settings = WorkerSettings(
        server_url="http://127.0.0.1:9", username="w", password="secret-password", concurrency=2, prefetch=3
    )
    worker = Worker(settings, executor=FakeExecutor())

    for _ in range(50):
        worker._adapt_prefetch(0.0005)

    assert worker.prefetch == 3

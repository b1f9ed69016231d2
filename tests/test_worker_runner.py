"""Worker against a fake server (httpx.MockTransport) and a fake executor."""

import json
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

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

    def run(self, spec, module):
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


class FakeServer:
    """Keeps tasks and reported outcomes; can fail requests on demand."""

    def __init__(self, tasks, lease_seconds=30.0):
        self.pending = list(tasks)
        self.results = {}
        self.failures = {}
        self.releases = []
        self.heartbeats = []
        self.logins = 0
        self.lock = threading.Lock()
        self.lease_seconds = lease_seconds
        self.fail_next = {}  # path -> list of statuses to return before succeeding
        self.valid_token = "token-1"

    def handle(self, request):
        path = request.url.path
        with self.lock:
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
            body = json.loads(request.content) if request.content else None
            if path == "/tasks" and request.method == "GET":
                if not self.pending:
                    return httpx.Response(404, json={"error": {"code": 404, "message": "no task available"}})
                task = self.pending.pop(0)
                expires = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + self.lease_seconds)) + "Z"
                return httpx.Response(200, json={"data": {"task": dict(task, lease_expires_at=expires)}})
            if path == "/results":
                self.results[body["task_id"]] = body
            elif path == "/failures":
                self.failures[body["task_id"]] = body
            elif path.endswith("/release"):
                self.releases.append(int(path.split("/")[2]))
            elif path.endswith("/heartbeat"):
                self.heartbeats.append(int(path.split("/")[2]))
                expires = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + self.lease_seconds)) + "Z"
                return httpx.Response(200, json={"data": {"lease_expires_at": expires}})
            return httpx.Response(200, json={"data": {"message": "ok"}})


def make_task(task_id, func="add", args=(2, 3), sha="a" * 64, timeout_seconds=30):
    return {
        "id": task_id, "wasm_module": "AGFzbQEAAAA=", "module_sha256": sha, "func": func, "args": list(args),
        "created_by": 1, "stdin": None, "env": None, "attempt": 1, "max_attempts": 3,
        "lease_token": f"lease-{task_id}", "timeout_seconds": timeout_seconds,
    }


def start_worker(server, executor=None, concurrency=2, grace_seconds=5.0):
    settings = WorkerSettings(
        server_url="http://rainchanel.test", username="w", password="pw",
        concurrency=concurrency, grace_seconds=grace_seconds,
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


def test_worker_completes_and_fails_tasks():
    server = FakeServer([make_task(1), make_task(2, func="trap"), make_task(3, args=(10, 20))])
    worker = start_worker(server)

    assert wait_until(lambda: len(server.results) == 2 and len(server.failures) == 1)
    stop(worker)

    assert server.results[1]["result"] == 5
    assert server.results[1]["lease_token"] == "lease-1"
    assert server.results[1]["created_by"] == 1
    assert server.results[3]["result"] == 30
    assert server.failures[2]["error_msg"] == "wasm trap: integer divide by zero"
    assert server.failures[2]["retryable"] is False
    assert worker.executor.closed


def test_worker_skips_decoding_cached_module():
    executor = FakeExecutor()
    server = FakeServer([make_task(1), make_task(2)])
    worker = start_worker(server, executor, concurrency=1)

    assert wait_until(lambda: len(server.results) == 2)
    stop(worker)

    assert executor.received_modules == [b"\0asm\1\0\0\0", None]


def test_worker_resends_outcome_after_transient_errors():
    server = FakeServer([make_task(1)])
    server.fail_next["/results"] = [503, "connect", 500]
    worker = start_worker(server, concurrency=1)

    assert wait_until(lambda: 1 in server.results)
    stop(worker)

    assert server.results[1]["result"] == 5


def test_worker_logs_in_again_after_401():
    server = FakeServer([make_task(1)])
    worker = start_worker(server, concurrency=1)
    assert wait_until(lambda: 1 in server.results)

    server.valid_token = "token-2"
    server.pending.append(make_task(2))

    assert wait_until(lambda: 2 in server.results)
    stop(worker)
    assert server.logins >= 2


def test_worker_drops_outcome_refused_with_409():
    server = FakeServer([make_task(1), make_task(2)])
    server.fail_next["/results"] = [409]
    worker = start_worker(server, concurrency=1)

    assert wait_until(lambda: 2 in server.results)
    stop(worker)

    assert 1 not in server.results


def test_worker_heartbeats_long_task():
    server = FakeServer([make_task(1, func="sleep", args=(1.5,))], lease_seconds=1.0)
    worker = start_worker(server, concurrency=1)

    assert wait_until(lambda: 1 in server.results)
    stop(worker)

    assert server.heartbeats.count(1) >= 2


def test_worker_stop_lets_running_task_finish():
    server = FakeServer([make_task(1, func="sleep", args=(0.5,))])
    worker = start_worker(server, concurrency=1, grace_seconds=5)
    assert wait_until(lambda: not server.pending)

    stop(worker)

    assert server.results[1]["result"] == "slept"
    assert server.releases == []


def test_worker_stop_releases_task_after_grace():
    server = FakeServer([make_task(1, func="sleep", args=(30,))])
    worker = start_worker(server, concurrency=1, grace_seconds=0.2)
    assert wait_until(lambda: not server.pending)
    started = time.monotonic()

    stop(worker)

    assert time.monotonic() - started < 5
    assert server.releases == [1]
    assert 1 not in server.results
    assert 1 not in server.failures


def test_backoff_doubles_up_to_max():
    backoff = Backoff(0.05, 1.0, jitter=0)

    delays = [backoff.next_delay() for _ in range(7)]

    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.05

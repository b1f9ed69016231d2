"""Fixtures that start the real server and workers as subprocesses.

Each server gets a temporary directory with its own SQLite file, a free port
on 127.0.0.1 and a random JWT secret. Every subprocess is killed at teardown.
"""

import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime

from rainchanel.client import ApiError, RainChanelClient

SERVER_START_TIMEOUT_SECONDS = 30.0
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# count(n) loops n times and returns n: about a second per 10**9 iterations on
# a 2-core x86-64 machine, a way to make a task run for a while.
COUNT_MODULE = wasmtime.wat2wasm(
    """(module
      (func (export "count") (param $n i64) (result i64) (local $i i64)
        (loop $again
          (local.set $i (i64.add (local.get $i) (i64.const 1)))
          (br_if $again (i64.lt_u (local.get $i) (local.get $n))))
        (local.get $i)))"""
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rainchanel_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rainchanel.cli", *args]


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


class Server:
    """A `rainchanel serve` subprocess and its directory."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "server.log"
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                rainchanel_command("serve", "--host", "127.0.0.1", "--port", str(self.port)),
                cwd=directory, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            )

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        with RainChanelClient(self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
                try:
                    client.ping()
                    return
                except ApiError:
                    time.sleep(0.1)
        raise RuntimeError(f"server did not answer within {SERVER_START_TIMEOUT_SECONDS} s:\n{self.log_path.read_text()}")

    def client(self, token: str | None = None) -> RainChanelClient:
        return RainChanelClient(self.url, token=token)


class WorkerProcess:
    """A `rainchanel worker` subprocess that logs JSON to a file."""

    def __init__(self, server: Server, username: str, password: str, log_path: Path, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.log_path = log_path
        worker_env = dict(
            env, RAINCHANEL_SERVER=server.url, RAINCHANEL_USERNAME=username, RAINCHANEL_PASSWORD=password,
            LOG_FORMAT="json", LOG_LEVEL="info",
        )
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                rainchanel_command("worker", *args), env=worker_env, stdout=log_file, stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        stop_process(process)


@pytest.fixture
def server_factory(tmp_path, processes):
    """Start a server; keyword arguments become extra environment variables."""
    counter = itertools.count()

    def start(**env_overrides: str) -> Server:
        directory = tmp_path / f"server-{next(counter)}"
        directory.mkdir()
        env = dict(os.environ, JWT_SECRET=secrets.token_urlsafe(48), LOG_LEVEL="warning", **env_overrides)
        server = Server(directory, env)
        processes.append(server.process)
        server.wait_until_ready()
        return server

    return start


@pytest.fixture
def server(server_factory) -> Server:
    return server_factory()


def register_user(server: Server, prefix: str) -> tuple[str, str]:
    username = f"{prefix}-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    with server.client() as client:
        client.register(username, password)
    return username, password


@pytest.fixture
def worker_factory(tmp_path, processes):
    """Start a worker with its own account on a server; extra arguments go to `rainchanel worker`."""
    counter = itertools.count()

    def start(server: Server, *args: str, **env_overrides: str) -> WorkerProcess:
        username, password = register_user(server, "worker")
        log_path = tmp_path / f"worker-{next(counter)}.log"
        worker = WorkerProcess(server, username, password, log_path, args, dict(os.environ, **env_overrides))
        processes.append(worker.process)
        return worker

    return start


@pytest.fixture
def user_client(server):
    """A client logged in as a fresh user of the default server."""
    username, password = register_user(server, "user")
    with server.client() as client:
        client.login(username, password)
        yield client


def wait_for_task(client: RainChanelClient, task_id: int, timeout: float = 30.0) -> dict:
    """Poll a task until it is completed or failed; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get_task(task_id)
        if task["status"] in ("completed", "failed"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish within {timeout} s: {task}")


def wait_for_status(client: RainChanelClient, task_id: int, status: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get_task(task_id)
        if task["status"] == status:
            return task
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} did not reach {status} within {timeout} s: {task}")


def collect_results(client: RainChanelClient, count: int, timeout: float = 60.0) -> list[dict]:
    """Read `count` delivered results; fail the test after `timeout` seconds."""
    results = []
    deadline = time.monotonic() + timeout
    while len(results) < count and time.monotonic() < deadline:
        result = client.next_result()
        if result is None:
            time.sleep(0.05)
        else:
            results.append(result)
    assert len(results) == count, f"got {len(results)} of {count} results within {timeout} s"
    return results

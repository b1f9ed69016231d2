"""Two real server processes on one MariaDB database, both reclaiming leases.

Workers report around the moment their lease expires, so reports race the
reclaim loops of both servers. Whatever the interleaving, a task accepts
one outcome and its result is delivered once.
"""

import base64
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.server.api import EXAMPLES
from tests.server.conftest import TEST_SECRET

TASKS = 24
WORKER_THREADS = 8
DEADLINE_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(database_url: str, workdir: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "JWT_SECRET": TEST_SECRET,
        "STALE_CHECK_INTERVAL_SECONDS": "0.2",
        "TASK_RETRY_BACKOFF_SECONDS": "0.05",
        "TASK_RETRY_BACKOFF_MAX_SECONDS": "0.2",
        "LOG_LEVEL": "warning",
    }
    log_file = open(workdir / f"server-{port}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "rainchanel.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


def wait_until_up(base_url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server at {base_url} exited with {process.returncode}"
        try:
            if httpx.get(base_url + "/ping", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"server at {base_url} did not answer within 30 s")


@pytest.fixture
def two_servers(mariadb_database, tmp_path):
    ports = [free_port(), free_port()]
    processes = []
    try:
        for port in ports:
            processes.append(start_server(mariadb_database, tmp_path, port))
            # The second server starts once the first has migrated the schema.
            wait_until_up(f"http://127.0.0.1:{port}", processes[-1])
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def login(base_url: str, username: str) -> dict:
    credentials = {"username": username, "password": "secret-password"}
    httpx.post(base_url + "/register", json=credentials, timeout=10)
    response = httpx.post(base_url + "/login", json=credentials, timeout=10)
    assert response.status_code == 200, response.text
    return {"Authorization": "Bearer " + response.json()["data"]["token"]}


def run_worker(base_url: str, headers: dict, stop: threading.Event, accepted: list, errors: list, lock) -> None:
    """Claim tasks and report each one around the moment its lease expires."""
    rng = random.Random()
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
        while not stop.is_set():
            response = client.get("/tasks")
            if response.status_code == 404:
                time.sleep(0.05)
                continue
            task = response.json()["data"]["task"]
            time.sleep(rng.uniform(0.75, 1.25))
            report = {"task_id": task["id"], "result": task["args"][0] + task["args"][1], "lease_token": task["lease_token"]}
            outcome = client.post("/results", json=report)
            with lock:
                if outcome.status_code == 200:
                    accepted.append(task["id"])
                elif outcome.status_code != 409:
                    errors.append(outcome.text)


def test_two_servers_accept_one_outcome_per_task(two_servers):
    owner_headers = login(two_servers[0], "owner")
    module = base64.b64encode((EXAMPLES / "add.wasm").read_bytes()).decode()
    task_ids = []
    for i in range(TASKS):
        task = {"wasm_module": module, "func": "add", "args": [i, 1], "timeout_seconds": 1, "max_retries": 10}
        response = httpx.post(two_servers[i % 2] + "/tasks", json={"task": task}, headers=owner_headers, timeout=10)
        task_ids.append(response.json()["data"]["task_id"])

    stop = threading.Event()
    accepted: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    threads = []
    for index in range(WORKER_THREADS):
        base_url = two_servers[index % 2]
        headers = login(base_url, f"worker{index}")
        thread = threading.Thread(target=run_worker, args=(base_url, headers, stop, accepted, errors, lock))
        thread.start()
        threads.append(thread)

    delivered = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(delivered) < TASKS and time.monotonic() < deadline:
        for base_url in two_servers:
            response = httpx.get(base_url + "/results", headers=owner_headers, timeout=10)
            if response.status_code == 200:
                delivered.append(response.json()["data"]["result"])
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=15)

    assert errors == [], "reports are answered 200 or 409 only"
    delivered_ids = Counter(result["task_id"] for result in delivered)
    completed = [result for result in delivered if result["status"] == "completed"]
    assert sorted(delivered_ids) == sorted(task_ids), "every task is delivered"
    assert max(delivered_ids.values()) == 1, "no result is delivered twice"
    assert max(Counter(accepted).values()) == 1, "no task accepts two outcomes"
    assert sorted(accepted) == sorted(result["task_id"] for result in completed)
    for result in completed:
        index = task_ids.index(result["task_id"])
        assert result["result"] == index + 1

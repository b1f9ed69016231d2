"""End-to-end: long polling, batches and modules by reference with the real server and worker."""

import json
import time

import httpx
from conftest import EXAMPLES, collect_results, register_user, wait_for_task

from rainchanel.client import TaskRequest

MATH = (EXAMPLES / "math.wasm").read_bytes()


def worker_events(worker_log: str, name: str) -> list[dict]:
    events = [json.loads(line) for line in worker_log.splitlines() if line.startswith("{")]
    return [event for event in events if event.get("event") == name]


def wait_for_event(worker, name: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = worker_events(worker.log(), name)
        if events:
            return events[0]
        time.sleep(0.05)
    raise AssertionError(f"worker logged no {name} within {timeout} s:\n{worker.log()}")


def test_e2e_publish_many_batch_completes(server, worker_factory, user_client):
    worker = worker_factory(server, "--concurrency", "4")
    module_ref = user_client.upload_module(MATH)

    task_ids = user_client.publish_many([TaskRequest("add", [i, 1000], module_ref=module_ref) for i in range(100)])
    results = collect_results(user_client, 100, timeout=60)

    expected = {task_id: i + 1000 for i, task_id in enumerate(task_ids)}
    assert len(set(task_ids)) == 100
    assert sorted(result["task_id"] for result in results) == sorted(task_ids)
    for result in results:
        assert result["status"] == "completed"
        assert result["result"] == expected[result["task_id"]]
    downloads = worker_events(worker.log(), "module_downloaded")
    assert len(downloads) == 1


def test_e2e_idle_worker_picks_up_task_quickly(server, worker_factory, user_client):
    worker = worker_factory(server, "--concurrency", "2")
    wait_for_event(worker, "worker_started")
    # The worker's first claim is now waiting on the server.
    time.sleep(1.0)

    published_at = time.monotonic()
    task_id = user_client.publish(MATH, "add", [20, 22])
    task = wait_for_task(user_client, task_id, timeout=10)

    assert task["result"] == 42
    assert time.monotonic() - published_at < 5


def test_e2e_legacy_routes_worker_completes(server, worker_factory, user_client):
    worker = worker_factory(server, "--concurrency", "2", "--legacy-routes")

    add_id = user_client.publish(MATH, "add", [2, 3])
    div_id = user_client.publish(MATH, "div", [1, 0], max_retries=0)

    assert wait_for_task(user_client, add_id)["result"] == 5
    div = wait_for_task(user_client, div_id)
    assert div["status"] == "failed"
    assert "divide by zero" in div["last_error"]
    assert worker_events(worker.log(), "worker_started")[0]["legacy_routes"] is True
    assert worker_events(worker.log(), "module_downloaded") == []


def test_e2e_original_routes_plain_http(server, user_client):
    username, password = register_user(server, "old-worker")
    task_id = user_client.publish(MATH, "add", [7, 8])

    with httpx.Client(base_url=server.url, timeout=10) as http:
        token = http.post("/login", json={"username": username, "password": password}).json()["data"]["token"]
        headers = {"Authorization": f"Bearer {token}"}
        claimed = http.get("/tasks", headers=headers)
        task = claimed.json()["data"]["task"]
        # An older worker sends no lease token, so the server checks that it holds the lease.
        reported = http.post("/results", headers=headers, json={"task_id": task["id"], "result": 15})
        empty = http.get("/tasks", headers=headers)

    assert claimed.status_code == 200
    assert task["id"] == task_id
    assert task["wasm_module"]
    assert reported.status_code == 200, reported.text
    assert reported.json()["data"]["status"] == "completed"
    assert empty.status_code == 404
    assert wait_for_task(user_client, task_id)["result"] == 15


def test_e2e_sigterm_during_long_poll_exits(server, worker_factory):
    worker = worker_factory(server, "--concurrency", "2", "--claim-wait-seconds", "5")
    wait_for_event(worker, "worker_started")
    time.sleep(1.0)

    started = time.monotonic()
    exit_code = worker.terminate(timeout=15)

    assert exit_code == 0
    # The claim in flight may take the rest of its 5 s wait to return.
    assert time.monotonic() - started < 8
    assert "worker_stopped" in worker.log()


def test_e2e_stopped_worker_strands_no_task(server, worker_factory, user_client):
    first = worker_factory(server, "--concurrency", "1")
    wait_for_event(first, "worker_started")
    time.sleep(1.0)
    assert first.terminate(timeout=10) == 0

    task_id = user_client.publish(MATH, "add", [1, 2])
    worker_factory(server, "--concurrency", "1")

    assert wait_for_task(user_client, task_id, timeout=10)["result"] == 3

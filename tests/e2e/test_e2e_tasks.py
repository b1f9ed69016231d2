"""End-to-end: real server, real workers and the example modules."""

import json
import time

from conftest import COUNT_MODULE, EXAMPLES, collect_results, register_user, wait_for_status, wait_for_task

MATH = (EXAMPLES / "math.wasm").read_bytes()


def finished_tasks(worker_log: str) -> list[dict]:
    events = [json.loads(line) for line in worker_log.splitlines() if line.startswith("{")]
    return [event for event in events if event.get("event") == "task_finished"]


def test_e2e_numeric_results(server, worker_factory, user_client):
    worker_factory(server, "--concurrency", "2")

    add_id = user_client.publish(MATH, "add", [2, 3])
    fib_id = user_client.publish(MATH, "fib", [90])
    mul_id = user_client.publish(MATH, "mul64", [2**40 + 1, 2**20 + 3])

    assert wait_for_task(user_client, add_id)["result"] == 5
    assert wait_for_task(user_client, fib_id)["result"] == 2880067194370816120
    assert wait_for_task(user_client, mul_id)["result"] == (2**40 + 1) * (2**20 + 3)


def test_e2e_floats_and_multi_value(server, worker_factory, user_client):
    worker_factory(server, "--concurrency", "2")
    floats = (EXAMPLES / "f32_special.wasm").read_bytes()
    multi = (EXAMPLES / "multi_value.wasm").read_bytes()

    identity_id = user_client.publish(floats, "identity_f64", [1.5])
    triple_id = user_client.publish(multi, "triple", [3])
    pair_id = user_client.publish(multi, "pair")

    assert wait_for_task(user_client, identity_id)["result"] == 1.5
    assert wait_for_task(user_client, triple_id)["result"] == [3, 3 * 2**32, 3.5]
    pair = wait_for_task(user_client, pair_id)["result"]
    assert pair[0] == -(2**63)
    assert abs(pair[1] - 0.1) < 1e-7


def test_e2e_trap_is_failed_result(server, worker_factory, user_client):
    worker_factory(server)

    task_id = user_client.publish(MATH, "div", [1, 0], max_retries=0)
    result = collect_results(user_client, 1)[0]

    assert result["task_id"] == task_id
    assert result["status"] == "failed"
    assert "divide by zero" in result["error"]
    assert user_client.next_result() is None


def test_e2e_endless_loops_time_out(server, worker_factory, user_client):
    worker_factory(server, "--concurrency", "2")
    spin_id = user_client.publish((EXAMPLES / "loop_forever.wasm").read_bytes(), "spin", timeout_seconds=2, max_retries=0)
    start_id = user_client.publish((EXAMPLES / "start_loops.wasm").read_bytes(), "noop", timeout_seconds=2, max_retries=0)
    wait_for_status(user_client, spin_id, "processing")

    # Both slots are busy with endless loops until their timeouts; the add
    # task must still complete once one of them is stopped.
    add_id = user_client.publish(MATH, "add", [1, 1])
    spin = wait_for_task(user_client, spin_id, timeout=20)
    start = wait_for_task(user_client, start_id, timeout=20)

    assert spin["status"] == "failed"
    assert "timed out" in spin["last_error"] or "timeout" in spin["last_error"]
    assert start["status"] == "failed"
    assert "timed out" in start["last_error"] or "timeout" in start["last_error"]
    assert wait_for_task(user_client, add_id)["result"] == 2


def test_e2e_memory_growth_capped(server, worker_factory, user_client):
    worker_factory(server, "--memory-limit-mib", "16")
    module = (EXAMPLES / "grow_memory.wasm").read_bytes()

    small_id = user_client.publish(module, "grow", [10])
    large_id = user_client.publish(module, "grow", [1000])

    assert wait_for_task(user_client, small_id)["result"] == 1
    # 1000 pages are 62.5 MiB, over the 16 MiB cap, so memory.grow returns -1.
    assert wait_for_task(user_client, large_id)["result"] == -1


def test_e2e_huge_memory_fails_cleanly(server, worker_factory, user_client):
    worker = worker_factory(server)

    huge_id = user_client.publish((EXAMPLES / "huge_memory.wasm").read_bytes(), "noop", max_retries=0)
    task = wait_for_task(user_client, huge_id)
    add_id = user_client.publish(MATH, "add", [4, 5])

    assert task["status"] == "failed"
    assert "memory" in task["last_error"]
    assert wait_for_task(user_client, add_id)["result"] == 9
    assert worker.process.poll() is None


def test_e2e_wasi_stdout_and_exit_code(server, worker_factory, user_client):
    worker_factory(server)

    task_id = user_client.publish(
        (EXAMPLES / "echo.wasm").read_bytes(), "_start", ["3"], stdin="hello\n", env={"ECHO_PREFIX": ">"},
    )
    result = wait_for_task(user_client, task_id)["result"]

    assert result["stdout"] == ">HELLO\n"
    assert result["exit_code"] == 3
    assert "argv[1]=3" in result["stderr"]


def test_e2e_200_tasks_answered_once(server, worker_factory, user_client):
    worker_factory(server, "--concurrency", "4")
    worker_factory(server, "--concurrency", "4")

    expected = {}
    for i in range(200):
        task_id = user_client.publish(MATH, "add", [i, 1000])
        expected[task_id] = i + 1000
    results = collect_results(user_client, 200, timeout=120)

    assert sorted(result["task_id"] for result in results) == sorted(expected)
    for result in results:
        assert result["status"] == "completed"
        assert result["result"] == expected[result["task_id"]]
    assert user_client.next_result() is None


def test_e2e_killed_worker_task_reclaimed(server_factory, worker_factory):
    server = server_factory(STALE_CHECK_INTERVAL_SECONDS="1")
    username, password = register_user(server, "user")
    with server.client() as client:
        client.login(username, password)
        first = worker_factory(server, "--concurrency", "1")
        task_id = client.publish(COUNT_MODULE, "count", [600_000_000], timeout_seconds=4)
        wait_for_status(client, task_id, "processing")
        time.sleep(0.3)

        first.kill()
        second = worker_factory(server, "--concurrency", "1")
        task = wait_for_task(client, task_id, timeout=40)

        assert task["status"] == "completed"
        assert task["result"] == 600_000_000
        assert task["attempts"] >= 2
        completed_by_second = [
            event["task_id"] for event in finished_tasks(second.log()) if event["outcome"] == "completed"
        ]
        assert completed_by_second == [task_id]


def test_e2e_sigterm_exits_cleanly_without_loss(server, worker_factory, user_client):
    worker = worker_factory(server, "--concurrency", "2", "--grace-seconds", "10")
    task_ids = [user_client.publish(COUNT_MODULE, "count", [200_000_000]) for _ in range(10)]
    wait_for_status(user_client, task_ids[0], "completed")

    assert worker.terminate() == 0
    log = worker.log()
    assert "worker_stopped" in log
    finished_by_first = {event["task_id"] for event in finished_tasks(log) if event["outcome"] == "completed"}

    worker_factory(server, "--concurrency", "2")
    results = collect_results(user_client, 10, timeout=60)

    assert sorted(result["task_id"] for result in results) == sorted(task_ids)
    assert all(result["status"] == "completed" for result in results)
    assert all(result["result"] == 200_000_000 for result in results)
    assert finished_by_first

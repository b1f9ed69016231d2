"""Long polling, batches, modules by reference, priorities and delays."""

import asyncio
import hashlib
import time

import httpx
from sqlalchemy import event

from tests.server.api import EXAMPLES, claim, get_task, module_base64, publish, register_and_login
from tests.server.test_two_servers import free_port, start_server, wait_until_up

ADD_WASM = (EXAMPLES / "add.wasm").read_bytes()


async def test_long_poll_claim_wakes_on_publish(client, owner, worker):
    started = time.monotonic()
    waiting = asyncio.create_task(client.get("/tasks?wait=10", headers=worker["headers"]))
    await asyncio.sleep(0.3)

    task_id = await publish(client, owner)
    response = await waiting

    assert response.status_code == 200
    assert response.json()["data"]["task"]["id"] == task_id
    assert time.monotonic() - started < 5, "woken by the publish, not by the 10 s timeout"


async def test_long_poll_claim_times_out_with_404(client, worker):
    started = time.monotonic()

    response = await client.get("/tasks?wait=0.5", headers=worker["headers"])

    assert response.status_code == 404
    assert time.monotonic() - started >= 0.5


async def test_long_poll_results_wake_on_outcome(client, owner, worker):
    await publish(client, owner)
    task = await claim(client, worker)
    waiting = asyncio.create_task(client.get("/results?wait=10", headers=owner["headers"]))
    await asyncio.sleep(0.3)

    await client.post("/results", json={"task_id": task["id"], "result": 5, "lease_token": task["lease_token"]}, headers=worker["headers"])
    response = await waiting

    assert response.status_code == 200
    assert response.json()["data"]["result"]["result"] == 5


async def test_claim_wakes_after_delay(client, owner, worker):
    waiting = asyncio.create_task(client.get("/tasks?wait=10", headers=worker["headers"]))
    await asyncio.sleep(0.2)
    started = time.monotonic()

    task_id = await publish(client, owner, delay_seconds=0.5)
    response = await waiting

    assert response.status_code == 200
    assert response.json()["data"]["task"]["id"] == task_id
    assert time.monotonic() - started < 3, "found by the database watch, not at the end of the 10 s wait"


async def test_idle_claims_share_database_polls(client, worker, services):
    statements = []

    def record(connection, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    engine = services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        waiting = [client.get("/tasks?wait=2&max=5", headers=worker["headers"]) for _ in range(10)]
        responses = await asyncio.gather(*waiting)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    claims = [statement for statement in statements if "ORDER BY tasks.priority DESC" in statement]
    probes = [statement for statement in statements if statement.startswith("SELECT tasks.id \nFROM tasks") and "ORDER BY" not in statement]
    assert [response.status_code for response in responses] == [404] * 10
    assert len(claims) == 10, "one claim as each request starts, none while it waits"
    assert 1 <= len(probes) <= 8, "one probe per interval (50 ms doubling to 1 s) for all ten requests"


async def test_publish_wakes_one_claim_per_task(client, owner, worker, services):
    statements = []

    def record(connection, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    waiting = [asyncio.create_task(client.get("/tasks?wait=4", headers=worker["headers"])) for _ in range(10)]
    # The database watch probes 0.75 s and 1.55 s after the claims start; publishing
    # between the two keeps its broadcast out of this count.
    await asyncio.sleep(1.0)
    engine = services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        task_id = await publish(client, owner)
        await asyncio.sleep(0.3)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    responses = await asyncio.gather(*waiting)

    claims = [statement for statement in statements if "ORDER BY tasks.priority DESC" in statement]
    claimed = [response.json()["data"]["task"]["id"] for response in responses if response.status_code == 200]
    assert claimed == [task_id]
    assert [response.status_code for response in responses].count(404) == 9
    assert len(claims) == 1, "one task wakes one of the ten waiting claims"


async def test_release_wakes_waiting_claim(client, owner, worker):
    other = await register_and_login(client, "other-worker")
    task_id = await publish(client, owner)
    leased = await claim(client, worker)
    waiting = asyncio.create_task(client.get("/tasks?wait=10", headers=other["headers"]))
    # By now the database watch probes only once a second.
    await asyncio.sleep(2.0)

    released_at = time.monotonic()
    await client.post(f"/tasks/{task_id}/release", json={"lease_token": leased["lease_token"]}, headers=worker["headers"])
    response = await waiting

    assert response.status_code == 200
    assert response.json()["data"]["task"]["id"] == task_id
    assert time.monotonic() - released_at < 0.4, "woken by the release, not by the next probe"


async def test_wait_over_limit_rejected(client, worker):
    response = await client.get("/tasks?wait=31", headers=worker["headers"])

    assert response.status_code == 400


async def test_batch_claim_takes_up_to_max(client, owner, worker):
    for i in range(5):
        await publish(client, owner, args=(i, 0))

    first = await client.get("/tasks?max=3&inline_module=false", headers=worker["headers"])
    second = await client.get("/tasks?max=3", headers=worker["headers"])
    third = await client.get("/tasks?max=3", headers=worker["headers"])

    first_tasks = first.json()["data"]["tasks"]
    second_tasks = second.json()["data"]["tasks"]
    assert [task["args"][0] for task in first_tasks] == [0, 1, 2]
    assert [task["args"][0] for task in second_tasks] == [3, 4]
    assert all("wasm_module" not in task for task in first_tasks)
    assert all(task["wasm_module"] == module_base64("add.wasm") for task in second_tasks)
    assert third.status_code == 404


async def test_batch_reports_answer_per_item(client, owner, worker):
    for i in range(3):
        await publish(client, owner, args=(i, 1))
    tasks = (await client.get("/tasks?max=3", headers=worker["headers"])).json()["data"]["tasks"]

    results = await client.post(
        "/results",
        json=[
            {"task_id": tasks[0]["id"], "result": 1, "lease_token": tasks[0]["lease_token"]},
            {"task_id": tasks[1]["id"], "result": 2, "lease_token": "not-the-lease"},
            {"task_id": 999999, "result": 3},
        ],
        headers=worker["headers"],
    )
    failures = await client.post(
        "/failures",
        json=[{"task_id": tasks[2]["id"], "error_msg": "boom", "lease_token": tasks[2]["lease_token"], "retryable": False}],
        headers=worker["headers"],
    )

    answers = results.json()["data"]["results"]
    assert results.status_code == 200
    assert answers[0] == {"task_id": tasks[0]["id"], "status": "completed", "retried": False}
    assert answers[1]["error"]["code"] == 409
    assert answers[2]["error"]["code"] == 404
    assert failures.json()["data"]["results"][0]["status"] == "failed"


async def test_batch_reports_per_task_values(client, owner, worker):
    for i in range(6):
        await publish(client, owner, args=(i, 1))
    tasks = (await client.get("/tasks?max=6", headers=worker["headers"])).json()["data"]["tasks"]
    completed, retried, failed = tasks[:2], tasks[2:4], tasks[4:]

    await client.post(
        "/results",
        json=[{"task_id": t["id"], "result": 100 + t["id"], "lease_token": t["lease_token"]} for t in completed],
        headers=worker["headers"],
    )
    await client.post(
        "/failures",
        json=[
            {"task_id": t["id"], "error_msg": f"error of {t['id']}", "lease_token": t["lease_token"], "retryable": t in retried}
            for t in retried + failed
        ],
        headers=worker["headers"],
    )

    delivered = (await client.get("/results?max=10", headers=owner["headers"])).json()["data"]["results"]
    by_id = {record["task_id"]: record for record in delivered}
    assert set(by_id) == {t["id"] for t in completed + failed}
    for t in completed:
        assert by_id[t["id"]]["result"] == 100 + t["id"]
    for t in failed:
        assert by_id[t["id"]]["error"] == f"error of {t['id']}"
    for t in retried:
        view = await get_task(client, owner, t["id"])
        assert (view["status"], view["last_error"]) == ("pending", f"error of {t['id']}")


async def test_batch_results_delivered_in_order(client, owner, worker):
    for i in range(3):
        await publish(client, owner, args=(i, 1))
    tasks = (await client.get("/tasks?max=3", headers=worker["headers"])).json()["data"]["tasks"]
    reports = [{"task_id": t["id"], "result": t["args"][0], "lease_token": t["lease_token"]} for t in reversed(tasks)]
    await client.post("/results", json=reports, headers=worker["headers"])

    response = await client.get("/results?max=10", headers=owner["headers"])

    delivered = response.json()["data"]["results"]
    assert [record["task_id"] for record in delivered] == [t["id"] for t in reversed(tasks)]


async def test_module_upload_and_reference(client, owner, worker):
    upload = await client.post(
        "/modules", content=ADD_WASM, headers={**owner["headers"], "Content-Type": "application/wasm"}
    )
    reference = upload.json()["data"]["module"]
    published = await client.post(
        "/tasks", json={"task": {"module": reference, "func": "add", "args": [1, 2]}}, headers=owner["headers"]
    )
    task = (await client.get("/tasks?inline_module=false", headers=worker["headers"])).json()["data"]["task"]
    download = await client.get(f"/modules/{task['module_sha256']}", headers=worker["headers"])

    assert reference == "sha256:" + hashlib.sha256(ADD_WASM).hexdigest()
    assert upload.json()["data"]["functions"] == ["add"]
    assert published.status_code == 200
    assert download.content == ADD_WASM
    assert download.headers["content-type"] == "application/wasm"


async def test_module_upload_as_base64_json(client, owner):
    response = await client.post("/modules", json={"wasm_module": module_base64("add.wasm")}, headers=owner["headers"])

    assert response.json()["data"]["sha256"] == hashlib.sha256(ADD_WASM).hexdigest()


async def test_module_invalid_upload_rejected(client, owner):
    response = await client.post(
        "/modules", content=b"not wasm", headers={**owner["headers"], "Content-Type": "application/wasm"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("not a WebAssembly module")


async def test_module_unknown_reference_not_found(client, owner):
    missing = "sha256:" + "0" * 64
    published = await client.post(
        "/tasks", json={"task": {"module": missing, "func": "add", "args": [1, 2]}}, headers=owner["headers"]
    )
    download = await client.get("/modules/" + "0" * 64, headers=owner["headers"])

    assert published.status_code == 404
    assert "POST /modules" in published.json()["error"]["message"]
    assert download.status_code == 404


async def test_priority_claimed_first(client, owner, worker):
    low = await publish(client, owner, args=(1, 1))
    high = await publish(client, owner, args=(2, 2), priority=5)

    first = await claim(client, worker)
    second = await claim(client, worker)

    assert first["id"] == high
    assert second["id"] == low


async def test_delay_postpones_claim(client, owner, worker):
    await publish(client, owner, delay_seconds=0.6)

    early = await claim(client, worker)
    await asyncio.sleep(0.8)
    late = await claim(client, worker)

    assert early is None
    assert late is not None


async def test_long_poll_abandoned_claim_leaves_task(tmp_path):
    """A long poll whose client went away must not keep the task it would have claimed."""
    port = free_port()
    server = start_server(f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}", tmp_path, port)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base_url, server)
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            owner = await register_and_login(client, "owner")
            leaving = await register_and_login(client, "leaving")
            staying = await register_and_login(client, "staying")
            try:
                await client.get("/tasks?wait=20", headers=leaving["headers"], timeout=0.5)
            except httpx.ReadTimeout:
                pass
            await asyncio.sleep(0.2)
            task_id = await publish(client, owner)
            await asyncio.sleep(1.5)

            task = await claim(client, staying)
    finally:
        server.terminate()
        server.wait(timeout=10)

    assert task is not None, "the task was not left leased to the abandoned request"
    assert task["id"] == task_id
    assert task["attempt"] == 1


async def test_batch_publish_ids_follow_request_order(client, owner):
    drafts = [{"wasm_module": module_base64("add.wasm"), "func": "add", "args": [i, 100]} for i in range(7)]

    response = await client.post("/tasks", json={"tasks": drafts}, headers=owner["headers"])

    task_ids = response.json()["data"]["task_ids"]
    for index, task_id in enumerate(task_ids):
        task = (await client.get(f"/tasks/{task_id}", headers=owner["headers"])).json()["data"]["task"]
        assert task["args"] == [index, 100]


async def test_module_upload_without_content_type(client, owner):
    response = await client.post("/modules", content=ADD_WASM, headers=owner["headers"])

    assert response.status_code == 200, response.text
    assert response.json()["data"]["sha256"] == hashlib.sha256(ADD_WASM).hexdigest()

"""Results go to the task's owner, each once, in the order outcomes were recorded."""

import asyncio

from tests.server.api import claim, deliver, get_task, publish, register_and_login, report_result


async def claim_all(client, worker, count: int) -> dict[int, dict]:
    claimed = {}
    for _ in range(count):
        task = await claim(client, worker)
        claimed[task["id"]] = task
    return claimed


async def test_delivery_in_outcome_order(client, owner, worker):
    task_ids = [await publish(client, owner, args=(i, 0)) for i in range(3)]
    claimed = await claim_all(client, worker, 3)

    for task_id in (task_ids[2], task_ids[0], task_ids[1]):
        response = await report_result(client, worker, claimed[task_id], result=task_id)
        assert response.status_code == 200, response.text
    delivered = [(await deliver(client, owner))["task_id"] for _ in range(3)]

    assert delivered == [task_ids[2], task_ids[0], task_ids[1]]
    assert await deliver(client, owner) is None


async def test_task_record_for_owner_only(client, owner, worker):
    task_id = await publish(client, owner, max_retries=4)
    task = await claim(client, worker)
    await report_result(client, worker, task, result=5)

    record = await get_task(client, owner, task_id)
    by_worker = await client.get(f"/tasks/{task_id}", headers=worker["headers"])

    assert record["status"] == "completed"
    assert record["attempts"] == 1
    assert record["max_attempts"] == 5
    assert record["result"] == 5
    assert record["finished_at"].endswith("Z")
    assert by_worker.status_code == 404
    assert by_worker.json()["error"]["code"] == 404


async def test_concurrent_delivery_once(client, owner, worker):
    task_ids = [await publish(client, owner, args=(i, 0)) for i in range(20)]
    claimed = await claim_all(client, worker, 20)
    for task in claimed.values():
        await report_result(client, worker, task)

    results = await asyncio.gather(*(deliver(client, owner) for _ in range(20)))
    delivered = [result["task_id"] for result in results if result is not None]

    assert sorted(delivered) == sorted(task_ids)
    assert await deliver(client, owner) is None


async def test_results_stay_with_owner(client, owner, worker):
    other = await register_and_login(client, "other-owner")
    mine = await publish(client, owner, args=(1, 1))
    theirs = await publish(client, other, args=(2, 2))
    for task in (await claim_all(client, worker, 2)).values():
        await report_result(client, worker, task)

    for_other = await deliver(client, other)
    for_other_again = await deliver(client, other)
    for_worker = await deliver(client, worker)
    for_owner = await deliver(client, owner)

    assert for_other["task_id"] == theirs
    assert for_other["created_by"] == other["user_id"]
    assert for_other_again is None
    assert for_worker is None
    assert for_owner["task_id"] == mine


async def test_completed_record_with_null_result(client, owner, worker):
    task_id = await publish(client, owner)
    task = await claim(client, worker)

    response = await report_result(client, worker, task, result=None)
    record = await get_task(client, owner, task_id)
    delivered = await deliver(client, owner)

    assert response.status_code == 200, response.text
    assert record["status"] == "completed"
    assert record["result"] is None
    assert delivered["status"] == "completed"
    assert delivered["result"] is None
    assert delivered["error"] is None


async def test_completed_record_with_structured_result(client, owner, worker):
    task_id = await publish(client, owner)
    task = await claim(client, worker)
    result = {"sum": 5, "items": [1, "two", None], "big": 2**64 - 1}

    await report_result(client, worker, task, result=result)
    record = await get_task(client, owner, task_id)
    delivered = await deliver(client, owner)

    assert record["status"] == "completed"
    assert record["result"] == result
    assert delivered["result"] == result

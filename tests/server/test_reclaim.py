"""Reclaiming expired leases, extending leases with heartbeats, and releasing tasks."""

import asyncio

from rainchanel.server.reclaim import reclaim_once
from tests.server.api import (
    claim,
    deliver,
    get_task,
    publish,
    register_and_login,
    report_result,
)

# Seconds to wait after a claim so that its 1 s lease has expired.
PAST_LEASE_SECONDS = 1.1


async def expire_and_reclaim(services) -> int:
    await asyncio.sleep(PAST_LEASE_SECONDS)
    return await reclaim_once(services.queue, services.metrics)


async def test_reclaim_returns_task_to_pending(client, owner, worker, services):
    task_id = await publish(client, owner, timeout_seconds=1, max_retries=3)
    await claim(client, worker)

    reclaimed = await expire_and_reclaim(services)
    record = await get_task(client, owner, task_id)

    assert reclaimed == 1
    assert record["status"] == "pending"
    assert record["attempts"] == 1
    assert record["last_error"] == "lease expired after 1 s without a report"


async def test_late_result_after_reclaim(client, owner, worker, services):
    await publish(client, owner, timeout_seconds=1)
    task = await claim(client, worker)
    await expire_and_reclaim(services)

    response = await report_result(client, worker, task)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == 409


async def test_reclaim_last_attempt_fails(client, owner, worker, services):
    task_id = await publish(client, owner, timeout_seconds=1, max_retries=0)
    await claim(client, worker)

    await expire_and_reclaim(services)
    record = await get_task(client, owner, task_id)
    delivered = await deliver(client, owner)

    assert record["status"] == "failed"
    assert delivered["task_id"] == task_id
    assert delivered["status"] == "failed"
    assert delivered["error"] == "lease expired after 1 s without a report"
    assert delivered["attempts"] == 1
    assert await claim(client, worker) is None


async def test_reclaim_leaves_completed(client, owner, worker, services):
    task_id = await publish(client, owner, timeout_seconds=1)
    task = await claim(client, worker)
    await report_result(client, worker, task, result=5)

    reclaimed = await expire_and_reclaim(services)
    record = await get_task(client, owner, task_id)

    assert reclaimed == 0
    assert record["status"] == "completed"
    assert record["result"] == 5
    assert record["last_error"] is None


async def test_heartbeat_extends_lease(client, owner, worker, services):
    task_id = await publish(client, owner, timeout_seconds=1)
    task = await claim(client, worker)
    await asyncio.sleep(0.6)

    response = await client.post(
        f"/tasks/{task_id}/heartbeat", json={"lease_token": task["lease_token"]}, headers=worker["headers"]
    )
    await asyncio.sleep(0.6)
    reclaimed = await reclaim_once(services.queue, services.metrics)
    finished = await report_result(client, worker, task)

    assert response.status_code == 200, response.text
    assert response.json()["data"]["lease_expires_at"] > task["lease_expires_at"]
    assert reclaimed == 0
    assert finished.status_code == 200


async def test_lease_calls_rejected(client, owner, worker):
    task_id = await publish(client, owner)
    task = await claim(client, worker)
    stranger = await register_and_login(client, "stranger")

    for action in ("heartbeat", "release"):
        wrong_token = await client.post(f"/tasks/{task_id}/{action}", json={"lease_token": "bad"}, headers=worker["headers"])
        other_user = await client.post(
            f"/tasks/{task_id}/{action}", json={"lease_token": task["lease_token"]}, headers=stranger["headers"]
        )
        unknown = await client.post("/tasks/999999/" + action, json={"lease_token": "bad"}, headers=worker["headers"])

        assert wrong_token.status_code == 409, action
        assert other_user.status_code == 409, action
        assert unknown.status_code == 404, action
    assert (await get_task(client, owner, task_id))["status"] == "processing"


async def test_release_does_not_count_attempt(client, owner, worker):
    task_id = await publish(client, owner)
    task = await claim(client, worker)

    response = await client.post(
        f"/tasks/{task_id}/release", json={"lease_token": task["lease_token"]}, headers=worker["headers"]
    )
    record = await get_task(client, owner, task_id)
    again = await claim(client, worker)

    assert response.status_code == 200, response.text
    assert record["status"] == "pending"
    assert record["attempts"] == 0
    assert again["id"] == task_id
    assert again["attempt"] == 1


async def test_release_keeps_queue_place(client, owner, worker):
    first_id = await publish(client, owner, args=(1, 1))
    second_id = await publish(client, owner, args=(2, 2))
    first = await claim(client, worker)

    await client.post(f"/tasks/{first_id}/release", json={"lease_token": first["lease_token"]}, headers=worker["headers"])
    again = await claim(client, worker)
    then = await claim(client, worker)

    assert first["id"] == first_id
    assert again["id"] == first_id
    assert then["id"] == second_id

"""Leases fence reports: only the current lease holder's outcome counts, once."""

import asyncio

from tests.server.api import claim, publish, register_and_login


async def test_claim_carries_lease_fields(client, owner, worker):
    task_id = await publish(client, owner, timeout_seconds=7, max_retries=2)

    task = await claim(client, worker)

    assert task["id"] == task_id
    assert task["attempt"] == 1
    assert task["max_attempts"] == 3
    assert task["timeout_seconds"] == 7
    assert len(task["lease_token"]) >= 32
    assert task["lease_expires_at"].endswith("Z")
    assert task["created_by"] == owner["user_id"]
    assert len(task["module_sha256"]) == 64


async def test_result_accepted_once(client, owner, worker):
    await publish(client, owner)
    task = await claim(client, worker)
    report = {"task_id": task["id"], "result": 5, "lease_token": task["lease_token"]}

    first = await client.post("/results", json=report, headers=worker["headers"])
    second = await client.post("/results", json=report, headers=worker["headers"])

    assert first.status_code == 200
    assert second.status_code == 409
    assert "already completed" in second.json()["error"]["message"]


async def test_report_checks_in_order(client, owner, worker):
    await publish(client, owner)
    task = await claim(client, worker)

    unknown = await client.post("/results", json={"task_id": 999999, "result": 1, "created_by": 12345}, headers=worker["headers"])
    wrong_owner = await client.post(
        "/results", json={"task_id": task["id"], "result": 1, "created_by": 12345, "lease_token": "bad"}, headers=worker["headers"]
    )
    wrong_token = await client.post("/results", json={"task_id": task["id"], "result": 1, "lease_token": "bad"}, headers=worker["headers"])

    assert unknown.status_code == 404
    assert wrong_owner.status_code == 403
    assert wrong_token.status_code == 409
    assert unknown.json() == {"error": {"code": 404, "message": "task 999999 not found"}}


async def test_tokenless_report_only_from_holder(client, owner, worker):
    await publish(client, owner)
    task = await claim(client, worker)
    stranger = await register_and_login(client, "stranger")

    refused = await client.post("/results", json={"task_id": task["id"], "result": 1}, headers=stranger["headers"])
    accepted = await client.post(
        "/results", json={"task_id": task["id"], "result": 1, "created_by": owner["user_id"]}, headers=worker["headers"]
    )

    assert refused.status_code == 409
    assert accepted.status_code == 200


async def test_concurrent_claimers_get_each_task_once(client, owner):
    workers = [await register_and_login(client, f"worker{i}") for i in range(8)]
    published = {await publish(client, owner, args=(i, 1)) for i in range(40)}

    async def drain(worker):
        claimed = []
        while (task := await claim(client, worker)) is not None:
            claimed.append(task["id"])
        return claimed

    results = await asyncio.gather(*(drain(w) for w in workers))
    claimed = [task_id for batch in results for task_id in batch]

    assert sorted(claimed) == sorted(published)

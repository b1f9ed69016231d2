"""Failed attempts: exponential backoff with jitter, retry limits, final failure."""

import asyncio
import time

from tests.server.api import claim, deliver, get_task, publish, register_and_login, report_failure, task_row

# SQLite's julianday('now') has millisecond resolution, so the database clock
# may read up to a millisecond behind time.time(). The bounds allow 5 ms.
CLOCK_TOLERANCE_US = 5_000


async def start(make_client, **task_settings):
    client = await make_client(task=task_settings)
    owner = await register_and_login(client, "owner")
    worker = await register_and_login(client, "worker")
    return client, owner, worker


async def fail_and_time(client, worker, task) -> tuple[int, int]:
    """Report a retryable failure and return the wall clock before and after it, in microseconds."""
    before = int(time.time() * 1_000_000)
    response = await report_failure(client, worker, task)
    after = int(time.time() * 1_000_000)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["retried"] is True
    return before, after


async def test_backoff_first_retry(make_client):
    client, owner, worker = await start(make_client, retry_backoff_seconds=1)
    task_id = await publish(client, owner)
    task = await claim(client, worker)

    before, after = await fail_and_time(client, worker, task)
    row = await task_row(client.app.state.services, task_id)

    assert row.status == "pending"
    assert isinstance(row.available_at, int)
    assert row.available_at >= before + 800_000 - CLOCK_TOLERANCE_US
    assert row.available_at <= after + 1_000_000 + CLOCK_TOLERANCE_US


async def fail_twice(make_client, max_backoff_seconds: float):
    """Fail a task's first two attempts with a 0.2 s base backoff.

    Returns the second claim, the time window of its failure report and the task's row.
    """
    client, owner, worker = await start(make_client, retry_backoff_seconds=0.2, retry_backoff_max_seconds=max_backoff_seconds)
    task_id = await publish(client, owner)
    await fail_and_time(client, worker, await claim(client, worker))
    await asyncio.sleep(0.25)
    second = await claim(client, worker)

    before, after = await fail_and_time(client, worker, second)
    row = await task_row(client.app.state.services, task_id)
    return second, before, after, row


async def test_backoff_doubles(make_client):
    second, before, after, row = await fail_twice(make_client, max_backoff_seconds=10)

    assert second["attempt"] == 2
    assert row.available_at >= before + 320_000 - CLOCK_TOLERANCE_US
    assert row.available_at <= after + 400_000 + CLOCK_TOLERANCE_US


async def test_backoff_capped(make_client):
    _second, before, after, row = await fail_twice(make_client, max_backoff_seconds=0.25)

    assert row.available_at >= before + 200_000 - CLOCK_TOLERANCE_US
    assert row.available_at <= after + 250_000 + CLOCK_TOLERANCE_US


async def test_claim_waits_for_backoff(make_client):
    client, owner, worker = await start(make_client, retry_backoff_seconds=1)
    await publish(client, owner)
    await fail_and_time(client, worker, await claim(client, worker))

    assert await claim(client, worker) is None


async def test_claim_after_backoff(make_client):
    client, owner, worker = await start(make_client, retry_backoff_seconds=0.3)
    task_id = await publish(client, owner)
    await fail_and_time(client, worker, await claim(client, worker))

    too_early = await claim(client, worker)
    await asyncio.sleep(0.35)
    retried = await claim(client, worker)

    assert too_early is None
    assert retried["id"] == task_id
    assert retried["attempt"] == 2


async def test_retries_exhausted_fail(make_client):
    client, owner, worker = await start(make_client, retry_backoff_seconds=0)
    task_id = await publish(client, owner, max_retries=2)

    statuses = []
    for attempt in (1, 2, 3):
        task = await claim(client, worker)
        assert task["attempt"] == attempt
        response = await report_failure(client, worker, task, error_msg=f"attempt {attempt} failed")
        statuses.append(response.json()["data"]["status"])
    delivered = await deliver(client, owner)

    assert statuses == ["pending", "pending", "failed"]
    assert await claim(client, worker) is None
    assert delivered["task_id"] == task_id
    assert delivered["status"] == "failed"
    assert delivered["error"] == "attempt 3 failed"
    assert delivered["attempts"] == 3
    assert delivered["result"] is None


async def test_non_retryable_fails_at_once(client, owner, worker):
    task_id = await publish(client, owner, max_retries=5)
    task = await claim(client, worker)

    response = await report_failure(client, worker, task, error_msg="bad input", retryable=False)
    record = await get_task(client, owner, task_id)

    assert response.json()["data"]["status"] == "failed"
    assert response.json()["data"]["retried"] is False
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert record["last_error"] == "bad input"


async def test_long_error_cut_at_character(client, owner, worker):
    # "é" is 2 bytes and "😀" is 4, so byte 4096 falls inside a character.
    error = "a" * 4093 + "😀" + "é" * 451 + "."
    task_id = await publish(client, owner, max_retries=0)
    task = await claim(client, worker)

    await report_failure(client, worker, task, error_msg=error)
    stored = (await get_task(client, owner, task_id))["last_error"]

    assert len(error.encode()) == 5000
    assert len(stored.encode()) <= 4096
    assert error.startswith(stored)
    assert stored == "a" * 4093

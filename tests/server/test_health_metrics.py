"""GET /health reports the database and queue state, and GET /metrics exposes Prometheus series."""

import asyncio
import socket

import structlog
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine

from rainchanel.server.reclaim import reclaim_once
from tests.server.api import claim, publish, register_and_login, report_failure, report_result


def closed_local_port() -> int:
    """Return a port on 127.0.0.1 that was free a moment ago, so connections to it are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def scrape(client) -> dict[tuple[str, frozenset], float]:
    """Return every sample of GET /metrics keyed by name and labels."""
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def route_labels(samples) -> set[str]:
    return {
        dict(labels)["route"]
        for name, labels in samples
        if name == "rainchanel_http_request_duration_seconds_count"
    }


async def test_health_reports_queue(client, owner, worker):
    await publish(client, owner)
    await publish(client, owner)
    await claim(client, worker)

    response = await client.get("/health")

    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "healthy"
    assert body["database"] == "ok"
    assert body["queue"] == {"pending": 1, "processing": 1, "completed": 0, "failed": 0}


async def test_health_database_unreachable(client, services):
    working_engine = services.db.engine
    services.db.engine = create_async_engine(f"mysql+asyncmy://root@127.0.0.1:{closed_local_port()}/none")
    try:
        response = await client.get("/health")
    finally:
        await services.db.engine.dispose()
        services.db.engine = working_engine

    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unhealthy"
    assert body["database"] == "unreachable"
    assert body["reason"]
    assert (await client.get("/health")).status_code == 200


async def test_metrics_status_gauge(client, owner, worker):
    await publish(client, owner)
    await publish(client, owner)
    await claim(client, worker)

    samples = await scrape(client)

    assert value(samples, "rainchanel_tasks_total", status="pending") == 1
    assert value(samples, "rainchanel_tasks_total", status="processing") == 1
    assert ("rainchanel_tasks_total", frozenset({("status", "failed")})) in samples


async def test_metrics_counters_follow_operations(make_client):
    client = await make_client(task={"retry_backoff_seconds": 0})
    owner = await register_and_login(client, "owner")
    worker = await register_and_login(client, "worker")
    services = client.app.state.services
    before = await scrape(client)

    await publish(client, owner, args=(1, 1))
    await publish(client, owner, args=(2, 2))
    await publish(client, owner, args=(3, 3), max_retries=0)
    await publish(client, owner, args=(4, 4), timeout_seconds=1)
    await publish(client, owner, args=(5, 5))
    completed, retried, failed, abandoned, released = [await claim(client, worker) for _ in range(5)]
    await client.post(
        f"/tasks/{released['id']}/release", json={"lease_token": released["lease_token"]}, headers=worker["headers"]
    )
    await report_result(client, worker, completed)
    await report_failure(client, worker, retried)
    await report_failure(client, worker, failed)
    await asyncio.sleep(1.1)
    await reclaim_once(services.queue, services.metrics)
    after = await scrape(client)

    def increase(name: str) -> float:
        return value(after, name) - value(before, name)

    assert abandoned["timeout_seconds"] == 1
    assert increase("rainchanel_tasks_published_total") == 5
    assert increase("rainchanel_tasks_claimed_total") == 5
    assert increase("rainchanel_tasks_released_total") == 1
    assert increase("rainchanel_tasks_completed_total") == 1
    assert increase("rainchanel_tasks_failed_total") == 1
    assert increase("rainchanel_tasks_retried_total") == 2
    assert increase("rainchanel_tasks_reclaimed_total") == 1
    assert increase("rainchanel_task_queue_wait_seconds_count") == 5
    assert increase("rainchanel_task_run_seconds_count") == 3


async def test_metrics_http_route_label(client, owner, worker):
    task_id = await publish(client, owner)
    await client.get(f"/tasks/{task_id}", headers=owner["headers"])
    await client.get("/no/such/route")

    samples = await scrape(client)
    routes = route_labels(samples)

    assert "/tasks" in routes
    assert "/tasks/{task_id}" in routes
    assert f"/tasks/{task_id}" not in routes
    assert "/no/such/route" not in routes
    assert value(
        samples, "rainchanel_http_request_duration_seconds_count", method="POST", route="/tasks", status="200"
    ) == 1


async def test_request_events_name_client(client, owner):
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        await client.get("/results", headers={**owner["headers"], "User-Agent": "rainchanel-worker/0.1.0 (host-a; pid 42)"})

    requests = [event for event in events if event["event"] == "http_request"]
    assert len(requests) == 1
    assert requests[0]["client"] == "rainchanel-worker/0.1.0 (host-a; pid 42)"
    assert requests[0]["status"] == 404

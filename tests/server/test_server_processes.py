"""`rainchanel serve --workers 2`: metrics add up across processes, and the
shared counters that carry wake-ups from one process to the others."""

import asyncio
import os
import re
import subprocess
import sys

import httpx
import pytest

from rainchanel.server.waiting import SharedCounters, Signal
from tests.server.conftest import TEST_SECRET
from tests.server.test_two_servers import free_port, wait_until_up


@pytest.fixture
def two_process_server(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'queue.db'}",
        "JWT_SECRET": TEST_SECRET,
        "LOG_LEVEL": "warning",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_file = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "rainchanel.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base_url, process)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_server_processes_metrics_add_up(two_process_server):
    pattern = r'rainchanel_http_request_duration_seconds_count\{method="GET",route="/ping",status="200"\} (\S+)'
    with httpx.Client(base_url=two_process_server, timeout=10) as client:
        before = re.findall(pattern, client.get("/metrics").text)
        for _ in range(30):
            # A new connection each time, so both processes serve some.
            httpx.get(two_process_server + "/ping")
        metrics = client.get("/metrics").text

    after = re.findall(pattern, metrics)
    assert len(after) == 1, "one series for the pings of both processes"
    assert float(after[0]) - float(before[0]) == 30
    assert "rainchanel_tasks_total" in metrics


async def test_shared_counters_wake_other_signal(tmp_path):
    """Two processes map the same counter file; here two mappings stand in for them."""
    path = tmp_path / "wakeup.bin"
    SharedCounters.create(path, 2)
    publisher = Signal(SharedCounters(path, 2), slot=0)
    waiter = Signal(SharedCounters(path, 2), slot=0)
    other_slot = Signal(SharedCounters(path, 2), slot=1)
    relays = [asyncio.create_task(signal.relay_shared()) for signal in (waiter, other_slot)]
    await asyncio.sleep(0.05)
    woken = waiter.current().event
    untouched = other_slot.current().event

    publisher.notify()
    # The relay watches the counters only while a request waits.
    with waiter.waiting(), other_slot.waiting():
        await asyncio.wait_for(woken.wait(), timeout=2)

    for relay in relays:
        relay.cancel()
    assert woken.is_set()
    assert not untouched.is_set(), "a bump wakes only the signal of its own slot"


async def test_idle_relay_reads_no_counters(tmp_path):
    path = tmp_path / "wakeup.bin"
    SharedCounters.create(path, 2)
    counters = SharedCounters(path, 2)
    reads = []
    read = counters.read
    counters.read = lambda slot: reads.append(slot) or read(slot)
    signal = Signal(counters, slot=0)
    relay = asyncio.create_task(signal.relay_shared())

    await asyncio.sleep(0.2)
    idle_reads = len(reads)
    with signal.waiting():
        await asyncio.sleep(0.2)
    relay.cancel()

    assert idle_reads == 1, "one read as the relay starts, none while no request waits"
    assert len(reads) > 10, "a read every few milliseconds while a request waits"

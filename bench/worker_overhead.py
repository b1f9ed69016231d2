"""Measure a worker's own overhead per task and its rate on a trivial task.

Starts a server (temporary directory, SQLite, 127.0.0.1, free port) and one
worker, publishes TASKS calls of math.wasm's add, and reads the worker's
JSON task_finished events. Overhead is the time the worker spends on a task
outside wasm execution: module decode or download + the executor call's
overhead + report, with the claim request reported separately. With batch
reports, "report" is the time from handing the outcome to the reporter until
the server accepted it, so it overlaps with later tasks.

Worker CPU per task is psutil's user + system CPU time of the worker process
from the end of the first task to the end of the last, divided by the tasks
in between. The first task is left out because it includes start-up, login
and the module's compilation.
Tasks per claim and outcomes per report request come from the
claim_batch_size and report_batch_size fields of task_finished; the figures
are per task, so a batch of 8 counts 8 times.

Usage: .venv/bin/python bench/worker_overhead.py [TASKS] [CONCURRENCY] [WORKER OPTION...]
for example: bench/worker_overhead.py 1000 4 --legacy-routes
"""

import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from rainchanel.client import ApiError, RainChanelClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_ping(url: str, timeout_seconds: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    with RainChanelClient(url, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except ApiError:
                time.sleep(0.1)
    raise SystemExit(f"server at {url} did not respond within {timeout_seconds} s")


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def wait_until_finished(client: RainChanelClient, task_ids: list[int]) -> None:
    for task_id in task_ids:
        while client.get_task(task_id)["status"] not in ("completed", "failed"):
            time.sleep(0.02)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    task_count = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    worker_options = sys.argv[3:]
    module = (EXAMPLES / "math.wasm").read_bytes()

    with tempfile.TemporaryDirectory(prefix="rainchanel-bench-") as directory:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, JWT_SECRET=secrets.token_urlsafe(48), LOG_LEVEL="warning")
        server = subprocess.Popen(
            [sys.executable, "-m", "rainchanel.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        worker = None
        try:
            wait_for_ping(url)
            with RainChanelClient(url) as client:
                client.register("bench-worker", "bench-password")
                client.register("bench-user", "bench-password")
                client.login("bench-user", "bench-password")

                # The first task compiles the module; later tasks use the cache.
                task_ids = [client.publish(module, "add", [i, 1]) for i in range(task_count)]
                worker_log = Path(directory) / "worker.log"
                worker_env = dict(
                    env, RAINCHANEL_SERVER=url, RAINCHANEL_USERNAME="bench-worker", RAINCHANEL_PASSWORD="bench-password",
                    LOG_FORMAT="json", LOG_LEVEL="info",
                )
                with open(worker_log, "wb") as log_file:
                    worker = subprocess.Popen(
                        [sys.executable, "-m", "rainchanel.cli", "worker", "--concurrency", str(concurrency), *worker_options],
                        env=worker_env, stdout=log_file, stderr=subprocess.STDOUT,
                    )
                started = time.monotonic()
                worker_process = psutil.Process(worker.pid)
                wait_until_finished(client, task_ids[:1])
                first_finished = time.monotonic()
                first_cpu = cpu_seconds(worker_process)
                # Earlier tasks may still be finishing on other slots.
                wait_until_finished(client, [task_ids[-1], *task_ids[-concurrency:]])
                elapsed = time.monotonic() - started
                steady_elapsed = time.monotonic() - first_finished
                worker_cpu = cpu_seconds(worker_process) - first_cpu
        finally:
            if worker is not None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()

        events = [json.loads(line) for line in worker_log.read_text().splitlines() if line.startswith("{")]
        finished = [event for event in events if event.get("event") == "task_finished"][1:]

    overhead = [event["duration_ms"] - event["run_ms"] for event in finished]
    run = [event["run_ms"] for event in finished]
    report = [event["report_ms"] for event in finished]
    claim = [event["claim_ms"] for event in finished]
    module_times = [event["module_ms"] for event in finished]
    print(f"tasks: {task_count} (math.wasm add, cached module after the first), worker concurrency: {concurrency}, options: {' '.join(worker_options) or 'none'}")
    print(f"rate: {task_count / elapsed:.1f} tasks/s over {elapsed:.2f} s, including the worker's start-up")
    print(f"rate after the first task: {(task_count - 1) / steady_elapsed:.1f} tasks/s over {steady_elapsed:.2f} s")
    print(f"worker CPU per task after the first: {worker_cpu * 1000 / (task_count - 1):.2f} ms")
    claim_sizes = [event.get("claim_batch_size", 1) for event in finished]
    report_sizes = [event.get("report_batch_size", 1) for event in finished]
    print(f"tasks per claim, per task: mean {statistics.mean(claim_sizes):.1f}, median {statistics.median(claim_sizes):g}")
    print(f"outcomes per report request, per task: mean {statistics.mean(report_sizes):.1f}, median {statistics.median(report_sizes):g}")
    print(f"worker overhead per task, outside wasm (decode + report + bookkeeping): median {statistics.median(overhead):.2f} ms, p95 {percentile(overhead, 0.95):.2f} ms")
    print(f"  of which report request: median {statistics.median(report):.2f} ms")
    own = [event["duration_ms"] - event["run_ms"] - event["report_ms"] for event in finished]
    print(f"  of which the worker's own code (no request, no wasm): median {statistics.median(own):.3f} ms")
    print(f"  of which module decode/download/cache check: median {statistics.median(module_times):.3f} ms")
    print(f"claim request: median {statistics.median(claim):.2f} ms")
    print(f"executor.run (instantiate + call): median {statistics.median(run):.2f} ms")


if __name__ == "__main__":
    main()

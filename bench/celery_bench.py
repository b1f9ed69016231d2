"""The Celery side of bench/compare.py: an add task and its end-to-end run.

The Celery worker child imports this module with `-A celery_bench`. Broker
and result backend are Redis database RC_BENCH_REDIS_DB (default 15) on
127.0.0.1:6379; each run uses its own queue name, so no key of another
Redis user is read or deleted, and results expire after RESULT_EXPIRES_SECONDS.
"""

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from celery import Celery, group

from processes import BENCH_DIR, REDIS_HOST, REDIS_PORT, CpuMeter, start_child, stop_child, tree_rss_bytes

REDIS_DB = int(os.environ.get("RC_BENCH_REDIS_DB", "15"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
QUEUE_VARIABLE = "RC_BENCH_CELERY_QUEUE"
RESULT_EXPIRES_SECONDS = 600
WARM_UP_TASKS = 50
WORKER_READY_TIMEOUT_SECONDS = 60.0

app = Celery("celery_bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=os.environ.get(QUEUE_VARIABLE, "rc-bench"),
    result_expires=RESULT_EXPIRES_SECONDS,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="celery_bench.add")
def add(a: int, b: int) -> int:
    return a + b


@dataclass
class CeleryConfig:
    """One Celery worker configuration to try."""

    pool: str
    concurrency: int
    prefetch_multiplier: int

    def describe(self) -> str:
        return f"-P {self.pool} -c {self.concurrency} --prefetch-multiplier {self.prefetch_multiplier}"


@dataclass
class CeleryRun:
    config: CeleryConfig
    tasks: int
    seconds: float
    collected: int
    rss_bytes: int
    error: str | None = None
    cpu_seconds: dict[str, float] | None = None

    @property
    def rate(self) -> float:
        return self.collected / self.seconds if self.seconds > 0 else 0.0


def run_end_to_end(config: CeleryConfig, task_count: int, directory: Path, timeout_seconds: float) -> CeleryRun:
    """Start a Celery worker, publish task_count adds as one group and wait for every result."""
    queue = f"rc-bench-{uuid.uuid4().hex[:12]}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH_DIR), os.environ.get("PYTHONPATH", "")]))
    env[QUEUE_VARIABLE] = queue
    command = [
        sys.executable, "-m", "celery", "-A", "celery_bench", "worker", "--loglevel", "warning",
        "-P", config.pool, "-c", str(config.concurrency), "--prefetch-multiplier", str(config.prefetch_multiplier),
        "-Q", queue, "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    worker = start_child(command, env, directory / f"celery-{config.pool}-{config.concurrency}.log", cwd=BENCH_DIR)
    try:
        warm_up = group(add.s(i, 1) for i in range(WARM_UP_TASKS)).apply_async(queue=queue)
        warm_up.get(timeout=WORKER_READY_TIMEOUT_SECONDS)
        warm_up.forget()

        meter = CpuMeter({"worker": worker.pid}, ("redis-server",))
        meter.start()
        started = time.perf_counter()
        result = group(add.s(i, 1) for i in range(task_count)).apply_async(queue=queue)
        try:
            values = result.get(timeout=timeout_seconds)
            error = None
        except Exception as exc:  # a timeout or a failed task: report it in the table
            values, error = [], f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        cpu_seconds = meter.stop()
        if not error and values != [i + 1 for i in range(task_count)]:
            error = "wrong results"
        rss = tree_rss_bytes(worker.pid)
        result.forget()
        return CeleryRun(config, task_count, seconds, len(values), rss, error, cpu_seconds)
    finally:
        stop_child(worker)
        _delete_queue(queue)


def _delete_queue(queue: str) -> None:
    with app.connection_for_write() as connection:
        # kombu keeps the queue's messages under its name and its bindings in a set.
        connection.default_channel.client.delete(queue, f"_kombu.binding.{queue}")

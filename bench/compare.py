"""RainChanel next to Celery on one machine: end-to-end rate, claim latency, wake-up and memory.

Usage: .venv/bin/python bench/compare.py [--tasks N] [--quick] [--profile DIR] [--no-docs]

Starts every server and worker itself on 127.0.0.1: `rainchanel serve`
(SQLite in a temporary directory, or the MariaDB database rc_bench, which is
dropped and recreated per run), the workers, and a Celery worker on Redis
database 15. Needs MariaDB on 127.0.0.1:3306 (root, no password) and Redis
on 127.0.0.1:6379 (started when it does not respond). Prints one markdown
table and writes it to docs/benchmarks.md unless --no-docs is given. Every
child is stopped at the end, also after an error or SIGTERM.

With --profile DIR the RainChanel servers are sampled with py-spy during the
MariaDB end-to-end runs and the claim measurement at the largest queue; the
raw profiles go to DIR and a summary by function is printed after the table.
Sampling takes CPU from the 2-core runs, so take the table from a run
without --profile.
"""

import argparse
import datetime
import os
import platform
import shlex
import signal
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psutil

import celery_bench
import profiling
import rainchanel_load
from processes import (
    REPO, drop_mariadb_database, ensure_redis, mariadb_connect, start_server, stop_all, stop_child, tree_rss_bytes,
)

DOCS_PATH = REPO / "docs" / "benchmarks.md"
MIB = 1024 * 1024

DEFAULT_TASKS = 1000
QUICK_TASKS = 300
RUN_TIMEOUT_SECONDS = 150.0
CLAIM_SAMPLES = 500
WAKE_UP_TRIALS = 30
SMALL_QUEUE = 10_000
LARGE_QUEUE = 1_000_000
QUICK_LARGE_QUEUE = 100_000

# Targets on MariaDB, relative to Celery or to the small queue.
BATCHED_OVER_CELERY = 3.0
ONE_AT_A_TIME_OVER_CELERY = 1.0
CLAIM_GROWTH_LIMIT = 1.5
WAKE_UP_LIMIT_MS = 50.0

CELERY_CONFIGS = [
    celery_bench.CeleryConfig("prefork", 2, 4),
    celery_bench.CeleryConfig("prefork", 2, 64),
    celery_bench.CeleryConfig("threads", 4, 64),
]


@dataclass
class Row:
    measurement: str
    system: str
    database: str
    configuration: str
    result: str
    memory: str


@dataclass
class Options:
    tasks: int
    quick: bool
    profile_dir: Path | None
    write_docs: bool
    command: str

    @property
    def server_workers(self) -> list[int]:
        return [1] if self.quick else [1, 2]

    @property
    def celery_configs(self) -> list[celery_bench.CeleryConfig]:
        return CELERY_CONFIGS[:1] if self.quick else CELERY_CONFIGS

    @property
    def large_queue(self) -> int:
        return QUICK_LARGE_QUEUE if self.quick else LARGE_QUEUE


def parse_options() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, help=f"tasks per end-to-end run (default {DEFAULT_TASKS}, {QUICK_TASKS} with --quick)")
    parser.add_argument(
        "--quick", action="store_true",
        help=f"about 2 minutes: --workers 1 only, one Celery configuration, {QUICK_LARGE_QUEUE:,} instead of {LARGE_QUEUE:,} pending tasks",
    )
    parser.add_argument("--profile", type=Path, metavar="DIR", help="record py-spy profiles of the server into DIR")
    parser.add_argument("--no-docs", action="store_true", help=f"do not rewrite {DOCS_PATH.relative_to(REPO)}")
    arguments = parser.parse_args()
    tasks = arguments.tasks or (QUICK_TASKS if arguments.quick else DEFAULT_TASKS)
    if tasks < 1:
        parser.error(f"--tasks must be at least 1, got {tasks}")
    command = shlex.join([".venv/bin/python", "bench/compare.py", *sys.argv[1:]])
    return Options(tasks, arguments.quick, arguments.profile, not arguments.no_docs, command)


def progress(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def mib(size_bytes: int) -> str:
    return f"{size_bytes / MIB:.0f} MiB"


# Sections

def run_celery(options: Options, directory: Path) -> tuple[Row, float]:
    progress(f"Redis: {ensure_redis()}")
    runs = []
    for config in options.celery_configs:
        progress(f"Celery {config.describe()}: {options.tasks} tasks")
        run = celery_bench.run_end_to_end(config, options.tasks, directory, RUN_TIMEOUT_SECONDS)
        progress(f"  {run.rate:.0f} tasks/s" + (f", error: {run.error}" if run.error else ""))
        runs.append(run)
    best = max(runs, key=lambda run: (run.error is None, run.rate))
    tried = "; ".join(f"{run.config.describe()}: {run.rate:.0f}/s" for run in runs)
    row = Row(
        "end-to-end rate", f"Celery {metadata.version('celery')}, group().apply_async() + get()", "Redis broker and backend",
        f"best: `{best.config.describe()}` (tried {tried})",
        _rate_text(best.collected, best.tasks, best.seconds, best.error, best.cpu_seconds),
        f"{mib(best.rss_bytes)} (worker)",
    )
    return row, best.rate if best.error is None else 0.0


def run_rainchanel(options: Options, database: str, batched: bool, directory: Path) -> tuple[Row, float]:
    runs = {}
    for workers in options.server_workers:
        label = f"{database}, {'batched' if batched else 'one-at-a-time'}, serve --workers {workers}"
        progress(f"RainChanel {label}: {options.tasks} tasks")
        run_directory = Path(tempfile.mkdtemp(prefix=f"{database}-{workers}-", dir=directory))
        server = start_server(database, workers, run_directory)
        profile_name = f"e2e-{database}-{'batched' if batched else 'one'}-w{workers}"
        profile_dir = options.profile_dir if database == "mariadb" else None
        try:
            with profiling.record(profile_dir, profile_name, server.process.pid):
                run = rainchanel_load.run_end_to_end(server, batched, options.tasks, run_directory, RUN_TIMEOUT_SECONDS)
        finally:
            stop_child(server.process)
        progress(f"  {run.rate:.0f} tasks/s" + (f", errors: {run.errors}" if run.errors else ""))
        runs[workers] = run
    best_workers, best = max(runs.items(), key=lambda item: (not item[1].errors, item[1].rate))
    tried = ", ".join(f"{workers}: {run.rate:.0f}/s" for workers, run in runs.items())
    if batched:
        system = f"RainChanel (b) batched: chunks of {rainchanel_load.PUBLISH_CHUNK} by module reference, GET /results?max=100&wait=5"
    else:
        system = (
            f"RainChanel (a) one-at-a-time: {rainchanel_load.ONE_AT_A_TIME_PUBLISHERS} publishers of single POST /tasks "
            "(module inline), single GET /results"
        )
    row = Row(
        "end-to-end rate", system, "SQLite" if database == "sqlite" else "MariaDB",
        f"best: `serve --workers {best_workers}` (--workers {tried}); worker: {best.worker}",
        _rate_text(best.collected, best.tasks, best.seconds, "; ".join(best.errors) or None, best.cpu_seconds),
        mib(best.rss_bytes),
    )
    return row, 0.0 if best.errors else best.rate


def _rate_text(collected: int, tasks: int, seconds: float, error: str | None, cpu_seconds: dict[str, float] | None) -> str:
    if seconds <= 0:
        return f"no run; ERROR: {error}"
    text = f"**{collected / seconds:.0f} tasks/s** ({collected}/{tasks} in {seconds:.1f} s)"
    if cpu_seconds and collected:
        shares = ", ".join(f"{label} {used * 1000 / collected:.1f}" for label, used in cpu_seconds.items())
        text += f"; CPU ms per task: {shares}"
    return f"{text}; ERROR: {error}" if error else text


@dataclass
class LatencyFigures:
    claim_small_p50: float = 0.0
    claim_large_p50: float = 0.0
    # Wake-up p50 in ms by the number of server processes.
    wake_up_p50: dict[int, float] = field(default_factory=dict)


def run_latency(options: Options, directory: Path, figures: LatencyFigures) -> list[Row]:
    """Measure wake-up on an empty queue, then claim latency at the small and the large queue (MariaDB)."""
    rows = []
    for workers in options.server_workers:
        run_directory = Path(tempfile.mkdtemp(prefix=f"latency-{workers}-", dir=directory))
        server = start_server("mariadb", workers, run_directory)
        try:
            accounts = rainchanel_load.create_accounts(server)
            reference = rainchanel_load.upload_module(server, accounts.user_token)
            progress(f"wake-up, serve --workers {workers}: {WAKE_UP_TRIALS} trials")
            wake_ups = rainchanel_load.measure_wake_up(server, accounts, reference, WAKE_UP_TRIALS)
            p50 = rainchanel_load.percentile(wake_ups, 0.5)
            figures.wake_up_p50[workers] = p50
            rows.append(Row(
                "long-poll wake-up: publish response -> claim response", "RainChanel, idle GET /tasks?wait=20", "MariaDB",
                f"`serve --workers {workers}`, {WAKE_UP_TRIALS} trials, empty queue",
                f"**p50 {p50:.1f} ms**, p90 {rainchanel_load.percentile(wake_ups, 0.9):.1f} ms, max {max(wake_ups):.1f} ms",
                mib(tree_rss_bytes(server.process.pid)),
            ))
            if workers == 1:
                rows += _claim_rows(options, server, accounts, reference.removeprefix("sha256:"), figures)
        finally:
            stop_child(server.process)
    return rows


def _claim_rows(options, server, accounts, sha256: str, figures: LatencyFigures) -> list[Row]:
    rows = []
    filled = 0
    # The wake-up trials left processing tasks; the fill adds pending ones.
    for size in (SMALL_QUEUE, options.large_queue):
        progress(f"filling MariaDB to {size:,} pending tasks")
        fill_seconds = rainchanel_load.fill_pending_tasks(accounts.user_id, sha256, filled + 1, size - filled)
        filled = size
        progress(f"  {fill_seconds:.1f} s; timing {CLAIM_SAMPLES} claims")
        profile_dir = options.profile_dir if size == options.large_queue else None
        with profiling.record(profile_dir, f"claims-{size}", server.process.pid):
            p50, p99 = rainchanel_load.measure_claims(server, accounts.worker_token, CLAIM_SAMPLES)
        if size == SMALL_QUEUE:
            figures.claim_small_p50 = p50
        else:
            figures.claim_large_p50 = p50
        rows.append(Row(
            f"claim latency, single GET /tasks over HTTP", "RainChanel", "MariaDB",
            f"`serve --workers 1`, {size:,} pending (filled by SQL in {fill_seconds:.0f} s), {CLAIM_SAMPLES} claims in a row",
            f"**p50 {p50:.2f} ms**, p99 {p99:.2f} ms", mib(tree_rss_bytes(server.process.pid)),
        ))
        # Claimed tasks stay processing, so the next fill keeps the count of pending tasks near the target.
        filled -= CLAIM_SAMPLES
    return rows


# Report

def machine_lines(options: Options) -> list[str]:
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return [
        f"- Machine: {os.cpu_count()} CPUs (nproc), {cpu_model}, {psutil.virtual_memory().total / 1024**3:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}; the machine is shared, so other load may affect figures.",
        f"- Versions: {version_text()}",
        f"- Command: `{options.command}` ({options.tasks} tasks per end-to-end run)",
    ]


def version_text() -> str:
    packages = ["rainchanel", "celery", "kombu", "redis", "uvicorn", "fastapi", "sqlalchemy", "asyncmy", "aiosqlite", "wasmtime", "httpx"]
    parts = [f"Python {platform.python_version()}"]
    parts += [f"{name} {metadata.version(name)}" for name in packages]
    parts.append(f"SQLite {sqlite3.sqlite_version}")
    connection = mariadb_connect(database=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            parts.append(f"MariaDB {cursor.fetchone()[0]}")
    finally:
        connection.close()
    import redis

    parts.append(f"Redis server {redis.Redis(host='127.0.0.1', port=6379).info('server')['redis_version']}")
    parts.append(f"git {git_revision()}")
    return ", ".join(parts)


def git_revision() -> str:
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    count = len(changed.splitlines())
    return f"{revision} plus {count} uncommitted paths" if count else revision


def table_lines(rows: list[Row]) -> list[str]:
    lines = [
        "| measurement | system | database | configuration | result | server RSS at the end |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [row.measurement, row.system, row.database, row.configuration, row.result, row.memory]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return lines


def target_lines(celery_rate: float, rates: dict[str, float], figures: LatencyFigures, large_queue: int) -> list[str]:
    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    lines = []
    for key, factor in (("batched", BATCHED_OVER_CELERY), ("one", ONE_AT_A_TIME_OVER_CELERY)):
        rate = rates.get(key, 0.0)
        ratio = rate / celery_rate if celery_rate else 0.0
        name = "batched (b)" if key == "batched" else "one-at-a-time (a)"
        lines.append(
            f"- {name} on MariaDB >= {factor:g}x Celery: {rate:.0f} / {celery_rate:.0f} tasks/s = {ratio:.2f}x, "
            f"{verdict(ratio >= factor)}"
        )
    growth = figures.claim_large_p50 / figures.claim_small_p50 if figures.claim_small_p50 else 0.0
    lines.append(
        f"- claim p50 at {large_queue:,} pending <= {CLAIM_GROWTH_LIMIT:g}x its value at {SMALL_QUEUE:,}: "
        f"{figures.claim_large_p50:.2f} / {figures.claim_small_p50:.2f} ms = {growth:.2f}x, "
        f"{verdict(0 < growth <= CLAIM_GROWTH_LIMIT)}"
        + ("" if large_queue == LARGE_QUEUE else f" (NOTE: --quick uses {large_queue:,}, not {LARGE_QUEUE:,})")
    )
    for workers, p50 in sorted(figures.wake_up_p50.items()):
        lines.append(
            f"- long-poll wake-up p50 <= {WAKE_UP_LIMIT_MS:g} ms (serve --workers {workers}): {p50:.1f} ms, "
            f"{verdict(p50 <= WAKE_UP_LIMIT_MS)}"
        )
    return lines


METHOD_NOTES = """\
How each figure is measured:

- End-to-end rate: the clock starts at the first publish and stops when the collector holds every result; each result
  is checked against a+b. Servers, workers and accounts are ready and have run 20 (RainChanel) or 50 (Celery) warm-up
  tasks before the clock starts. The task is add(i, 1): examples/add.wasm for RainChanel, a Python function for Celery.
  Each RainChanel run starts a fresh `rainchanel serve` (LOG_LEVEL=warning) on a new SQLite file or on a recreated
  MariaDB database; the one-at-a-time collector sleeps 10 ms after a 404 from GET /results. The publishers and
  collectors run in the benchmark process on the same 2 CPUs as the servers and workers.
- Claim latency: pending tasks are inserted with SQL (INSERT ... SELECT from MariaDB's seq_A_to_B tables) and refer to
  one module stored with POST /modules; then single GET /tasks requests run one after another, timed at the client.
- Wake-up: a GET /tasks?wait=20 request waits 0.2 s on an empty queue, then a single POST /tasks publishes one task;
  the figure is the time from the publish's response to the claim's response, at the client. With
  `serve --workers 2` a publish handled by the other server process reaches the waiting request through the
  counters the processes share (rainchanel/server/waiting.py, watched every 5 ms).
- Server RSS: psutil's resident set size of `rainchanel serve` and all its child processes (Celery: the worker and its
  pool), at the end of the run shown.
"""


def write_docs(options: Options, report_lines: list[str]) -> None:
    DOCS_PATH.parent.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [
        "# Benchmarks",
        "",
        "RainChanel next to Celery 5 on one machine, written by `bench/compare.py`; the file is replaced on every run.",
        "Run it with `.venv/bin/python bench/compare.py` after `.venv/bin/pip install -e '.[bench]'`; the script's docstring"
        " lists the services it needs.",
        "",
        f"## Last run: {date}",
        "",
        *report_lines,
        "",
        METHOD_NOTES,
    ]
    DOCS_PATH.write_text("\n".join(text))


def main() -> int:
    options = parse_options()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rows: list[Row] = []
    rates: dict[str, float] = {}
    figures = LatencyFigures()
    try:
        with tempfile.TemporaryDirectory(prefix="rc-compare-") as temporary:
            directory = Path(temporary)
            celery_row, celery_rate = run_celery(options, directory)
            rows.append(celery_row)
            for batched in (False, True):
                for database in ("sqlite", "mariadb"):
                    row, rate = run_rainchanel(options, database, batched, directory)
                    rows.append(row)
                    if database == "mariadb":
                        rates["batched" if batched else "one"] = rate
            rows += run_latency(options, directory, figures)
    finally:
        stop_all()
        drop_mariadb_database()

    report = [
        *machine_lines(options),
        "",
        *table_lines(rows),
        "",
        "Targets (MariaDB):",
        "",
        *target_lines(celery_rate, rates, figures, options.large_queue),
    ]
    print("\n".join(report))
    if options.write_docs:
        write_docs(options, report)
        progress(f"wrote {DOCS_PATH}")
    if options.profile_dir:
        for raw_path in sorted(options.profile_dir.glob("*.txt")):
            print()
            print(profiling.summarise(raw_path))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()

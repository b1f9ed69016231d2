"""Subprocesses and services of the comparison benchmark.

Every child starts in its own session, so stopping it signals its process
group (the uvicorn parent and its server processes, the Celery parent and
its pool) by the child's id. Children are tracked in CHILDREN and stopped by
stop_all(), which compare.py calls on exit, on error and on SIGTERM.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"

MARIADB_HOST = "127.0.0.1"
MARIADB_PORT = 3306
MARIADB_USER = "root"
MARIADB_DATABASE = "rc_bench"

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_START_COMMAND = [
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(REDIS_PORT),
    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
]

STOP_GRACE_SECONDS = 10.0
SERVER_START_TIMEOUT_SECONDS = 60.0

CHILDREN: list[subprocess.Popen] = []


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_child(command: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start a tracked child in its own session, with stdout and stderr in log_path."""
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    CHILDREN.append(process)
    return process


def stop_child(process: subprocess.Popen) -> None:
    """Send SIGTERM to the child's process group, then SIGKILL if it outlives the grace period."""
    if process in CHILDREN:
        CHILDREN.remove(process)
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=STOP_GRACE_SECONDS)
    # Pool processes of a parent that died first still carry its group id.
    _signal_group(process, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def stop_all() -> None:
    """Stop every child that is still tracked, newest first."""
    for process in reversed(list(CHILDREN)):
        stop_child(process)


def tree_rss_bytes(pid: int) -> int:
    """Return the resident set size of a process and all its descendants, in bytes."""
    return _sum_over_tree(pid, lambda process: process.memory_info().rss)


def tree_cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU seconds used so far by a process and its living descendants."""

    def cpu_seconds(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    return _sum_over_tree(pid, cpu_seconds)


def _sum_over_tree(pid: int, measure) -> float:
    """Return the sum of measure(process) over a process and its descendants, skipping those that exited."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += measure(process)
        except psutil.NoSuchProcess:
            pass
    return total


def service_cpu_seconds(name: str) -> float:
    """Return the CPU seconds used so far by every process named name (mariadbd, redis-server)."""
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["name"] == name and process.info["cpu_times"] is not None:
            total += process.info["cpu_times"].user + process.info["cpu_times"].system
    return total


@dataclass
class CpuMeter:
    """CPU seconds used between start() and stop() by tracked process trees and services."""

    pids: dict[str, int]
    services: tuple[str, ...] = ()

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        return {label: after[label] - self._before.get(label, 0.0) for label in after}

    def _read(self) -> dict[str, float]:
        readings = {label: tree_cpu_seconds(pid) for label, pid in self.pids.items()}
        readings.update({name: service_cpu_seconds(name) for name in self.services})
        readings["benchmark client"] = sum(os.times()[:2])
        return readings


# RainChanel

@dataclass
class Server:
    """A running `rainchanel serve` child."""

    process: subprocess.Popen
    url: str
    workers: int
    log_path: Path
    database: str


def mariadb_url() -> str:
    return f"mysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{MARIADB_DATABASE}"


def mariadb_connect(database: str | None = MARIADB_DATABASE):
    import pymysql

    return pymysql.connect(
        host=MARIADB_HOST, port=MARIADB_PORT, user=MARIADB_USER, password="", database=database, autocommit=True,
    )


def recreate_mariadb_database() -> None:
    """Drop and create the benchmark's own database, so every run starts empty."""
    connection = mariadb_connect(database=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{MARIADB_DATABASE}`")
            cursor.execute(f"CREATE DATABASE `{MARIADB_DATABASE}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        connection.close()


def drop_mariadb_database() -> None:
    connection = mariadb_connect(database=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{MARIADB_DATABASE}`")
    finally:
        connection.close()


def base_env() -> dict[str, str]:
    """Return the environment shared by RainChanel children: quiet logs and a fixed JWT secret."""
    env = dict(os.environ)
    for name in ("DATABASE_URL", "DB_HOST", "SERVER_WORKERS", "RAINCHANEL_SERVER_SETTINGS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    env.update(JWT_SECRET="rc-bench-" + "x" * 40, LOG_LEVEL="warning", LOG_FORMAT="json")
    return env


def start_server(database: str, workers: int, directory: Path) -> Server:
    """Start `rainchanel serve` on a free port of 127.0.0.1 and wait for GET /ping.

    database is "sqlite" (a file in directory) or "mariadb" (rc_bench, recreated here).
    """
    env = base_env()
    if database == "mariadb":
        recreate_mariadb_database()
        env["DATABASE_URL"] = mariadb_url()
    else:
        env["DATABASE_URL"] = f"sqlite:///{directory / 'rainchanel.db'}"
    port = free_port()
    log_path = directory / f"server-{database}-{workers}.log"
    command = [
        sys.executable, "-m", "rainchanel.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers),
    ]
    process = start_child(command, env, log_path, cwd=directory)
    server = Server(process, f"http://127.0.0.1:{port}", workers, log_path, database)
    _wait_for_ping(server)
    return server


def _wait_for_ping(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    with httpx.Client(base_url=server.url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"rainchanel serve exited with status {server.process.returncode} during start-up; "
                    f"see {server.log_path}"
                )
            try:
                if client.get("/ping").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"rainchanel serve did not respond to GET /ping within {SERVER_START_TIMEOUT_SECONDS:.0f} s")


def start_worker(server: Server, username: str, password: str, legacy: bool, directory: Path) -> tuple[subprocess.Popen, str]:
    """Start a worker child and return it with a description of what runs.

    legacy=False runs the reference `rainchanel worker` with its defaults;
    legacy=True runs it with --legacy-routes, which uses only the original
    single-task routes.
    """
    env = base_env()
    env.update(RAINCHANEL_SERVER=server.url, RAINCHANEL_USERNAME=username, RAINCHANEL_PASSWORD=password)
    command = [sys.executable, "-m", "rainchanel.cli", "worker"]
    description = "rainchanel worker (defaults)"
    if legacy:
        command.append("--legacy-routes")
        description = "rainchanel worker --legacy-routes"
    log_path = directory / f"worker-{'legacy' if legacy else 'default'}.log"
    return start_child(command, env, log_path), description


# Redis and Celery

def ensure_redis() -> str:
    """Return how Redis was found ("running" or "started"); start it when it does not respond to PING."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2)
    try:
        client.ping()
        return "running"
    except redis.ConnectionError:
        subprocess.run(REDIS_START_COMMAND, check=True, timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            return "started"
        except redis.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError(f"Redis does not respond on {REDIS_HOST}:{REDIS_PORT} after: {' '.join(REDIS_START_COMMAND)}")

"""The RainChanel side of bench/compare.py: end-to-end runs, claim latency and long-poll wake-up.

All traffic goes to a server started by processes.start_server on 127.0.0.1.
"""

import base64
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from processes import REPO, CpuMeter, Server, mariadb_connect, start_worker, stop_child, tree_rss_bytes

ADD_MODULE = REPO / "examples" / "add.wasm"
USER = ("bench-user", "bench-password-1")
WORKER = ("bench-worker", "bench-password-2")

ONE_AT_A_TIME_PUBLISHERS = 4
# Seconds a one-at-a-time collector sleeps after GET /results returns 404.
RESULT_POLL_SECONDS = 0.01
PUBLISH_CHUNK = 500
DELIVERY_BATCH = 100
DELIVERY_WAIT_SECONDS = 5
WARM_UP_TASKS = 20
REQUEST_TIMEOUT_SECONDS = 60.0

CLAIM_WAIT_SECONDS = 20
# Time for a waiting GET /tasks to reach the server before the publish.
WAITER_SETTLE_SECONDS = 0.2
FILL_CHUNK_ROWS = 100_000


@dataclass
class Accounts:
    user_token: str
    user_id: int
    worker_token: str


@dataclass
class EndToEndRun:
    mode: str
    tasks: int
    seconds: float
    collected: int
    rss_bytes: int
    worker: str
    errors: list[str] = field(default_factory=list)
    # CPU seconds of the timed part by process: server, worker, database, benchmark client.
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.collected / self.seconds if self.seconds > 0 else 0.0


def create_accounts(server: Server) -> Accounts:
    """Register the publishing user and the worker account and log both in."""
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        tokens = {}
        for username, password in (USER, WORKER):
            client.post("/register", json={"username": username, "password": password}).raise_for_status()
            response = client.post("/login", json={"username": username, "password": password})
            response.raise_for_status()
            tokens[username] = response.json()["data"]
    user = tokens[USER[0]]
    return Accounts(user["token"], user["user_id"], tokens[WORKER[0]]["token"])


def api_client(server: Server, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=REQUEST_TIMEOUT_SECONDS,
    )


def upload_module(server: Server, token: str) -> str:
    """Store add.wasm with POST /modules and return its "sha256:<hex>" reference."""
    with api_client(server, token) as client:
        response = client.post("/modules", content=ADD_MODULE.read_bytes(), headers={"Content-Type": "application/wasm"})
        response.raise_for_status()
        return response.json()["data"]["module"]


# End to end

class Pipeline:
    """Publishers and a collector of one end-to-end run, sharing the expected results."""

    def __init__(self, server: Server, accounts: Accounts, batched: bool, module_reference: str | None) -> None:
        self.server = server
        self.accounts = accounts
        self.batched = batched
        self.module_reference = module_reference
        self.inline_module = base64.b64encode(ADD_MODULE.read_bytes()).decode("ascii")
        self.expected: dict[int, int] = {}
        self.results: dict[int, dict] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def run(self, first: int, count: int, timeout_seconds: float) -> float:
        """Publish tasks add(first..first+count-1, 1), collect every result and return the seconds taken."""
        target = len(self.results) + count
        numbers = list(range(first, first + count))
        if self.batched:
            groups = [numbers]
        else:
            groups = [numbers[index::ONE_AT_A_TIME_PUBLISHERS] for index in range(ONE_AT_A_TIME_PUBLISHERS)]
        publish = self._publish_chunks if self.batched else self._publish_one_at_a_time
        threads = [threading.Thread(target=self._guard, args=(publish, group)) for group in groups]
        collect = self._collect_batches if self.batched else self._collect_one_at_a_time
        threads.append(threading.Thread(target=self._guard, args=(collect, target)))

        started = time.perf_counter()
        for thread in threads:
            thread.start()
        threads[-1].join(timeout_seconds)
        seconds = time.perf_counter() - started
        if threads[-1].is_alive():
            self.errors.append(f"timed out after {timeout_seconds:.0f} s with {len(self.results)}/{target} results")
        self.stop.set()
        for thread in threads:
            thread.join()
        self.stop.clear()
        return seconds

    def check_results(self) -> None:
        """Record an error for every result that is missing, failed or wrong."""
        wrong = 0
        for task_id, expected in self.expected.items():
            view = self.results.get(task_id)
            if view is None or view["status"] != "completed" or view["result"] not in (expected, [expected]):
                wrong += 1
        if wrong:
            self.errors.append(f"{wrong} of {len(self.expected)} results missing or wrong")

    def _guard(self, function, argument) -> None:
        try:
            function(argument)
        except Exception as exc:  # shown in the table instead of a traceback per thread
            self.errors.append(f"{function.__name__}: {type(exc).__name__}: {exc}")
            self.stop.set()

    def _publish_one_at_a_time(self, numbers: list[int]) -> None:
        with api_client(self.server, self.accounts.user_token) as client:
            for number in numbers:
                if self.stop.is_set():
                    return
                task = {"wasm_module": self.inline_module, "func": "add", "args": [number, 1]}
                response = client.post("/tasks", json={"task": task})
                response.raise_for_status()
                with self._lock:
                    self.expected[response.json()["data"]["task_id"]] = number + 1

    def _publish_chunks(self, numbers: list[int]) -> None:
        with api_client(self.server, self.accounts.user_token) as client:
            for start in range(0, len(numbers), PUBLISH_CHUNK):
                if self.stop.is_set():
                    return
                chunk = numbers[start : start + PUBLISH_CHUNK]
                tasks = [{"module": self.module_reference, "func": "add", "args": [number, 1]} for number in chunk]
                response = client.post("/tasks", json={"tasks": tasks})
                response.raise_for_status()
                with self._lock:
                    for task_id, number in zip(response.json()["data"]["task_ids"], chunk):
                        self.expected[task_id] = number + 1

    def _collect_one_at_a_time(self, target: int) -> None:
        with api_client(self.server, self.accounts.user_token) as client:
            while len(self.results) < target and not self.stop.is_set():
                response = client.get("/results")
                if response.status_code == 404:
                    time.sleep(RESULT_POLL_SECONDS)
                    continue
                response.raise_for_status()
                view = response.json()["data"]["result"]
                self.results[view["task_id"]] = view

    def _collect_batches(self, target: int) -> None:
        params = {"max": DELIVERY_BATCH, "wait": DELIVERY_WAIT_SECONDS}
        with api_client(self.server, self.accounts.user_token) as client:
            while len(self.results) < target and not self.stop.is_set():
                response = client.get("/results", params=params)
                if response.status_code == 404:
                    continue
                response.raise_for_status()
                for view in response.json()["data"]["results"]:
                    self.results[view["task_id"]] = view


def run_end_to_end(server: Server, batched: bool, task_count: int, directory: Path, timeout_seconds: float) -> EndToEndRun:
    """Run one end-to-end measurement on a fresh server: warm up, then time task_count tasks.

    batched=False: single POST /tasks with the module inline from several
    publishers, the one-at-a-time worker, single GET /results. batched=True:
    POST /tasks with {"tasks": [...]} by module reference, the reference
    worker with its defaults, GET /results?max=100&wait=5.
    """
    accounts = create_accounts(server)
    module_reference = upload_module(server, accounts.user_token) if batched else None
    worker, worker_description = start_worker(server, WORKER[0], WORKER[1], legacy=not batched, directory=directory)
    try:
        pipeline = Pipeline(server, accounts, batched, module_reference)
        pipeline.run(first=0, count=WARM_UP_TASKS, timeout_seconds=timeout_seconds)
        if pipeline.errors:
            return EndToEndRun("batched" if batched else "one", task_count, 0.0, 0, 0, worker_description, pipeline.errors)
        warm_results = len(pipeline.results)

        # SQLite runs inside the server process; MariaDB is a service of its own.
        services = () if server.database == "sqlite" else ("mariadbd",)
        meter = CpuMeter({"server": server.process.pid, "worker": worker.pid}, services)
        meter.start()
        seconds = pipeline.run(first=WARM_UP_TASKS, count=task_count, timeout_seconds=timeout_seconds)
        cpu_seconds = meter.stop()
        pipeline.check_results()
        if worker.poll() is not None:
            pipeline.errors.append(f"the worker exited with status {worker.returncode}")
        return EndToEndRun(
            "batched" if batched else "one", task_count, seconds, len(pipeline.results) - warm_results,
            tree_rss_bytes(server.process.pid), worker_description, pipeline.errors, cpu_seconds,
        )
    finally:
        stop_child(worker)


# Claim latency and wake-up

def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure_claims(server: Server, worker_token: str, count: int) -> tuple[float, float]:
    """Time count single GET /tasks claims in a row; return p50 and p99 in milliseconds."""
    latencies = []
    with api_client(server, worker_token) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.get("/tasks")
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return statistics.median(latencies), percentile(latencies, 0.99)


def fill_pending_tasks(owner_id: int, module_sha256: str, first: int, count: int) -> float:
    """Insert count pending add tasks straight into MariaDB's tasks table; return the seconds taken.

    The rows look like published ones: one stored module, status pending,
    available since one second ago. MariaDB's SEQUENCE engine tables
    (seq_A_to_B) number the rows.
    """
    started = time.perf_counter()
    connection = mariadb_connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) - 1000000")
            (available_at,) = cursor.fetchone()
            for low in range(first, first + count, FILL_CHUNK_ROWS):
                high = min(low + FILL_CHUNK_ROWS, first + count) - 1
                cursor.execute(
                    "INSERT INTO tasks (owner_id, module_sha256, func, args, status, priority, attempts,"
                    " max_attempts, timeout_seconds, available_at, created_at, updated_at)"
                    f" SELECT %s, %s, 'add', CONCAT('[', seq, ',1]'), 'pending', 0, 0, 4, 300, %s, %s, %s"
                    f" FROM seq_{low}_to_{high}",
                    (owner_id, module_sha256, available_at, available_at, available_at),
                )
            cursor.execute("ANALYZE TABLE tasks")
            cursor.fetchall()
    finally:
        connection.close()
    return time.perf_counter() - started


def measure_wake_up(server: Server, accounts: Accounts, module_reference: str, trials: int) -> list[float]:
    """Return, per trial, the ms from a publish's response to the response of a GET /tasks?wait=20 already waiting.

    The queue must be empty. A negative value means the claim's response
    arrived before the publish's own response.
    """
    latencies = []
    task = {"module": module_reference, "func": "add", "args": [1, 1]}
    with api_client(server, accounts.user_token) as publisher, api_client(server, accounts.worker_token) as waiter:
        for _ in range(trials):
            claimed_at: list[float] = []
            errors: list[str] = []

            def wait_for_task() -> None:
                response = waiter.get("/tasks", params={"wait": CLAIM_WAIT_SECONDS})
                claimed_at.append(time.perf_counter())
                if response.status_code != 200:
                    errors.append(f"GET /tasks?wait returned HTTP {response.status_code}")

            thread = threading.Thread(target=wait_for_task)
            thread.start()
            time.sleep(WAITER_SETTLE_SECONDS)
            publisher.post("/tasks", json={"task": task}).raise_for_status()
            published_at = time.perf_counter()
            thread.join()
            if errors:
                raise RuntimeError(errors[0])
            latencies.append((claimed_at[0] - published_at) * 1000)
    return latencies

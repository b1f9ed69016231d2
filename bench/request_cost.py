"""Measure the server's cost per request, one request type at a time.

Starts `rainchanel serve` on MariaDB (the database rc_bench, dropped and
recreated, so runs must not overlap) or on an SQLite file with --sqlite. Then
it sends sequential requests of each kind and prints wall time and server CPU
per request, where a batch of 100 counts as one request. CPU times come from the
kernel's counters, which tick every 10 ms, so the batch rows need a few
thousand --requests to be precise.
Usage: .venv/bin/python bench/request_cost.py [--requests N] [--sqlite]
"""

import argparse
import base64
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import processes  # noqa: E402
from rainchanel_load import ADD_MODULE, api_client, create_accounts, upload_module  # noqa: E402


def measure(server, label: str, count: int, send) -> tuple[str, float, float, float]:
    """Run send() count times; return wall ms, server CPU ms and database CPU ms per request."""
    server_cpu = processes.tree_cpu_seconds(server.process.pid)
    database_cpu = processes.service_cpu_seconds("mariadbd")
    started = time.perf_counter()
    for index in range(count):
        send(index)
    wall = time.perf_counter() - started
    server_cpu = processes.tree_cpu_seconds(server.process.pid) - server_cpu
    database_cpu = processes.service_cpu_seconds("mariadbd") - database_cpu
    return label, wall / count * 1000, server_cpu / count * 1000, database_cpu / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests of each kind (default 300)")
    parser.add_argument("--sqlite", action="store_true", help="use an SQLite file instead of MariaDB")
    options = parser.parse_args()
    count = options.requests

    directory = Path(tempfile.mkdtemp(prefix="rainchanel-cost-"))
    if not options.sqlite:
        processes.recreate_mariadb_database()
    database = "sqlite" if options.sqlite else "mariadb"
    server = processes.start_server(database, 1, directory)
    try:
        accounts = create_accounts(server)
        reference = upload_module(server, accounts.user_token)
        inline = base64.b64encode(ADD_MODULE.read_bytes()).decode()
        owner = api_client(server, accounts.user_token)
        worker = api_client(server, accounts.worker_token)
        leases: list[dict] = []
        rows = []

        rows.append(measure(server, "GET /ping", count, lambda i: owner.get("/ping")))
        rows.append(measure(server, "GET /results (empty, 404)", count, lambda i: owner.get("/results")))
        rows.append(
            measure(
                server,
                "POST /tasks (one, inline module)",
                count,
                lambda i: owner.post("/tasks", json={"task": {"wasm_module": inline, "func": "add", "args": [i, 1]}}),
            )
        )
        rows.append(
            measure(server, "GET /tasks (one claim)", count, lambda i: leases.append(worker.get("/tasks").json()["data"]["task"]))
        )
        rows.append(
            measure(
                server,
                "POST /results (one)",
                count,
                lambda i: worker.post(
                    "/results", json={"task_id": leases[i]["id"], "result": i + 1, "lease_token": leases[i]["lease_token"]}
                ),
            )
        )
        rows.append(measure(server, "GET /results (one)", count, lambda i: owner.get("/results")))

        batches = max(1, count // 100)
        drafts = [{"module": reference, "func": "add", "args": [i, 1]} for i in range(100)]
        rows.append(measure(server, "POST /tasks (100 by reference)", batches, lambda i: owner.post("/tasks", json={"tasks": drafts})))
        claimed: list[list[dict]] = []
        rows.append(
            measure(
                server,
                "GET /tasks?max=100",
                batches,
                lambda i: claimed.append(worker.get("/tasks?max=100&inline_module=false").json()["data"]["tasks"]),
            )
        )
        rows.append(
            measure(
                server,
                "POST /results (list of 100)",
                batches,
                lambda i: worker.post(
                    "/results",
                    json=[{"task_id": t["id"], "result": 1, "lease_token": t["lease_token"]} for t in claimed[i]],
                ),
            )
        )
        rows.append(measure(server, "GET /results?max=100", batches, lambda i: owner.get("/results?max=100")))
    finally:
        processes.stop_all()
        if not options.sqlite:
            processes.drop_mariadb_database()
        shutil.rmtree(directory, ignore_errors=True)

    batches = max(1, count // 100)
    print(f"database: {database}, {count} single requests and {batches} batch{'es' if batches > 1 else ''} of 100 per row; figures per request")
    if options.sqlite:
        # SQLite runs inside the server process, so its CPU is in the server column.
        print("| request | wall ms | server CPU ms |")
        print("|---|---|---|")
        for label, wall, server_cpu, _database_cpu in rows:
            print(f"| {label} | {wall:.2f} | {server_cpu:.2f} |")
        return 0
    print("| request | wall ms | server CPU ms | mariadbd CPU ms |")
    print("|---|---|---|---|")
    for label, wall, server_cpu, database_cpu in rows:
        print(f"| {label} | {wall:.2f} | {server_cpu:.2f} | {database_cpu:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

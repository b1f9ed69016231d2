"""Small HTTP helpers shared by the server tests."""

import base64
from pathlib import Path

import httpx
from sqlalchemy import select

from rainchanel.store.tables import tasks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def module_base64(name: str) -> str:
    return base64.b64encode((EXAMPLES / name).read_bytes()).decode()


async def register_and_login(client: httpx.AsyncClient, username: str, password: str = "secret-password") -> dict:
    """Register a user and return its Authorization header and id."""
    response = await client.post("/register", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    response = await client.post("/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    return {"headers": {"Authorization": f"Bearer {data['token']}"}, "user_id": data["user_id"]}


async def publish(client, owner, func="add", args=(2, 3), module="add.wasm", **fields) -> int:
    task = {"wasm_module": module_base64(module), "func": func, "args": list(args), **fields}
    response = await client.post("/tasks", json={"task": task}, headers=owner["headers"])
    assert response.status_code == 200, response.text
    return response.json()["data"]["task_id"]


async def claim(client, worker) -> dict | None:
    response = await client.get("/tasks", headers=worker["headers"])
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["data"]["task"]


async def get_task(client, owner, task_id: int) -> dict:
    response = await client.get(f"/tasks/{task_id}", headers=owner["headers"])
    assert response.status_code == 200, response.text
    return response.json()["data"]["task"]


async def report_result(client, worker, task: dict, result=5) -> httpx.Response:
    report = {"task_id": task["id"], "result": result, "lease_token": task["lease_token"]}
    return await client.post("/results", json=report, headers=worker["headers"])


async def report_failure(client, worker, task: dict, error_msg="boom", **fields) -> httpx.Response:
    report = {"task_id": task["id"], "error_msg": error_msg, "lease_token": task["lease_token"], **fields}
    return await client.post("/failures", json=report, headers=worker["headers"])


async def deliver(client, owner) -> dict | None:
    """Deliver one result with GET /results, or return None when none is waiting."""
    response = await client.get("/results", headers=owner["headers"])
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]


async def task_row(services, task_id: int):
    """Read a task's row straight from the tasks table."""
    async with services.db.engine.connect() as connection:
        return (await connection.execute(select(tasks).where(tasks.c.id == task_id))).one()

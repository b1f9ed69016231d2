"""Start-up: the generated JWT secret is shared through the database, and
bad configuration stops `rainchanel serve` with one line."""

import os
import subprocess
import sys

from rainchanel.config import PUBLISHED_PLACEHOLDER_SECRET, load_settings
from rainchanel.server.app import create_app
from rainchanel.store.accounts import AccountStore
from rainchanel.server.auth import JWT_SECRET_SETTING

import httpx

from tests.server.api import register_and_login


async def start(app):
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    return lifespan, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_startup_generated_secret_shared_by_servers(database_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JWT_SECRET", raising=False)
    settings = load_settings(None, database={"url": database_url})
    first_lifespan, first = await start(create_app(settings))
    second_lifespan, second = await start(create_app(settings))
    try:
        user = await register_and_login(first, "alice")
        response = await second.get("/results", headers=user["headers"])
        secret, created = await AccountStore(first._transport.app.state.services.db).get_or_create_setting(
            JWT_SECRET_SETTING, "unused"
        )
    finally:
        for lifespan, client in ((first_lifespan, first), (second_lifespan, second)):
            await client.aclose()
            await lifespan.__aexit__(None, None, None)

    assert response.status_code == 404, "the second server accepts the first server's token"
    assert created is False
    assert len(secret.encode()) >= 32


def run_cli(*args, env_overrides, cwd):
    env = {key: value for key, value in os.environ.items() if key not in ("JWT_SECRET", "SERVER_PORT")}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-m", "rainchanel.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_startup_refuses_placeholder_secret(tmp_path):
    completed = run_cli("serve", env_overrides={"JWT_SECRET": PUBLISHED_PLACEHOLDER_SECRET}, cwd=tmp_path)

    assert completed.returncode != 0
    assert completed.stderr.count("\n") == 1
    assert "published placeholder" in completed.stderr
    assert "JWT_SECRET" in completed.stderr


def test_startup_bad_value_names_key(tmp_path):
    (tmp_path / "application.yaml").write_text("server:\n  port: 70000\n")

    completed = run_cli("serve", env_overrides={}, cwd=tmp_path)

    assert completed.returncode != 0
    assert completed.stderr.startswith("error: ")
    assert "server.port" in completed.stderr


def test_startup_migrate_creates_schema(tmp_path):
    completed = run_cli("migrate", env_overrides={}, cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "rainchanel.db").exists()

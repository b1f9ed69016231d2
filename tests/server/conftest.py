"""Fixtures for server tests: a real SQLite file or a real MariaDB database,
the application with its lifespan running, and registered users."""

import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy

from rainchanel.config import load_settings
from rainchanel.server.app import create_app
from tests.server.api import register_and_login

MARIADB_URL = os.environ.get("RAINCHANEL_TEST_MARIADB", "mysql+asyncmy://root@127.0.0.1:3306")
TEST_SECRET = "test-secret-" + "x" * 40
BACKENDS = ["sqlite", "mariadb"]


@pytest.fixture(scope="session")
def mariadb_server_url() -> str:
    """The MariaDB server; its absence fails the run instead of skipping tests."""
    engine = sqlalchemy.create_engine(MARIADB_URL.replace("+asyncmy", "+pymysql"), pool_pre_ping=True)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except Exception as exc:  # pragma: no cover - only when the service is down
        pytest.fail(f"MariaDB is not reachable at {MARIADB_URL}: {exc}; start it before running the tests")
    finally:
        engine.dispose()
    return MARIADB_URL


@pytest.fixture
def mariadb_database(mariadb_server_url) -> str:
    """A fresh, empty MariaDB database for one test, dropped afterwards."""
    name = "rc_test_" + uuid.uuid4().hex[:12]
    admin = sqlalchemy.create_engine(mariadb_server_url.replace("+asyncmy", "+pymysql"))
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    yield f"{mariadb_server_url}/{name}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'queue.db'}"
    return request.getfixturevalue("mariadb_database")


@pytest.fixture
def make_settings(database_url, monkeypatch, tmp_path):
    """Build settings for the test database; keyword arguments override sections."""
    monkeypatch.chdir(tmp_path)

    def factory(**sections):
        overrides = {"database": {"url": database_url}, "jwt": {"secret": TEST_SECRET}}
        for section, values in sections.items():
            overrides[section] = {**overrides.get(section, {}), **values}
        return load_settings(None, **overrides)

    return factory


@pytest.fixture
async def make_client(make_settings) -> AsyncIterator:
    """Start an application (lifespan included) and return an HTTP client for it."""
    started = []

    async def factory(**sections) -> httpx.AsyncClient:
        app = create_app(make_settings(**sections))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        started.append((lifespan, client))
        client.app = app
        return client

    yield factory
    for lifespan, client in reversed(started):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def client(make_client) -> httpx.AsyncClient:
    return await make_client()


@pytest.fixture
def services(client):
    return client.app.state.services


@pytest.fixture
async def owner(client) -> dict:
    return await register_and_login(client, "owner")


@pytest.fixture
async def worker(client) -> dict:
    return await register_and_login(client, "worker")



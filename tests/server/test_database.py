"""Transactions survive MariaDB deadlocks and connections the server dropped."""

import asyncio

import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.util import await_only

from rainchanel.store.database import Database
from rainchanel.store.migrate import upgrade_database
from tests.server.api import publish, register_and_login


@pytest.fixture
async def mariadb(mariadb_database):
    url = mariadb_database
    upgrade_database(url)
    db = Database(url, pool_size=4)

    def create_pair(connection):
        connection.execute(text("CREATE TABLE pair (id INT PRIMARY KEY, value INT) ENGINE=InnoDB"))
        connection.execute(text("INSERT INTO pair VALUES (1, 0), (2, 0)"))

    await db.run(create_pair)
    yield db
    await db.close()


async def test_database_deadlock_retried(mariadb):
    both_hold_first_lock = asyncio.Barrier(2)
    attempts = {"forward": 0, "backward": 0}

    def locking(name: str, first: int, second: int):
        def operation(connection):
            attempts[name] += 1
            connection.execute(text("UPDATE pair SET value = value + 1 WHERE id = :id"), {"id": first})
            if attempts[name] == 1:
                # Operations run in a greenlet, which waits on the event loop through await_only.
                await_only(both_hold_first_lock.wait())
            connection.execute(text("UPDATE pair SET value = value + 1 WHERE id = :id"), {"id": second})
            return name

        return operation

    finished = await asyncio.wait_for(
        asyncio.gather(mariadb.run(locking("forward", 1, 2)), mariadb.run(locking("backward", 2, 1))), timeout=60
    )

    async with mariadb.engine.connect() as connection:
        values = (await connection.execute(text("SELECT value FROM pair ORDER BY id"))).scalars().all()
    assert sorted(finished) == ["backward", "forward"]
    assert attempts["forward"] + attempts["backward"] == 3, "exactly one side was rolled back and run again"
    assert values == [2, 2], "each transaction's two updates committed once"


# SQLite has no server-side connections to drop.
@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
async def test_database_dropped_connections_replaced(make_client, database_url):
    client = await make_client()
    owner = await register_and_login(client, "owner")
    services = client.app.state.services
    database_name = database_url.rsplit("/", 1)[1]

    # Put two idle connections in the pool, then kill them from outside it.
    async with services.db.engine.connect() as first, services.db.engine.connect() as second:
        await first.execute(text("SELECT 1"))
        await second.execute(text("SELECT 1"))
    admin = sqlalchemy.create_engine(database_url.replace("+asyncmy", "+pymysql"))
    with admin.connect() as connection:
        ids = connection.execute(
            text("SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()"),
            {"db": database_name},
        ).scalars().all()
        for connection_id in ids:
            connection.execute(text(f"KILL {int(connection_id)}"))
    admin.dispose()

    task_id = await publish(client, owner)

    assert len(ids) >= 2, "the pool held idle connections to kill"
    assert task_id > 0

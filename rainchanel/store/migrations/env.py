"""Alembic environment: runs the migrations over the async engine."""

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from rainchanel.store.tables import metadata

MIGRATION_LOCK_NAME = "rainchanel_migrate"
MIGRATION_LOCK_TIMEOUT_SECONDS = 120


def _run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_locked(connection) -> None:
    # Several servers starting at once would otherwise race to create the
    # same tables; MySQL's named lock lets one migrate while the rest wait.
    is_mysql = connection.dialect.name in ("mysql", "mariadb")
    if is_mysql:
        connection.exec_driver_sql(f"SELECT GET_LOCK('{MIGRATION_LOCK_NAME}', {MIGRATION_LOCK_TIMEOUT_SECONDS})")
    try:
        _run_migrations(connection)
    finally:
        if is_mysql:
            connection.exec_driver_sql(f"SELECT RELEASE_LOCK('{MIGRATION_LOCK_NAME}')")


async def _run_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_locked)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_run_online())

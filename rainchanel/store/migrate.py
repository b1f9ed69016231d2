"""Apply the Alembic migrations that define the schema."""

import asyncio
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(database_url: str) -> None:
    """Bring the schema at database_url up to the newest revision."""
    _in_own_thread(lambda: command.upgrade(alembic_config(database_url), "head"))


def _in_own_thread(function) -> None:
    # The migration environment starts its own event loop, which cannot
    # run inside a thread that already has one (the server's lifespan).
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        function()
        return
    errors: list[BaseException] = []

    def target() -> None:
        try:
            function()
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="migrate")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]

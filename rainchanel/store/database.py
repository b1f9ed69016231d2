"""Engine set-up and transactions with retries, for SQLite and MySQL/MariaDB."""

import asyncio
from collections.abc import Callable
from typing import TypeVar

import structlog
from sqlalchemy import BigInteger, event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.util import greenlet_spawn

from rainchanel.errors import ServiceUnavailable

log = structlog.get_logger("rainchanel.store")

T = TypeVar("T")

# MySQL error codes a transaction can simply be run again after.
MYSQL_DEADLOCK = 1213
MYSQL_LOCK_WAIT_TIMEOUT = 1205
RETRYABLE_MYSQL_ERRORS = {MYSQL_DEADLOCK, MYSQL_LOCK_WAIT_TIMEOUT}
MAX_TRANSACTION_ATTEMPTS = 8
SQLITE_BUSY_TIMEOUT_MILLISECONDS = 30_000
# Execution option marking a connection that only reads.
READ_ONLY_OPTION = "rainchanel_read_only"


class now_us(FunctionElement):
    """The database clock as integer microseconds since the Unix epoch (UTC)."""

    type = BigInteger()
    inherit_cache = True


@compiles(now_us, "mysql")
def _now_us_mysql(element, compiler, **kw):
    # TIMESTAMPDIFF from a literal epoch does not depend on the session time zone.
    return "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))"


@compiles(now_us, "sqlite")
def _now_us_sqlite(element, compiler, **kw):
    return "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)"


class random_unit(FunctionElement):
    """A uniformly distributed float in [0, 1), drawn by the database per row."""

    inherit_cache = True


@compiles(random_unit, "mysql")
def _random_unit_mysql(element, compiler, **kw):
    return "RAND()"


@compiles(random_unit, "sqlite")
def _random_unit_sqlite(element, compiler, **kw):
    # random() is a signed 64-bit integer.
    return "(random() / 18446744073709551616.0 + 0.5)"


class Database:
    """An async engine plus the transaction discipline each backend needs."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.engine = _create_engine(url, pool_size)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        # SQLite allows one writer at a time; queueing writers of this process
        # here is cheaper than letting them spin on the busy timeout.
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None

    async def close(self) -> None:
        await self.engine.dispose()

    async def run(self, operation: Callable[[Connection], T]) -> T:
        """Run operation in a transaction, again after a deadlock or a dropped connection.

        operation is a plain function of a synchronous Connection. It runs
        inside one greenlet, where each statement waits on the async driver,
        so a transaction starts one greenlet instead of one per statement.
        """
        return await self._with_retries(operation, read_only=False)

    async def read(self, operation: Callable[[Connection], T]) -> T:
        """Run a read-only operation as run() does, again after a dropped connection.

        On SQLite the reads do not take the write lock.
        """
        return await self._with_retries(operation, read_only=True)

    async def _with_retries(self, operation: Callable[[Connection], T], read_only: bool) -> T:
        # A connection the database server dropped fails on first use; the
        # pool then discards every connection it holds, so the next attempt
        # gets a fresh one. This replaces a ping before every checkout.
        for attempt in range(1, MAX_TRANSACTION_ATTEMPTS + 1):
            try:
                return await self._attempt(operation, read_only)
            except DBAPIError as exc:
                if attempt == MAX_TRANSACTION_ATTEMPTS or not _is_transient(exc):
                    raise
                log.info("transaction_retried", attempt=attempt, error=_error_summary(exc))
                await asyncio.sleep(min(0.005 * 2**attempt, 0.5))
        raise AssertionError("unreachable")

    async def _attempt(self, operation: Callable[[Connection], T], read_only: bool) -> T:
        if read_only or self._sqlite_writer is None:
            return await greenlet_spawn(self._in_transaction, operation, read_only)
        async with self._sqlite_writer:
            return await greenlet_spawn(self._in_transaction, operation, read_only)

    def _in_transaction(self, operation: Callable[[Connection], T], read_only: bool) -> T:
        # The async engine's own methods do the same on its sync_engine, each
        # call in a greenlet of its own.
        engine = self.engine.sync_engine
        if read_only:
            with engine.connect() as connection:
                connection.execution_options(**{READ_ONLY_OPTION: True})
                return operation(connection)
        with engine.begin() as connection:
            return operation(connection)

    async def ping(self) -> None:
        """Raise ServiceUnavailable unless a trivial query succeeds."""
        try:
            await self.read(lambda connection: connection.exec_driver_sql("SELECT 1"))
        except (DBAPIError, OSError) as exc:
            raise ServiceUnavailable(f"database unreachable: {_error_summary(exc)}") from exc


def _create_engine(url: str, pool_size: int) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)
        _configure_sqlite(engine)
        return engine

    # Dead pooled connections are replaced by Database._with_retries; the
    # recycle age keeps connections younger than MySQL's wait_timeout.
    connect_args = {"charset": "utf8mb4"}
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, connection_record):
        # Take transaction control away from the driver so BEGIN IMMEDIATE
        # below is what actually starts each transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MILLISECONDS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection):
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
            return
        # Taking the write lock up front means a transaction never has to
        # upgrade a read lock, which is where SQLite deadlocks writers.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _is_transient(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    code = _mysql_error_code(exc)
    if code in RETRYABLE_MYSQL_ERRORS:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


def _mysql_error_code(exc: DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def _error_summary(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return f"{type(original).__name__}: {original}"

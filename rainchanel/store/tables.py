"""Table definitions shared by the queue operations and the migrations.

Every timestamp is an integer count of microseconds since the Unix epoch
(UTC), read from the database's clock, so that servers with skewed clocks
agree on leases and backoff and the arithmetic is the same on every database.
"""

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import mysql

metadata = MetaData()

# Every table is InnoDB with full UTF-8 on MySQL; other databases ignore these.
MYSQL_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

# MySQL's TEXT stores at most 64 KiB, too little for results and error logs.
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# Module bytes go in as binary; a MySQL BLOB would stop at 64 KiB.
LongBinary = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


class ExactName(TypeDecorator):
    """A name compared byte for byte on every database.

    MySQL's default collations fold case and ignore trailing spaces, so
    "Bob", "bob" and "bob " would be one user; VARBINARY compares the UTF-8
    bytes exactly. SQLite's default BINARY collation already does.
    """

    impl = String(200)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.VARBINARY(200))
        return dialect.type_descriptor(String(200))

    def process_bind_param(self, value, dialect):
        if value is not None and dialect.name in ("mysql", "mariadb"):
            return value.encode("utf-8")
        return value

    def process_result_value(self, value, dialect):
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("utf-8")
        return value


users = Table(
    "users",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("username", ExactName(), nullable=False, unique=True),
    Column("password_hash", String(100), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    **MYSQL_OPTIONS,
)

# Each module is stored once, addressed by the SHA-256 of its bytes.
modules = Table(
    "modules",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("wasm", LongBinary, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    **MYSQL_OPTIONS,
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("owner_id", BigInteger, nullable=False),
    Column("module_sha256", String(64), nullable=False),
    Column("func", String(255), nullable=False),
    Column("args", LongText, nullable=False),
    Column("stdin", LongText, nullable=True),
    Column("env", LongText, nullable=True),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    # Attempts started so far; a claim increments it, a release undoes that.
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout_seconds", Integer, nullable=False),
    Column("available_at", BigInteger, nullable=False),
    Column("lease_token", String(64), nullable=True),
    Column("lease_owner_id", BigInteger, nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("claimed_at", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("result", LongText, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=True),
    **MYSQL_OPTIONS,
)

# Claim: the first pending task in (priority desc, available_at, id) order.
Index("ix_tasks_claim", tasks.c.status, tasks.c.priority.desc(), tasks.c.available_at, tasks.c.id)
# Reclaim: processing tasks whose lease has expired.
Index("ix_tasks_lease", tasks.c.status, tasks.c.lease_expires_at)
# Owner lookups and per-owner listings.
Index("ix_tasks_owner", tasks.c.owner_id, tasks.c.id)

# Outcomes recorded but not yet delivered to the task's owner. The
# auto-increment sequence orders delivery; delivering deletes the row.
undelivered_results = Table(
    "undelivered_results",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("owner_id", BigInteger, nullable=False),
    Column("task_id", BigInteger, nullable=False, unique=True),
    Index("ix_undelivered_owner", "owner_id", "seq"),
    **MYSQL_OPTIONS,
)

# Server-wide values every server process on the same database shares,
# such as the generated JWT secret.
server_settings = Table(
    "server_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    **MYSQL_OPTIONS,
)

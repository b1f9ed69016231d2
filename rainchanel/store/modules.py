"""Content-addressed module storage with an in-memory cache of hot modules."""

import base64
from collections import OrderedDict
from threading import Lock

from sqlalchemy import select
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Connection

from rainchanel.store.database import Database, now_us
from rainchanel.store.tables import modules


class ModuleBytesCache:
    """An LRU cache of module bytes and their base64 text, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._size_bytes = 0
        self._lock = Lock()

    def get(self, sha256: str) -> tuple[bytes, str] | None:
        with self._lock:
            entry = self._entries.get(sha256)
            if entry is not None:
                self._entries.move_to_end(sha256)
            return entry

    def put(self, sha256: str, wasm: bytes) -> tuple[bytes, str]:
        known = self.get(sha256)
        if known is not None:
            return known
        entry = (wasm, base64.b64encode(wasm).decode("ascii"))
        cost = len(wasm) + len(entry[1])
        with self._lock:
            if sha256 in self._entries or cost > self.max_bytes:
                return entry
            self._entries[sha256] = entry
            self._size_bytes += cost
            while self._size_bytes > self.max_bytes:
                _, (old_wasm, old_text) = self._entries.popitem(last=False)
                self._size_bytes -= len(old_wasm) + len(old_text)
        return entry


class ModuleStore:
    """Stores each module once by SHA-256 and serves its bytes."""

    def __init__(self, db: Database, cache_max_bytes: int = 128 * 1024 * 1024) -> None:
        self.db = db
        self.cache = ModuleBytesCache(cache_max_bytes)

    def save(self, connection: Connection, sha256: str, wasm: bytes) -> None:
        """Insert the module unless a row with its hash exists (inside the caller's transaction)."""
        if self.cache.get(sha256) is not None:
            return
        values = {"sha256": sha256, "wasm": wasm, "size_bytes": len(wasm), "created_at": now_us()}
        if self.db.is_sqlite:
            statement = sqlite.insert(modules).values(values).on_conflict_do_nothing()
        else:
            # Two publishers of the same new module race here; the key makes
            # the second insert a no-op instead of an error.
            statement = mysql.insert(modules).values(values)
            statement = statement.on_duplicate_key_update(sha256=statement.inserted.sha256)
        connection.execute(statement)

    async def store(self, sha256: str, wasm: bytes) -> None:
        """Insert the module in its own transaction."""
        await self.db.run(lambda connection: self.save(connection, sha256, wasm))
        self.cache.put(sha256, wasm)

    async def exists(self, sha256: str) -> bool:
        if self.cache.get(sha256) is not None:
            return True
        statement = select(modules.c.size_bytes).where(modules.c.sha256 == sha256)
        return await self.db.read(lambda connection: connection.scalar(statement)) is not None

    def load_many(self, connection: Connection, hashes: set[str]) -> dict[str, tuple[bytes, str]]:
        """Return (bytes, base64 text) for each hash, from the cache or the database."""
        found: dict[str, tuple[bytes, str]] = {}
        missing = []
        for sha256 in hashes:
            entry = self.cache.get(sha256)
            if entry is None:
                missing.append(sha256)
            else:
                found[sha256] = entry
        if missing:
            rows = connection.execute(select(modules.c.sha256, modules.c.wasm).where(modules.c.sha256.in_(missing)))
            for sha256, wasm in rows:
                found[sha256] = self.cache.put(sha256, bytes(wasm))
        return found

    async def load(self, sha256: str) -> bytes | None:
        """Return the module's bytes, from the cache when it has them."""
        entry = self.cache.get(sha256)
        if entry is None:
            entry = (await self.db.read(lambda connection: self.load_many(connection, {sha256}))).get(sha256)
        return entry[0] if entry else None

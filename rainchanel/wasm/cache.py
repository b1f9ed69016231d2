"""A bounded, thread-safe LRU cache of compiled modules keyed by SHA-256."""

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

Value = TypeVar("Value")


class ModuleCache(Generic[Value]):
    """Least-recently-used mapping from a module's SHA-256 to its compiled form."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"invalid module cache size {max_entries}: it must be at least 1")
        self._max_entries = max_entries
        self._entries: OrderedDict[str, Value] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, sha256: str) -> Value | None:
        """Return the cached value and mark it as most recently used, or None."""
        with self._lock:
            value = self._entries.get(sha256)
            if value is not None:
                self._entries.move_to_end(sha256)
            return value

    def put(self, sha256: str, value: Value) -> Value:
        """Store value unless another thread stored one first; return the cached value."""
        with self._lock:
            existing = self._entries.get(sha256)
            if existing is not None:
                self._entries.move_to_end(sha256)
                return existing
            self._entries[sha256] = value
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
            return value

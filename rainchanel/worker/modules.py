"""Module downloads for tasks claimed without inline bytes (GET /modules/{sha256}).

A slot asks for a module only when the executor has not compiled it yet.
Slots that need the same module at the same time share one download.
"""

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rainchanel.logs import get_logger
from rainchanel.worker.session import ServerSession

log = get_logger("rainchanel.worker")

# Downloads of one module whose bytes do not match the digest, before the
# task fails this attempt.
MAX_DOWNLOAD_ATTEMPTS = 3


class ModuleUnavailable(Exception):
    """The server returned bytes that do not hash to the requested SHA-256."""


@dataclass
class _Download:
    done: threading.Event = field(default_factory=threading.Event)
    module: bytes | None = None
    error: BaseException | None = None


class ModuleFetcher:
    """Downloads modules by SHA-256, one request per module even when several slots need it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._downloads: dict[str, _Download] = {}

    @contextmanager
    def module(self, session: ServerSession, sha256: str, is_cached: Callable[[str], bool]) -> Iterator[bytes | None]:
        """Yield the module's bytes, checked against `sha256`, or None once `is_cached(sha256)` is true.

        The slot that starts a download keeps its bytes available to other
        slots until its `with` block ends, so compile inside the block: a
        slot that comes later then finds either the bytes or the compiled
        module, and never downloads the module a second time.

        Raises ApiError when the server rejects the download (404 for an
        unknown module), ModuleUnavailable after repeated corrupt downloads,
        and GaveUp when the worker stops while the server is unreachable.
        A slot that joins a download gets its bytes or its error.
        """
        sha256 = sha256.lower()
        with self._lock:
            download = self._downloads.get(sha256)
            is_owner = download is None and not is_cached(sha256)
            if is_owner:
                download = _Download()
                self._downloads[sha256] = download

        if download is None:
            yield None
            return
        if not is_owner:
            download.done.wait()
            if download.error is not None:
                raise download.error
            yield download.module
            return

        try:
            try:
                download.module = self._download(session, sha256)
            except BaseException as exc:
                download.error = exc
                raise
            finally:
                download.done.set()
            yield download.module
        finally:
            # Past this point the executor has the compiled module (or the
            # module is invalid), so the bytes are not kept.
            with self._lock:
                del self._downloads[sha256]

    def _download(self, session: ServerSession, sha256: str) -> bytes:
        actual_sha256 = ""
        for attempt in range(1, MAX_DOWNLOAD_ATTEMPTS + 1):
            module = session.call("download_module", lambda client: client.download_module(sha256), module_sha256=sha256)
            actual_sha256 = hashlib.sha256(module).hexdigest()
            if actual_sha256 == sha256:
                log.info("module_downloaded", module_sha256=sha256, size_bytes=len(module))
                return module
            log.warning(
                "module_digest_mismatch", module_sha256=sha256, actual_sha256=actual_sha256,
                size_bytes=len(module), attempt=attempt,
            )
        raise ModuleUnavailable(
            f"module {sha256} was downloaded {MAX_DOWNLOAD_ATTEMPTS} times and each time its bytes "
            f"had another SHA-256 (last {actual_sha256})"
        )

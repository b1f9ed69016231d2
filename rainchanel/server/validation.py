"""Decoding and validating published modules, off the event loop and cached.

The server never executes submitted code: it compiles the module with
wasmtime and reads its exports, imports and signatures, nothing more.
"""

import asyncio
import base64
import binascii
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor

from rainchanel.errors import InvalidModule, InvalidRequest, PayloadTooLarge
from rainchanel.wasm.cache import ModuleCache
from rainchanel.wasm.inspect import ModuleInfo, inspect_module, new_validation_engine

# Standard base64 alphabet; white space is removed before this check.
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(r"\s+")
VALIDATION_THREADS = 2
CACHE_ENTRIES = 1024


def decode_module(text: str, max_module_bytes: int) -> bytes:
    """Decode standard base64, ignoring white space and tolerating missing padding."""
    compact = _WHITESPACE.sub("", text)
    # Four base64 characters carry three bytes; refuse before decoding.
    if len(compact) * 3 // 4 > max_module_bytes + 2:
        raise PayloadTooLarge(f"wasm_module is over the {max_module_bytes} byte limit for a decoded module")
    if not _BASE64_TEXT.fullmatch(compact):
        raise InvalidRequest(f"wasm_module is not valid base64: {_base64_problem(compact)}")
    padded = compact + "=" * (-len(compact) % 4)
    try:
        wasm = base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise InvalidRequest(f"wasm_module is not valid base64: {exc}") from exc
    if not wasm:
        raise InvalidModule("wasm_module is empty")
    if len(wasm) > max_module_bytes:
        raise PayloadTooLarge(f"wasm_module is {len(wasm)} bytes, over the {max_module_bytes} byte limit")
    return wasm


def _base64_problem(compact: str) -> str:
    for position, character in enumerate(compact):
        if not (character.isascii() and character.isalnum()) and character not in "+/=":
            return f"unexpected character {character!r} at position {position}"
    return "'=' padding may only appear at the end"


class ModuleValidator:
    """Validates modules in a small thread pool, caching outcomes by SHA-256."""

    def __init__(self, threads: int = VALIDATION_THREADS, cache_entries: int = CACHE_ENTRIES) -> None:
        self._engine = new_validation_engine()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="validate")
        # Invalid modules are cached too, so a client retrying a bad module
        # does not compile it again.
        self._cache: ModuleCache[ModuleInfo | InvalidModule] = ModuleCache(cache_entries)

    async def validate(self, wasm: bytes, sha256: str | None = None) -> tuple[str, ModuleInfo]:
        """Return the module's hash and info; raise InvalidModule with the validator's reason."""
        sha256 = sha256 or hashlib.sha256(wasm).hexdigest()
        cached = self._cache.get(sha256)
        if cached is None:
            loop = asyncio.get_running_loop()
            cached = self._cache.put(sha256, await loop.run_in_executor(self._pool, self._inspect, wasm))
        if isinstance(cached, InvalidModule):
            raise InvalidModule(cached.message)
        return sha256, cached

    def _inspect(self, wasm: bytes) -> ModuleInfo | InvalidModule:
        try:
            return inspect_module(self._engine, wasm)
        except InvalidModule as exc:
            return exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

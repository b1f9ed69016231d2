"""The in-memory cache of module bytes shared by publishing and claiming."""

import base64

from rainchanel.store.modules import ModuleBytesCache


def test_put_returns_bytes_and_text():
    cache = ModuleBytesCache(max_bytes=1024)

    entry = cache.put("a" * 64, b"\x00asm module")

    assert entry == (b"\x00asm module", base64.b64encode(b"\x00asm module").decode())
    assert cache.get("a" * 64) == entry


def test_put_reuses_cached_entry():
    cache = ModuleBytesCache(max_bytes=1024)
    first = cache.put("a" * 64, b"module bytes")

    again = cache.put("a" * 64, b"module bytes")

    # The same objects: the base64 text was not computed a second time.
    assert again is first


def test_eviction_order_least_recent():
    module = b"m" * 30  # 30 bytes plus 40 of base64 text
    cache = ModuleBytesCache(max_bytes=150)
    cache.put("a", module)
    cache.put("b", module)
    cache.get("a")

    cache.put("c", module)

    assert cache.get("a") is not None
    assert cache.get("b") is None
    assert cache.get("c") is not None


def test_oversized_module_not_kept():
    cache = ModuleBytesCache(max_bytes=10)

    entry = cache.put("a", b"x" * 100)

    assert entry[0] == b"x" * 100
    assert cache.get("a") is None

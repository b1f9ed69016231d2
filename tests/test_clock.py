"""Stored microsecond timestamps formatted as RFC 3339."""

from datetime import UTC, datetime, timedelta

from rainchanel.store.clock import to_rfc3339

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_rfc3339_known_moment():
    assert to_rfc3339(1_764_000_000_123_456) == "2025-11-24T16:00:00.123456Z"


def test_rfc3339_missing_value():
    assert to_rfc3339(None) is None


def test_rfc3339_exact_microseconds():
    # Values past 2^53 microseconds lose digits when divided as floats.
    for timestamp_us in (0, 1, 999_999, 9_007_199_254_740_993, 253_402_300_799_999_999, -1, -1_500_000):
        parsed = datetime.fromisoformat(to_rfc3339(timestamp_us).replace("Z", "+00:00"))

        assert parsed == EPOCH + timedelta(microseconds=timestamp_us), timestamp_us


def test_rfc3339_same_second_twice():
    first = to_rfc3339(1_764_000_000_000_001)
    second = to_rfc3339(1_764_000_000_999_999)

    assert first == "2025-11-24T16:00:00.000001Z"
    assert second == "2025-11-24T16:00:00.999999Z"

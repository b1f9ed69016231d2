"""Conversions between stored microsecond timestamps and RFC 3339 text."""

import functools
from datetime import UTC, datetime

MICROSECONDS_PER_SECOND = 1_000_000


def to_rfc3339(timestamp_us: int | None) -> str | None:
    """Format microseconds since the Unix epoch as RFC 3339 in UTC."""
    if timestamp_us is None:
        return None
    seconds, microseconds = divmod(timestamp_us, MICROSECONDS_PER_SECOND)
    return f"{_whole_second_text(seconds)}.{microseconds:06d}Z"


@functools.lru_cache(maxsize=4096)
def _whole_second_text(seconds: int) -> str:
    # Responses carry several times per task, mostly from the same few
    # seconds, so the calendar arithmetic is done once per second.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def seconds_to_us(seconds: float) -> int:
    return int(round(seconds * MICROSECONDS_PER_SECOND))

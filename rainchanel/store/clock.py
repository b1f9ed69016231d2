"""Conversions between stored microsecond timestamps and RFC 3339 text."""

from datetime import UTC, datetime

MICROSECONDS_PER_SECOND = 1_000_000


def to_rfc3339(timestamp_us: int | None) -> str | None:
    """Format microseconds since the Unix epoch as RFC 3339 in UTC."""
    if timestamp_us is None:
        return None
    moment = datetime.fromtimestamp(timestamp_us / MICROSECONDS_PER_SECOND, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def seconds_to_us(seconds: float) -> int:
    return int(round(seconds * MICROSECONDS_PER_SECOND))

"""Long polling: wake waiting requests when work arrives.

A publish (or a recorded outcome) in this process wakes its waiters at once.
Work recorded by another server process is found by polling the database
with a bounded backoff, so such a wake-up takes at most about a second.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0
MAX_WAIT_SECONDS = 30
# How long a batch long poll waits for more work after the first wake-up.
BATCH_LINGER_SECONDS = 0.01


class Signal:
    """A broadcast wake-up: every waiter present when notify() runs returns."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """The event the next notify() sets; take it before checking for work."""
        return self._event


async def _wait(event: asyncio.Event, timeout_seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout_seconds)
    except TimeoutError:
        pass


async def fetch_or_wait(
    fetch: Callable[[], Awaitable[list[T]]],
    signal: Signal,
    wait_seconds: float,
    disconnected: Callable[[], Awaitable[bool]],
    linger_seconds: float = 0,
) -> list[T]:
    """Call fetch until it returns something, wait_seconds pass or the client goes away.

    The caller must still check disconnected() after a fetch that returned
    something, and undo it, because the client can leave during the fetch.
    After a wake-up, linger_seconds pass before the next fetch so that a
    batch request collects the work that arrives in a burst, not its first item.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    poll_seconds = FIRST_POLL_SECONDS
    first = True
    while True:
        if not first and await disconnected():
            return []
        first = False
        # Taken before the fetch, so a notify() that lands between an empty
        # fetch and the wait below still wakes this request.
        event = signal.current()
        items = await fetch()
        remaining = deadline - loop.time()
        if items or remaining <= 0:
            return items
        await _wait(event, min(poll_seconds, remaining))
        if linger_seconds and event.is_set():
            await asyncio.sleep(min(linger_seconds, max(0.0, deadline - loop.time())))
        poll_seconds = min(poll_seconds * 2, MAX_POLL_SECONDS)

"""Long polling: wake waiting requests when work arrives.

A publish (or a recorded outcome) in this process wakes its waiters at once.
A publish wakes only as many waiting claims as it added tasks, because each
claim takes at least one. The processes of one `serve --workers N` also share a small memory-mapped
file of counters, watched every few milliseconds, so a publish in one wakes
the waiters of the others. Work recorded by a server on another host, and
delayed or retried tasks whose time has come, are found by polling the
database with a bounded backoff, so such a wake-up takes at most about a
second. Waiting claims share one poll per process (watch_database), so idle
workers cost the database the same however many there are.
"""

import asyncio
import contextlib
import mmap
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import structlog
from sqlalchemy.exc import DBAPIError

T = TypeVar("T")

log = structlog.get_logger("rainchanel.waiting")

FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 1.0
MAX_WAIT_SECONDS = 30
# How long a batch long poll waits for more work after the first wake-up.
BATCH_LINGER_SECONDS = 0.01
# How often each process looks at the counters the other processes bump.
SHARED_WATCH_SECONDS = 0.005
# How often a waiting claim, which does not poll the database itself,
# checks that its client is still connected.
DISCONNECT_CHECK_SECONDS = 1.0
COUNTER_FORMAT = "Q"
COUNTER_BYTES = struct.calcsize(COUNTER_FORMAT)


class SharedCounters:
    """Counters in a memory-mapped file shared by the processes of one server.

    A bump that races another process's bump may be lost, but the value
    still changes, and a change is all a watcher looks for.
    """

    def __init__(self, path: Path, slots: int) -> None:
        with open(path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), slots * COUNTER_BYTES)

    @staticmethod
    def create(path: Path, slots: int) -> None:
        path.write_bytes(bytes(slots * COUNTER_BYTES))

    def read(self, slot: int) -> int:
        return struct.unpack_from(COUNTER_FORMAT, self._map, slot * COUNTER_BYTES)[0]

    def bump(self, slot: int) -> None:
        value = (self.read(slot) + 1) % 2**64
        struct.pack_into(COUNTER_FORMAT, self._map, slot * COUNTER_BYTES, value)


class WakeUp:
    """One notify() of a Signal: the event its waiters wait for, and how many of them may fetch."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        # None lets every waiter fetch. A number lets that many fetch, because
        # a fetch takes at least one item, and the others keep waiting.
        self.tickets: int | None = None
        # The wake-up that replaced this one, set when this one fires.
        self.next: "WakeUp | None" = None

    def take_ticket(self) -> bool:
        """Return whether the caller may fetch after this wake-up."""
        if self.tickets is None:
            return True
        if self.tickets <= 0:
            return False
        self.tickets -= 1
        return True


class Signal:
    """A wake-up for waiting requests: notify() wakes every waiter present, or as many as there are new items."""

    def __init__(self, shared: SharedCounters | None = None, slot: int = 0) -> None:
        self._wake_up = WakeUp()
        self._shared = shared
        self._slot = slot
        # Requests waiting for this signal.
        self.waiting_requests = 0
        self._requests_waiting = asyncio.Event()

    def notify(self, count: int | None = None) -> None:
        """Wake this process's waiters and, through the shared counter, the other processes'.

        count is how many items arrived: that many local waiters fetch, all
        of them when it is None. Other processes learn only that something
        changed, so there all waiters fetch.
        """
        self.notify_local(count)
        if self._shared is not None:
            self._shared.bump(self._slot)

    def notify_local(self, count: int | None = None) -> None:
        fired = self._wake_up
        self._wake_up = WakeUp()
        fired.tickets = count
        fired.next = self._wake_up
        fired.event.set()

    async def relay_shared(self) -> None:
        """Wake local waiters whenever another process bumps the counter; runs until cancelled."""
        if self._shared is None:
            return
        seen = self._shared.read(self._slot)
        while True:
            # Idle servers skip the watch. A bump made meanwhile is still seen
            # on the first look afterwards, which at worst wakes requests for nothing.
            await self.wait_for_requests()
            await asyncio.sleep(SHARED_WATCH_SECONDS)
            value = self._shared.read(self._slot)
            if value != seen:
                seen = value
                self.notify_local()

    def current(self) -> WakeUp:
        """Return the wake-up the next notify() fires; take it before checking for work."""
        return self._wake_up

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Count a waiting request; relay_shared() and watch_database() run only while some wait."""
        self.waiting_requests += 1
        self._requests_waiting.set()
        try:
            yield
        finally:
            self.waiting_requests -= 1
            if self.waiting_requests == 0:
                self._requests_waiting.clear()

    async def wait_for_requests(self) -> bool:
        """Block until a request is waiting; return whether this call had to block."""
        if self.waiting_requests:
            return False
        await self._requests_waiting.wait()
        return True


async def watch_database(signal: Signal, probe: Callable[[], Awaitable[bool]]) -> None:
    """Wake the signal's waiters whenever probe() finds work; runs until cancelled.

    One probe serves every request waiting in this process. It runs only
    while requests wait, 50 ms after they start and then at doubling
    intervals up to a second while it finds nothing.
    """
    interval = FIRST_POLL_SECONDS
    while True:
        if await signal.wait_for_requests():
            interval = FIRST_POLL_SECONDS
        await asyncio.sleep(interval)
        if not signal.waiting_requests:
            continue
        try:
            found = await probe()
        except (DBAPIError, OSError) as exc:
            log.warning("work_probe_failed", error=f"{type(exc).__name__}: {exc}")
            found = False
        if found:
            signal.notify_local()
            interval = FIRST_POLL_SECONDS
        else:
            interval = min(interval * 2, MAX_POLL_SECONDS)


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
    poll_database: bool = True,
) -> list[T]:
    """Call fetch until it returns something, wait_seconds pass or the client goes away.

    The caller must still check disconnected() after a fetch that returned
    something, and undo it, because the client can leave during the fetch.
    After a wake-up, linger_seconds pass before the next fetch so that a
    batch request collects the work that arrives in a burst, not its first item.
    With poll_database, the request fetches again at doubling intervals on its
    own and once more when the wait is over. Without it, the request fetches
    only when the signal fires, so a watch_database() task must run for the signal.
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
        wake_up = signal.current()
        items = await fetch()
        remaining = deadline - loop.time()
        if items or remaining <= 0:
            return items

        if poll_database:
            with signal.waiting():
                await _wait(wake_up.event, min(poll_seconds, remaining))
            poll_seconds = min(poll_seconds * 2, MAX_POLL_SECONDS)
        else:
            with signal.waiting():
                wake_up = await _wait_for_turn(wake_up, deadline, disconnected)
            if wake_up is None:
                # Work that appeared since the watch's last probe goes to the
                # client's next request, which fetches as it starts.
                return []
        if linger_seconds and wake_up.event.is_set():
            await asyncio.sleep(min(linger_seconds, max(0.0, deadline - loop.time())))


async def _wait_for_turn(
    wake_up: WakeUp, deadline: float, disconnected: Callable[[], Awaitable[bool]]
) -> WakeUp | None:
    """Wait for a wake-up with a ticket for this request; None when the deadline passes or the client leaves.

    A request without a ticket moves on to the wake-ups that followed, in
    order, so it does not skip the tickets of a wake-up that fired meanwhile.
    """
    loop = asyncio.get_running_loop()
    while True:
        while wake_up.event.is_set():
            if wake_up.take_ticket():
                return wake_up
            wake_up = wake_up.next
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        await _wait(wake_up.event, min(DISCONNECT_CHECK_SECONDS, remaining))
        if not wake_up.event.is_set() and await disconnected():
            return None

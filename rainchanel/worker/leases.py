"""Lease bookkeeping for claimed tasks and the thread that keeps leases alive.

A lease runs out at `lease_expires_at`, after which the server may reclaim the
task and hand it to another worker. Once a task has run for half of its
current lease, the heartbeat thread extends the lease and takes the new
expiry from the server's response.
"""

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rainchanel.client import ApiError
from rainchanel.logs import get_logger
from rainchanel.worker.session import GaveUp, ServerSession

log = get_logger("rainchanel.worker")

# How often the heartbeat thread looks for leases to extend.
HEARTBEAT_POLL_SECONDS = 0.2


@dataclass
class Lease:
    """A claimed task's lease, with times on this process's monotonic clock."""

    task_id: int
    lease_token: str
    granted_at: float
    expires_at: float
    lost: bool = field(default=False)
    # Set once the task's outcome is computed. A heartbeat refused after that
    # usually crossed the report that ended the lease, so it is not a loss.
    # A lease lost for real shows when the server rejects the report.
    outcome_ready: bool = field(default=False)

    @property
    def renew_at(self) -> float:
        """Monotonic time at which half of the current lease has passed."""
        return self.granted_at + (self.expires_at - self.granted_at) / 2


def monotonic_deadline(lease_expires_at: str | None, fallback_seconds: float) -> float:
    """Convert an RFC 3339 expiry into a deadline on the monotonic clock.

    Uses `fallback_seconds` from now when the value is missing or invalid.
    """
    now = time.monotonic()
    if lease_expires_at:
        try:
            expires = datetime.fromisoformat(lease_expires_at.replace("Z", "+00:00"))
        except ValueError:
            expires = None
        if expires is not None:
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            return now + (expires - datetime.now(UTC)).total_seconds()
    return now + fallback_seconds


class LeaseKeeper:
    """Tracks the leases of running tasks and renews them from its own thread."""

    def __init__(self, session: ServerSession) -> None:
        self._session = session
        self._leases: dict[int, Lease] = {}
        self._lock = threading.Lock()
        # Setting the session's give_up event also ends a heartbeat that is
        # being retried, so stop() does not wait for an unreachable server.
        self._stopped = session.give_up
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._session.close()

    def add(self, task: dict) -> Lease:
        """Start tracking the lease of a freshly claimed task."""
        now = time.monotonic()
        fallback = float(task.get("timeout_seconds") or 30)
        lease = Lease(
            task_id=task["id"],
            lease_token=task["lease_token"],
            granted_at=now,
            expires_at=monotonic_deadline(task.get("lease_expires_at"), fallback),
        )
        with self._lock:
            self._leases[lease.task_id] = lease
        return lease

    def remove(self, task_id: int) -> None:
        with self._lock:
            self._leases.pop(task_id, None)

    def active(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def _run(self) -> None:
        while not self._stopped.wait(HEARTBEAT_POLL_SECONDS):
            now = time.monotonic()
            for lease in self.active():
                if not lease.lost and now >= lease.renew_at:
                    self._renew(lease)

    def _renew(self, lease: Lease) -> None:
        try:
            data = self._session.call(
                "heartbeat",
                lambda client: client.heartbeat(lease.task_id, lease.lease_token),
                task_id=lease.task_id,
            )
        except GaveUp:
            return
        except ApiError as exc:
            if lease.outcome_ready:
                log.debug("heartbeat_after_outcome", task_id=lease.task_id, status=exc.status, error=exc.message)
                return
            # 404 or 409: the server reclaimed the task or it finished; the
            # outcome this worker computes will be refused.
            lease.lost = True
            log.warning("lease_lost", task_id=lease.task_id, status=exc.status, error=exc.message)
            return
        previous_length = lease.expires_at - lease.granted_at
        lease.granted_at = time.monotonic()
        lease.expires_at = monotonic_deadline(data.get("lease_expires_at"), previous_length)
        log.debug("lease_extended", task_id=lease.task_id, lease_expires_at=data.get("lease_expires_at"))

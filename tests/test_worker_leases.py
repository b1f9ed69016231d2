"""The heartbeat side of LeaseKeeper, with a session that rejects every heartbeat."""

import threading

from rainchanel.client import ApiError
from rainchanel.worker.execution import TaskTiming
from rainchanel.worker.leases import LeaseKeeper
from rainchanel.worker.reporter import FinishedTask


class RejectingSession:
    """A session whose every call fails with the 409 a server returns for a lease that ended."""

    def __init__(self):
        self.give_up = threading.Event()
        self.calls = []

    def call(self, name, request, task_id=None):
        self.calls.append((name, task_id))
        raise ApiError("task 7 is already completed; a task accepts one outcome", 409, "POST", "/tasks/7/heartbeat")

    def close(self):
        pass


def claimed_task(task_id=7):
    return {"id": task_id, "lease_token": f"lease-{task_id}", "timeout_seconds": 30, "lease_expires_at": None}


def test_rejected_heartbeat_marks_lease_lost():
    session = RejectingSession()
    keeper = LeaseKeeper(session)
    lease = keeper.add(claimed_task())

    keeper._renew(lease)

    assert session.calls == [("heartbeat", 7)]
    assert lease.lost


def test_heartbeat_after_outcome_not_lost():
    session = RejectingSession()
    keeper = LeaseKeeper(session)
    lease = keeper.add(claimed_task())
    lease.outcome_ready = True

    keeper._renew(lease)

    assert session.calls == [("heartbeat", 7)]
    assert not lease.lost, "the refusal crossed the report that ended the lease"


def test_finished_task_marks_outcome_ready():
    keeper = LeaseKeeper(RejectingSession())
    lease = keeper.add(claimed_task())

    FinishedTask(claimed_task(), lease, TaskTiming(), started_at=0.0, completed=True, result=5)

    assert lease.outcome_ready

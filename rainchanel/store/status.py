"""Task states and the named sets the queue operations use."""

import enum


class TaskStatus(enum.StrEnum):
    """Lifecycle of a task: pending -> processing -> completed | failed."""

    # Waiting in the queue; claimable once its available_at has passed.
    PENDING = "pending"
    # Claimed under a lease by a worker that has not reported yet.
    PROCESSING = "processing"
    # Finished with a result; terminal.
    COMPLETED = "completed"
    # Finished without a result after its last attempt; terminal.
    FAILED = "failed"


# States a task never leaves.
TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED})

# Every state, in lifecycle order, for gauges and health output.
ALL_STATUSES = (TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.COMPLETED, TaskStatus.FAILED)

"""Prometheus series exposed at /metrics.

Counter names never start with rainchanel_tasks_total, because
prometheus_client appends _total to counters and that name belongs to the
status gauge existing dashboards read.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

# Seconds; from tens of milliseconds of queueing to an hour-long task.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30)
STATUS_CACHE_SECONDS = 5.0


class Metrics:
    """The server's series, registered in their own registry."""

    def __init__(self, multiprocess: bool = False) -> None:
        """With multiprocess=True, values live in PROMETHEUS_MULTIPROC_DIR and
        every scrape reads the files of all server processes."""
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        r = self.registry
        # Each process refreshes the gauge from the database when it serves
        # a scrape; the freshest value across processes is the true one.
        self.tasks_by_status = Gauge(
            "rainchanel_tasks_total",
            "Tasks in the database by status.",
            ["status"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.published = Counter("rainchanel_tasks_published", "Tasks published.", registry=r)
        self.claimed = Counter("rainchanel_tasks_claimed", "Task attempts claimed by workers.", registry=r)
        self.completed = Counter("rainchanel_tasks_completed", "Tasks completed with a result.", registry=r)
        self.failed = Counter("rainchanel_tasks_failed", "Tasks failed for good.", registry=r)
        self.retried = Counter("rainchanel_tasks_retried", "Failed attempts queued again after a backoff.", registry=r)
        self.reclaimed = Counter("rainchanel_tasks_reclaimed", "Expired leases reclaimed.", registry=r)
        self.released = Counter(
            "rainchanel_tasks_released", "Claimed tasks released back to the queue without counting the attempt.", registry=r
        )
        self.queue_wait = Histogram(
            "rainchanel_task_queue_wait_seconds",
            "Time from publish to claim.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "rainchanel_task_run_seconds",
            "Time from claim to the reported outcome.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.http_duration = Histogram(
            "rainchanel_http_request_duration_seconds",
            "HTTP request duration by route and status.",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self._status_read_at = 0.0
        self.status_counts: dict[str, int] = {}

    def exposition_registry(self) -> CollectorRegistry:
        """Return the registry to render at /metrics."""
        if not self.multiprocess:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry

    def status_is_stale(self) -> bool:
        return time.monotonic() - self._status_read_at > STATUS_CACHE_SECONDS

    def set_status_counts(self, counts: dict[str, int]) -> None:
        for status, count in counts.items():
            self.tasks_by_status.labels(status=status).set(count)
        self.status_counts = dict(counts)
        self._status_read_at = time.monotonic()

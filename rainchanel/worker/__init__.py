"""The worker: claims tasks from a server, runs their modules and reports outcomes."""

from rainchanel.worker.runner import Worker, WorkerSettings

__all__ = ["Worker", "WorkerSettings"]

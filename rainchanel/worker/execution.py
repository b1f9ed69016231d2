"""Running one claimed task in the wasm executor: settings, timings and the task spec."""

import os
from dataclasses import dataclass


@dataclass
class WorkerSettings:
    """Options of one worker process."""

    server_url: str
    username: str
    password: str
    concurrency: int = os.cpu_count() or 1
    memory_limit_mib: int = 256
    fuel: int | None = None
    grace_seconds: float = 10.0
    request_timeout_seconds: float = 30.0
    module_cache_size: int = 64
    stdout_limit_bytes: int = 256 * 1024
    stderr_limit_bytes: int = 256 * 1024
    # Seconds the server may hold an empty claim (long polling, at most 30).
    # A stop request waits for the claim in flight, so this also bounds how
    # long an idle worker takes to stop; 5 s keeps both low.
    claim_wait_seconds: float = 5.0
    # Claimed tasks a worker keeps waiting for a slot, beyond the running
    # ones (None: adaptive, about 0.1 s of work per slot, 4 per slot at first
    # and at most 128). Their leases run while they wait, and they are
    # heartbeated like running tasks. Not used with legacy_routes.
    # NOTE: one thread sends heartbeats one request at a time, so a large
    # prefetch of tasks with timeouts of a second or two can outrun it.
    prefetch: int | None = None
    # Use only the original single-task routes: one task per claim with the
    # module inline, one outcome per report, polling with backoff.
    legacy_routes: bool = False


@dataclass
class TaskTiming:
    """Milliseconds spent on each step of one task, and the sizes of the requests it was part of."""

    claim_ms: float = 0.0
    module_ms: float = 0.0  # decoding the inline module or downloading it
    run_ms: float = 0.0
    report_ms: float = 0.0
    claim_batch_size: int = 1  # tasks the claim request returned
    report_batch_size: int = 1  # outcomes in the report request that settled this task


def failed_outcome(error: str):
    """Return a retryable failure Outcome for an error outside the module."""
    from rainchanel.wasm.execute import Outcome

    return Outcome(completed=False, error=error, retryable=True)


def create_executor(settings: WorkerSettings):
    """Build the wasm Executor with the sandbox limits from the settings."""
    from rainchanel.wasm.execute import Executor, SandboxLimits

    limits = SandboxLimits(
        memory_limit_bytes=settings.memory_limit_mib * 1024 * 1024,
        fuel=settings.fuel,
        stdout_limit_bytes=settings.stdout_limit_bytes,
        stderr_limit_bytes=settings.stderr_limit_bytes,
    )
    return Executor(limits, module_cache_size=settings.module_cache_size)


def task_spec(task: dict):
    """Build the executor's TaskSpec from a claimed task."""
    from rainchanel.wasm.execute import TaskSpec

    return TaskSpec(
        task_id=task["id"],
        module_sha256=task["module_sha256"],
        func=task["func"],
        args=task.get("args") or [],
        timeout_seconds=task.get("timeout_seconds") or 30,
        stdin=task.get("stdin"),
        env=task.get("env"),
    )

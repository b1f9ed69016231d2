"""Sandboxed execution of one task in a fresh wasmtime Store.

Each Executor owns one Engine, one Linker with WASI defined, a cache of
modules compiled and pre-linked for it (wasmtime.InstancePre), and one timer
thread that advances the Engine's epoch while tasks run. Every task gets its
own Store and instance with a memory cap, optional fuel and an epoch deadline
that enforces the task's wall-clock limit.
"""

import hashlib
import math
import os
import tempfile
import threading
from dataclasses import dataclass, field

import structlog
import wasmtime

from rainchanel.errors import InvalidArguments, InvalidModule, InvalidRequest
from rainchanel.wasm.cache import ModuleCache
from rainchanel.wasm.inspect import (
    WASI_COMMAND_ENTRY,
    FunctionSignature,
    ModuleInfo,
    check_call,
    compile_module,
    configure_features,
)
from rainchanel.wasm.values import NUMERIC_TYPES
from rainchanel.wasm.values import from_wasm_values, to_wasm_values

log = structlog.get_logger(__name__)

# Callers run Executor.run() on threads created after
# threading.stack_size(WASM_THREAD_STACK_BYTES), so that wasm's own stack
# (MAX_WASM_STACK_BYTES) fits with room for wasmtime's host frames.
WASM_THREAD_STACK_BYTES = 8 * 1024 * 1024

# Set explicitly so that a change of wasmtime's default cannot raise it. A
# deeper wasm call chain traps with "call stack exhausted".
MAX_WASM_STACK_BYTES = 512 * 1024

EPOCH_TICK_SECONDS = 0.01

# How much of a trapping WASI program's stderr goes into the error message.
STDERR_TAIL_BYTES = 4 * 1024

# argv[0] of every WASI command.
PROGRAM_NAME = "module.wasm"

MIB = 1024 * 1024

# Plain-words names for traps raised by a module's own code.
_TRAP_DESCRIPTIONS = {
    wasmtime.TrapCode.STACK_OVERFLOW: "call stack exhausted",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "out of bounds memory access",
    wasmtime.TrapCode.HEAP_MISALIGNED: "misaligned memory access",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "undefined element: out of bounds table access",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "uninitialized element: indirect call to a null table entry",
    wasmtime.TrapCode.BAD_SIGNATURE: "indirect call type mismatch",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer divide by zero",
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid conversion to integer",
    wasmtime.TrapCode.UNREACHABLE: "unreachable instruction executed",
    wasmtime.TrapCode.NULL_REFERENCE: "null reference",
    wasmtime.TrapCode.ALLOCATION_TOO_LARGE: "allocation too large",
}


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits applied to every task an Executor runs."""

    memory_limit_bytes: int = 256 * 1024 * 1024
    fuel: int | None = None  # fuel units per task (about one per wasm instruction), None = unlimited
    stdout_limit_bytes: int = 256 * 1024
    stderr_limit_bytes: int = 256 * 1024


@dataclass(frozen=True)
class TaskSpec:
    """A function call to run: the module, function, arguments and wall-clock limit."""

    task_id: int
    module_sha256: str
    func: str
    args: list
    timeout_seconds: float
    stdin: str | None = None
    env: dict[str, str] | None = None


@dataclass(frozen=True)
class Outcome:
    """The end state of a task: a JSON result, or an error message and whether a retry may help."""

    completed: bool
    result: object = None
    error: str | None = None
    retryable: bool = True  # False only for failures a retry cannot change
    interrupted: bool = False  # stopped by Executor.interrupt_all()


@dataclass(frozen=True)
class _CompiledModule:
    """A compiled module and what every task of it needs, worked out once."""

    module: wasmtime.Module
    info: ModuleInfo
    # None when linking failed, for example on a WASI function this wasmtime
    # does not provide; link_error then contains the reason.
    instance_pre: wasmtime.InstancePre | None
    link_error: str | None
    # Exported functions whose parameters and results are all numeric, so
    # that only the arguments remain to be checked per task.
    callable_functions: dict[str, FunctionSignature]
    has_initializer: bool
    initializer_valid: bool  # an _initialize export takes and returns nothing


@dataclass(eq=False)
class _Run:
    """A task between instantiation and its end, as seen by the epoch timer."""

    deadline_epoch: int
    interrupted: bool = False


@dataclass
class _CommandFiles:
    """Paths of a WASI command's stdin, stdout and stderr files."""

    directory: str
    stdin: str | None = None
    stdout: str = field(init=False)
    stderr: str = field(init=False)

    def __post_init__(self) -> None:
        self.stdout = os.path.join(self.directory, "stdout")
        self.stderr = os.path.join(self.directory, "stderr")


class _TaskFailed(Exception):
    """Ends a task early with the outcome it carries."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


def _failed(error: str, retryable: bool, interrupted: bool = False) -> _TaskFailed:
    return _TaskFailed(Outcome(completed=False, error=error, retryable=retryable, interrupted=interrupted))


class Executor:
    """Runs tasks in wasmtime sandboxes; run() is safe to call from several threads."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), module_cache_size: int = 64) -> None:
        self._limits = limits
        self._engine = wasmtime.Engine(_new_engine_config(limits))
        # Each Store gets its own WASI context, so one Linker serves every task.
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        self._modules: ModuleCache[_CompiledModule] = ModuleCache(module_cache_size)

        # The lock keeps self._epoch equal to the Engine's epoch and guards
        # _runs; the timer waits on it while no task runs.
        self._lock = threading.Condition()
        self._epoch = 0
        self._runs: set[_Run] = set()

        self._closed = threading.Event()
        self._epoch_timer = threading.Thread(target=self._advance_epoch, name="wasm-epoch-timer", daemon=True)
        self._epoch_timer.start()

    def has_module(self, sha256: str) -> bool:
        """Return True when the module is compiled and cached in this Executor."""
        return sha256.lower() in self._modules

    def run(self, spec: TaskSpec, module_bytes: bytes | None, *, bytes_verified: bool = False) -> Outcome:
        """Run one task and return its outcome.

        module_bytes may be None when has_module(spec.module_sha256) is True.
        Pass bytes_verified=True only when the caller has checked module_bytes
        against spec.module_sha256, which skips hashing them again.
        Traps, timeouts and exhausted limits become an Outcome, never an exception.
        """
        try:
            compiled = self._compiled_module(spec.module_sha256, module_bytes, bytes_verified)
            return self._run_compiled(spec, compiled)
        except _TaskFailed as failure:
            return failure.outcome
        except (wasmtime.WasmtimeError, wasmtime.Trap, OSError) as exc:
            # Includes errors from WASI host calls, such as a misaligned pointer argument.
            error = _one_line(str(exc))
            log.warning("wasm_task_error", task_id=spec.task_id, module_sha256=spec.module_sha256, error=error)
            return Outcome(completed=False, error=f"worker error while running the task: {error}", retryable=True)

    def interrupt_all(self) -> None:
        """Stop every running task; each returns Outcome(interrupted=True, retryable=True).

        The Engine's epoch is advanced past the latest deadline, which makes
        every running Store trap at once.
        """
        with self._lock:
            if not self._runs:
                return
            for run in self._runs:
                run.interrupted = True
            # NOTE: each increment is one C call (about 1 microsecond, an estimate
            # from one x86-64 Linux machine), so a 1-hour timeout costs about 0.4 s.
            target_epoch = max(run.deadline_epoch for run in self._runs)
            while self._epoch <= target_epoch:
                self._engine.increment_epoch()
                self._epoch += 1
            log.info("wasm_tasks_interrupted", count=len(self._runs))

    def close(self) -> None:
        """Interrupt running tasks and stop the epoch timer thread.

        Tasks started after close() have no wall-clock limit, so call it last.
        """
        self.interrupt_all()
        with self._lock:
            self._closed.set()
            self._lock.notify_all()
        self._epoch_timer.join()

    def _advance_epoch(self) -> None:
        """Advance the epoch every EPOCH_TICK_SECONDS while a task runs, and sleep while none does.

        Deadlines count ticks from the epoch at the task's start, so a pause
        while no task runs only delays the first tick of the next one, which
        gives a task more time, never less.
        """
        while True:
            with self._lock:
                while not self._runs and not self._closed.is_set():
                    self._lock.wait()
            if self._closed.wait(EPOCH_TICK_SECONDS):
                return
            with self._lock:
                self._engine.increment_epoch()
                self._epoch += 1

    def _compiled_module(self, sha256: str, module_bytes: bytes | None, bytes_verified: bool) -> _CompiledModule:
        sha256 = sha256.lower()
        cached = self._modules.get(sha256)
        if cached is not None:
            return cached

        if module_bytes is None:
            raise _failed(
                f"module {sha256} is not cached on this worker and no module bytes were given; "
                "download the module and run the task again",
                retryable=True,
            )
        if not bytes_verified:
            actual_sha256 = hashlib.sha256(module_bytes).hexdigest()
            if actual_sha256 != sha256:
                raise _failed(
                    f"module bytes have SHA-256 {actual_sha256}, expected {sha256}; download the module again",
                    retryable=True,
                )

        try:
            module, info = compile_module(self._engine, module_bytes)
        except InvalidModule as exc:
            raise _failed(f"invalid module {sha256}: {exc.message}", retryable=False) from exc
        return self._modules.put(sha256, self._prepare(module, info))

    def _prepare(self, module: wasmtime.Module, info: ModuleInfo) -> _CompiledModule:
        """Pre-link a compiled module and look up what its tasks need."""
        try:
            instance_pre, link_error = self._linker.instantiate_pre(module), None
        except wasmtime.WasmtimeError as exc:
            instance_pre, link_error = None, _one_line(str(exc))
        callable_functions = {
            name: signature
            for name, signature in info.functions.items()
            if all(value_type in NUMERIC_TYPES for value_type in signature.params + signature.results)
        }
        initializer = info.functions.get("_initialize")
        return _CompiledModule(
            module=module,
            info=info,
            instance_pre=instance_pre,
            link_error=link_error,
            callable_functions=callable_functions,
            has_initializer=initializer is not None,
            initializer_valid=initializer in (None, FunctionSignature(params=(), results=())),
        )

    def _run_compiled(self, spec: TaskSpec, compiled: _CompiledModule) -> Outcome:
        info = compiled.info
        self._check_memory_minimum(info)
        if spec.func == WASI_COMMAND_ENTRY and info.is_wasi:
            _check_call(info, spec)
            return self._run_command(spec, compiled)

        signature = compiled.callable_functions.get(spec.func) if isinstance(spec.func, str) else None
        if signature is None:
            # Raises the error for a function that is not exported or cannot
            # be called with JSON numbers.
            _check_call(info, spec)
            signature = info.functions[spec.func]
        return self._run_function(spec, compiled, signature)

    def _check_memory_minimum(self, info: ModuleInfo) -> None:
        limit = self._limits.memory_limit_bytes
        if info.min_memory_bytes is not None and info.min_memory_bytes > limit:
            raise _failed(
                f"memory limit exceeded: module declares {_format_mib(info.min_memory_bytes)} MiB minimum, "
                f"the worker allows {_format_mib(limit)} MiB",
                retryable=True,
            )

    def _new_store(self) -> wasmtime.Store:
        store = wasmtime.Store(self._engine)
        store.set_limits(memory_size=self._limits.memory_limit_bytes)
        # A Store starts with no fuel when fuel is enabled.
        if self._limits.fuel is not None:
            store.set_fuel(self._limits.fuel)
        return store

    def _run_function(self, spec: TaskSpec, compiled: _CompiledModule, signature: FunctionSignature) -> Outcome:
        if not compiled.initializer_valid:
            raise _failed("invalid module: its _initialize export must take and return nothing", retryable=False)
        try:
            arguments = to_wasm_values(signature.params, spec.args)
        except InvalidArguments as exc:
            raise _failed(exc.message, retryable=False) from exc

        store = self._new_store()
        if compiled.info.is_wasi:
            # A core module that imports WASI gets no args, env, files or input,
            # and its output is discarded.
            store.set_wasi(wasmtime.WasiConfig())

        run = self._start_run(store, spec.timeout_seconds)
        try:
            instance = self._instantiate(store, compiled, spec, run)
            exports = instance.exports(store)
            try:
                if compiled.has_initializer:
                    exports["_initialize"](store)
                values = exports[spec.func](store, *arguments)
            except wasmtime.ExitTrap as exc:
                raise _failed(f"the module exited with code {exc.code} instead of returning", retryable=False) from exc
            except wasmtime.Trap as exc:
                raise self._trap_failure(exc, spec, run) from exc
        finally:
            self._finish_run(run)
        return Outcome(completed=True, result=from_wasm_values(signature.results, values))

    def _run_command(self, spec: TaskSpec, compiled: _CompiledModule) -> Outcome:
        env = _check_env(spec.env)
        with tempfile.TemporaryDirectory(prefix="rainchanel-task-") as directory:
            files = _CommandFiles(directory)
            if spec.stdin is not None:
                files.stdin = os.path.join(directory, "stdin")
                with open(files.stdin, "w", encoding="utf-8", newline="") as stdin_file:
                    stdin_file.write(spec.stdin)

            exit_code, trap = self._call_start(spec, compiled, env, files)

            stdout, stdout_truncated = _read_capped(files.stdout, self._limits.stdout_limit_bytes)
            stderr, stderr_truncated = _read_capped(files.stderr, self._limits.stderr_limit_bytes)
            if trap is not None:
                raise _with_stderr_tail(trap, files.stderr)

        return Outcome(
            completed=True,
            result={
                "exit_code": exit_code,
                "stdout": stdout,
                "stderr": stderr,
                "stdout_truncated": stdout_truncated,
                "stderr_truncated": stderr_truncated,
            },
        )

    def _call_start(
        self, spec: TaskSpec, compiled: _CompiledModule, env: dict[str, str], files: _CommandFiles
    ) -> tuple[int, _TaskFailed | None]:
        """Run _start and return (exit code, None), or (-1, the failure) when it trapped."""
        config = wasmtime.WasiConfig()
        config.argv = [PROGRAM_NAME, *spec.args]
        config.env = list(env.items())
        if files.stdin is not None:
            config.stdin_file = files.stdin
        # NOTE: output files grow on disk until the timeout ends the program,
        # because only reading them back is capped at *_limit_bytes.
        config.stdout_file = files.stdout
        config.stderr_file = files.stderr

        store = self._new_store()
        store.set_wasi(config)

        # NOTE: the epoch deadline is checked only while wasm code runs, so a
        # blocking WASI call outlasts the timeout (a 2 s poll_oneoff sleep did).
        run = self._start_run(store, spec.timeout_seconds)
        try:
            instance = self._instantiate(store, compiled, spec, run)
            instance.exports(store)[WASI_COMMAND_ENTRY](store)
        except wasmtime.ExitTrap as exc:
            return exc.code, None
        except wasmtime.Trap as exc:
            return -1, self._trap_failure(exc, spec, run)
        except _TaskFailed as failure:
            return -1, failure
        finally:
            self._finish_run(run)
        return 0, None

    def _instantiate(self, store: wasmtime.Store, compiled: _CompiledModule, spec: TaskSpec, run: _Run) -> wasmtime.Instance:
        if compiled.instance_pre is None:
            raise _failed(f"instantiation failed: {compiled.link_error}", retryable=False)
        try:
            return compiled.instance_pre.instantiate(store)
        except wasmtime.ExitTrap as exc:
            raise _failed(f"the module's start function exited with code {exc.code}", retryable=False) from exc
        except wasmtime.Trap as exc:
            raise self._trap_failure(exc, spec, run) from exc
        except wasmtime.WasmtimeError as exc:
            # Memory limits are checked before this point, so what remains is a
            # link error such as a WASI function this wasmtime does not provide.
            raise _failed(f"instantiation failed: {_one_line(str(exc))}", retryable=False) from exc

    def _start_run(self, store: wasmtime.Store, timeout_seconds: float) -> _Run:
        """Register a task and set its Store's epoch deadline from the timeout."""
        ticks = _deadline_ticks(timeout_seconds)
        with self._lock:
            # A Store starts with a deadline of 0 ticks, so it would trap at once.
            store.set_epoch_deadline(ticks)
            run = _Run(deadline_epoch=self._epoch + ticks)
            self._runs.add(run)
            if len(self._runs) == 1:
                self._lock.notify()  # wakes the epoch timer
        return run

    def _finish_run(self, run: _Run) -> None:
        with self._lock:
            self._runs.discard(run)

    def _trap_failure(self, trap: wasmtime.Trap, spec: TaskSpec, run: _Run) -> _TaskFailed:
        code = trap.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            if run.interrupted:
                return _failed("interrupted: the worker is shutting down", retryable=True, interrupted=True)
            return _failed(f"timed out after {spec.timeout_seconds:g} s", retryable=True)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return _failed(f"out of fuel: the task used all {self._limits.fuel} units of its fuel budget", retryable=True)
        if code in _TRAP_DESCRIPTIONS:
            return _failed(f"wasm trap: {_TRAP_DESCRIPTIONS[code]}", retryable=False)
        if code is not None:
            return _failed(f"wasm trap: {code.name.lower().replace('_', ' ')}", retryable=False)
        # A trap without a code comes from a host function such as a WASI call.
        return _failed(f"wasm trap: {_one_line(trap.message)}", retryable=False)


def _check_call(info: ModuleInfo, spec: TaskSpec) -> None:
    try:
        check_call(info, spec.func, spec.args)
    except InvalidRequest as exc:
        raise _failed(exc.message, retryable=False) from exc


def _new_engine_config(limits: SandboxLimits) -> wasmtime.Config:
    config = wasmtime.Config()
    config.strategy = "cranelift"
    configure_features(config)
    config.epoch_interruption = True
    config.max_wasm_stack = MAX_WASM_STACK_BYTES
    if limits.fuel is not None:
        config.consume_fuel = True
    return config


def _deadline_ticks(timeout_seconds: float) -> int:
    if not math.isfinite(timeout_seconds) or timeout_seconds <= 0:
        raise _failed(f"invalid timeout_seconds {timeout_seconds!r}: use a positive number of seconds", retryable=False)
    # One extra tick because the current tick is already partly over.
    return math.ceil(timeout_seconds / EPOCH_TICK_SECONDS) + 1


def _check_env(env: dict[str, str] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise _failed(f"invalid env {env!r}: expected an object of string names to string values", retryable=False)
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str) or not name or "=" in name or "\0" in name + value:
            raise _failed(
                f"invalid environment variable {name!r}={value!r}: names must be non-empty strings without '=', "
                "and names and values must be strings without NUL characters",
                retryable=False,
            )
    return env


def _read_capped(path: str, limit_bytes: int) -> tuple[str, bool]:
    """Read at most limit_bytes of a file; return the text and whether more was written."""
    try:
        with open(path, "rb") as output:
            data = output.read(limit_bytes + 1)
    except FileNotFoundError:
        return "", False
    truncated = len(data) > limit_bytes
    return data[:limit_bytes].decode("utf-8", errors="replace"), truncated


def _with_stderr_tail(failure: _TaskFailed, stderr_path: str) -> _TaskFailed:
    try:
        with open(stderr_path, "rb") as stderr_file:
            stderr_file.seek(0, os.SEEK_END)
            size = stderr_file.tell()
            stderr_file.seek(max(0, size - STDERR_TAIL_BYTES))
            tail = stderr_file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        tail = ""
    if not tail:
        return failure
    outcome = failure.outcome
    error = f"{outcome.error}; stderr (last {STDERR_TAIL_BYTES // 1024} KiB):\n{tail}"
    return _failed(error, retryable=outcome.retryable, interrupted=outcome.interrupted)


def _format_mib(size_bytes: int) -> str:
    return f"{size_bytes / MIB:g}"


def _one_line(text: str) -> str:
    return " ".join(text.split())

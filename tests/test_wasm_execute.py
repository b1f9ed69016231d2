"""Sandboxed execution with the real wasmtime and the committed example modules."""

import hashlib
import threading
import time
from pathlib import Path

import pytest
import wasmtime

from rainchanel.wasm.execute import (
    WASM_THREAD_STACK_BYTES,
    Executor,
    Outcome,
    SandboxLimits,
    TaskSpec,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def example(name: str) -> bytes:
    return (EXAMPLES / f"{name}.wasm").read_bytes()


def sha256_of(module_bytes: bytes) -> str:
    return hashlib.sha256(module_bytes).hexdigest()


@pytest.fixture
def make_executor():
    executors = []

    def make(**limits) -> Executor:
        executor = Executor(SandboxLimits(**limits))
        executors.append(executor)
        return executor

    yield make
    for executor in executors:
        executor.close()


@pytest.fixture
def executor(make_executor):
    return make_executor()


def run_module(executor, module_bytes, func, args, timeout_seconds=5.0, **options) -> Outcome:
    spec = TaskSpec(
        task_id=1,
        module_sha256=sha256_of(module_bytes),
        func=func,
        args=args,
        timeout_seconds=timeout_seconds,
        **options,
    )
    return executor.run(spec, module_bytes)


def run_example(executor, name, func, args, timeout_seconds=5.0, **options) -> Outcome:
    return run_module(executor, example(name), func, args, timeout_seconds, **options)


def start_thread(function, *args):
    """Start function on a thread with the stack size workers use.

    Returns the thread and a list that receives the function's return value.
    """
    results = []
    thread = threading.Thread(target=lambda: results.append(function(*args)))
    # The stack size applies to threads started while it is set.
    previous = threading.stack_size(WASM_THREAD_STACK_BYTES)
    try:
        thread.start()
    finally:
        threading.stack_size(previous)
    return thread, results


def test_execute_add(executor):
    outcome = run_example(executor, "math", "add", [2, 3])
    assert outcome == Outcome(completed=True, result=5)


def test_execute_i32_unsigned_argument(executor):
    assert run_example(executor, "math", "add", [4294967295, 0]).result == -1


def test_execute_i64_beyond_double_precision(executor):
    outcome = run_example(executor, "math", "fib", [90])
    assert outcome.result == 2880067194370816120
    assert outcome.result > 2**53


def test_execute_i64_string_arguments(executor):
    outcome = run_example(executor, "math", "mul64", ["18446744073709551615", "2"])
    assert outcome.result == -2


def test_execute_i64_identity_extremes(executor):
    assert run_example(executor, "f32_special", "identity_i64", ["-9223372036854775808"]).result == -(2**63)
    assert run_example(executor, "f32_special", "identity_i64", [2**63]).result == -(2**63)


def test_execute_f64(executor):
    assert run_example(executor, "math", "sqrt_f64", [2]).result == 2**0.5


def test_execute_f32_widened_exactly(executor):
    outcome = run_example(executor, "f32_special", "third_f32", [])
    assert outcome.result == 0.3333333432674408


def test_execute_f32_int_argument(executor):
    assert run_example(executor, "math", "mul_f32", [3, 0.5]).result == 1.5


@pytest.mark.parametrize(("func", "expected"), [("nan_f32", "nan"), ("inf_f32", "inf"), ("neg_inf_f32", "-inf")])
def test_execute_non_finite_results(executor, func, expected):
    assert run_example(executor, "f32_special", func, []).result == expected


def test_execute_non_finite_argument(executor):
    assert run_example(executor, "f32_special", "identity_f64", ["-inf"]).result == "-inf"


def test_execute_multi_value(executor):
    assert run_example(executor, "multi_value", "triple", [3]).result == [3, 3 * 2**32, 3.5]
    assert run_example(executor, "multi_value", "pair", []).result == [-(2**63), 0.10000000149011612]


def test_execute_no_result_is_none(executor):
    outcome = run_module(executor, wasmtime.wat2wasm('(module (func (export "nothing")))'), "nothing", [])
    assert outcome == Outcome(completed=True, result=None)


def test_execute_reactor_initialized_first(executor):
    assert run_example(executor, "reactor", "get", []).result == 42


def test_execute_core_module_importing_wasi(executor):
    module_bytes = wasmtime.wat2wasm(
        """(module
             (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (func (export "answer") (result i32) i32.const 42))"""
    )
    assert run_module(executor, module_bytes, "answer", []).result == 42


def test_execute_invalid_initializer_not_retryable(executor):
    module_bytes = wasmtime.wat2wasm(
        """(module
             (func (export "_initialize") (param i32))
             (func (export "answer") (result i32) i32.const 42))"""
    )
    outcome = run_module(executor, module_bytes, "answer", [])
    assert outcome.completed is False
    assert outcome.error == "invalid module: its _initialize export must take and return nothing"
    assert outcome.retryable is False


def test_execute_function_with_reference_type_not_callable(executor):
    module_bytes = wasmtime.wat2wasm(
        """(module
             (func (export "takes_ref") (param externref))
             (func (export "answer") (result i32) i32.const 42))"""
    )
    outcome = run_module(executor, module_bytes, "takes_ref", [None])
    assert outcome.completed is False
    assert "only i32, i64, f32 and f64" in outcome.error
    assert outcome.retryable is False
    assert run_module(executor, module_bytes, "answer", []).result == 42


def test_execute_verified_bytes_not_hashed_again(executor):
    module_bytes = example("math")
    spec = TaskSpec(task_id=1, module_sha256="a" * 64, func="add", args=[1, 2], timeout_seconds=5)

    # The caller vouches for the bytes, so the executor compiles them under the given digest.
    assert executor.run(spec, module_bytes, bytes_verified=True).result == 3
    assert executor.has_module("a" * 64) is True


@pytest.mark.parametrize(
    ("func", "args", "expected_error"),
    [
        ("div", [1, 0], "integer divide by zero"),
        ("depth", [100_000_000], "call stack exhausted"),
        ("fail", [], "unreachable instruction executed"),
        ("load_i32", [4294967292], "out of bounds memory access"),
    ],
)
def test_execute_trap_named_not_retryable(executor, func, args, expected_error):
    outcome = run_example(executor, "math", func, args)
    assert outcome.completed is False
    assert expected_error in outcome.error
    assert outcome.retryable is False


def test_execute_unknown_function_not_retryable(executor):
    outcome = run_example(executor, "math", "subtract", [1, 2])
    assert outcome.completed is False
    assert "subtract" in outcome.error
    assert outcome.retryable is False


def test_execute_invalid_arguments_not_retryable(executor):
    outcome = run_example(executor, "math", "add", [1, True])
    assert outcome.completed is False
    assert "argument 1" in outcome.error
    assert outcome.retryable is False


def test_execute_endless_loop_times_out(executor):
    started = time.monotonic()
    outcome = run_example(executor, "loop_forever", "spin", [], timeout_seconds=0.3)
    elapsed = time.monotonic() - started
    assert outcome.completed is False
    assert outcome.error == "timed out after 0.3 s"
    assert outcome.retryable is True
    assert outcome.interrupted is False
    assert elapsed < 5
    assert run_example(executor, "math", "add", [1, 1]).result == 2


def test_execute_timeout_after_idle_period(executor):
    assert run_example(executor, "math", "add", [1, 1]).result == 2
    # The epoch timer sleeps while no task runs and must wake for the next one.
    time.sleep(0.3)
    started = time.monotonic()
    outcome = run_example(executor, "loop_forever", "spin", [], timeout_seconds=0.3)
    assert outcome.error == "timed out after 0.3 s"
    assert time.monotonic() - started < 5


def test_execute_endless_start_function_times_out(executor):
    outcome = run_example(executor, "start_loops", "noop", [], timeout_seconds=0.3)
    assert outcome.error == "timed out after 0.3 s"
    assert outcome.retryable is True


def test_execute_endless_wasi_command_times_out(executor):
    outcome = run_example(executor, "wasi_loop", "_start", [], timeout_seconds=0.3)
    assert outcome.error == "timed out after 0.3 s"


def test_execute_memory_grow_past_limit_returns_minus_one(make_executor):
    executor = make_executor(memory_limit_bytes=2 * 1024 * 1024)
    # 1 page + 100 pages is 6.3 MiB, over the 2 MiB limit.
    assert run_example(executor, "grow_memory", "grow", [100]).result == -1
    assert run_example(executor, "grow_memory", "grow", [10]).result == 1


def test_execute_huge_memory_fails_cleanly(executor):
    outcome = run_example(executor, "huge_memory", "noop", [])
    assert outcome.completed is False
    assert outcome.error == (
        "memory limit exceeded: module declares 4096 MiB minimum, the worker allows 256 MiB"
    )
    assert outcome.retryable is True


def test_execute_fuel_exhausted(make_executor):
    executor = make_executor(fuel=100_000)
    outcome = run_example(executor, "loop_forever", "spin", [], timeout_seconds=30)
    assert outcome.completed is False
    assert "out of fuel" in outcome.error
    assert outcome.retryable is True
    assert run_example(executor, "math", "add", [1, 2]).result == 3


def test_execute_fuel_is_per_task(make_executor):
    executor = make_executor(fuel=100_000)
    for _ in range(3):
        assert run_example(executor, "math", "fib", [1000]).completed is True


def test_execute_wasi_stdin_stdout_stderr_exit_code(executor):
    outcome = run_example(executor, "echo", "_start", ["7", "two words"], stdin="hello, wasm\n")
    assert outcome.completed is True
    assert outcome.result == {
        "exit_code": 7,
        "stdout": "HELLO, WASM\n",
        "stderr": "argv[0]=module.wasm\nargv[1]=7\nargv[2]=two words\n",
        "stdout_truncated": False,
        "stderr_truncated": False,
    }


def test_execute_wasi_no_stdin_and_zero_exit(executor):
    outcome = run_example(executor, "echo", "_start", [])
    assert outcome.result["exit_code"] == 0
    assert outcome.result["stdout"] == ""


def test_execute_wasi_env(executor):
    outcome = run_example(executor, "echo", "_start", [], stdin="x", env={"ECHO_PREFIX": "> "})
    assert outcome.result["stdout"] == "> X"


def test_execute_wasi_env_not_inherited(executor, monkeypatch):
    monkeypatch.setenv("ECHO_PREFIX", "from the worker")
    outcome = run_example(executor, "echo", "_start", [], stdin="x")
    assert outcome.result["stdout"] == "X"


def test_execute_wasi_output_truncated(make_executor):
    executor = make_executor(stdout_limit_bytes=1000, stderr_limit_bytes=10)
    outcome = run_example(executor, "echo", "_start", [], stdin="a" * 5000)
    assert outcome.result["stdout"] == "A" * 1000
    assert outcome.result["stdout_truncated"] is True
    assert outcome.result["stderr"] == "argv[0]=mo"
    assert outcome.result["stderr_truncated"] is True


def test_execute_wasi_invalid_utf8_replaced(executor):
    outcome = run_example(executor, "invalid_utf8", "_start", [])
    assert outcome.result["stdout"] == "ok \ufffd\ufffd end"


def test_execute_wasi_proc_exit(executor):
    outcome = run_example(executor, "exit_with", "_start", [])
    assert outcome.completed is True
    assert outcome.result["exit_code"] == 3


def test_execute_wasi_trap_includes_stderr(executor):
    outcome = run_example(executor, "trap_stderr", "_start", [])
    assert outcome.completed is False
    assert "unreachable instruction executed" in outcome.error
    assert "about to trap" in outcome.error
    assert outcome.retryable is False


def test_execute_interrupt_all(executor):
    thread, results = start_thread(run_example, executor, "loop_forever", "spin", [], 60)
    time.sleep(0.5)

    executor.interrupt_all()
    thread.join(timeout=10)

    assert not thread.is_alive()
    outcome = results[0]
    assert outcome.completed is False
    assert outcome.interrupted is True
    assert outcome.retryable is True
    assert "timed out" not in outcome.error
    assert run_example(executor, "math", "add", [1, 1]).result == 2


def test_execute_module_cache_reused(executor):
    module_bytes = example("math")
    sha256 = sha256_of(module_bytes)
    assert executor.has_module(sha256) is False

    run_module(executor, module_bytes, "add", [1, 2])

    assert executor.has_module(sha256) is True
    spec = TaskSpec(task_id=2, module_sha256=sha256, func="add", args=[3, 4], timeout_seconds=5)
    assert executor.run(spec, None).result == 7


def test_execute_module_cache_bounded(make_executor):
    executor = Executor(SandboxLimits(), module_cache_size=1)
    try:
        run_example(executor, "math", "add", [1, 2])
        run_example(executor, "add", "add", [1, 2])
        assert executor.has_module(sha256_of(example("add"))) is True
        assert executor.has_module(sha256_of(example("math"))) is False
    finally:
        executor.close()


def test_execute_uncached_module_without_bytes(executor):
    spec = TaskSpec(task_id=3, module_sha256="0" * 64, func="add", args=[1, 2], timeout_seconds=5)
    outcome = executor.run(spec, None)
    assert outcome.completed is False
    assert "not cached" in outcome.error
    assert outcome.retryable is True


def test_execute_module_sha256_mismatch(executor):
    spec = TaskSpec(task_id=4, module_sha256="0" * 64, func="add", args=[1, 2], timeout_seconds=5)
    outcome = executor.run(spec, example("math"))
    assert outcome.completed is False
    assert "SHA-256" in outcome.error


def test_execute_parallel_threads_overlap(executor):
    started = time.monotonic()
    runs = [start_thread(run_example, executor, "loop_forever", "spin", [], 1.0) for _ in range(2)]
    for thread, _results in runs:
        thread.join(timeout=30)
    elapsed = time.monotonic() - started

    for _thread, results in runs:
        assert results[0].error == "timed out after 1 s"
    # Run one after the other, the two tasks would take at least 2 s.
    assert elapsed < 1.9


def test_execute_close_interrupts_running_task():
    executor = Executor()
    thread, results = start_thread(run_example, executor, "loop_forever", "spin", [], 60)
    time.sleep(0.5)

    executor.close()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert results[0].interrupted is True

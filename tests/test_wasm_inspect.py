"""Module validation and call checks, against the committed example modules."""

import threading
from pathlib import Path

import pytest
import wasmtime

from rainchanel.errors import InvalidArguments, InvalidModule, UnknownFunction
from rainchanel.wasm.inspect import (
    FunctionSignature,
    check_call,
    inspect_module,
    new_validation_engine,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def engine():
    return new_validation_engine()


@pytest.fixture(scope="module")
def inspect_example(engine):
    def inspect(name):
        return inspect_module(engine, (EXAMPLES / f"{name}.wasm").read_bytes())

    return inspect


def test_inspect_math_signatures(inspect_example):
    info = inspect_example("math")
    assert info.functions["add"] == FunctionSignature(params=("i32", "i32"), results=("i32",))
    assert info.functions["mul64"] == FunctionSignature(params=("i64", "i64"), results=("i64",))
    assert info.functions["fib"] == FunctionSignature(params=("i32",), results=("i64",))
    assert info.functions["sqrt_f64"] == FunctionSignature(params=("f64",), results=("f64",))
    assert info.functions["mul_f32"] == FunctionSignature(params=("f32", "f32"), results=("f32",))
    assert "memory" not in info.functions
    assert info.imports == ()
    assert info.is_wasi is False
    assert info.min_memory_bytes == 2 * 65536


def test_inspect_multi_value_results(inspect_example):
    info = inspect_example("multi_value")
    assert info.functions["triple"].results == ("i32", "i64", "f64")
    assert info.min_memory_bytes is None


def test_inspect_wasi_command(inspect_example):
    info = inspect_example("echo")
    assert info.is_wasi is True
    assert info.functions["_start"] == FunctionSignature(params=(), results=())
    assert "wasi_snapshot_preview1.fd_write" in info.imports
    assert all(name.startswith("wasi_snapshot_preview1.") for name in info.imports)


def test_inspect_huge_memory_minimum(inspect_example):
    assert inspect_example("huge_memory").min_memory_bytes == 4 * 1024**3


def test_inspect_unexported_memory(engine):
    info = inspect_module(engine, wasmtime.wat2wasm("(module (memory 3))"))
    assert info.min_memory_bytes == 3 * 65536


def test_inspect_bad_import_rejected(inspect_example):
    with pytest.raises(InvalidModule) as raised:
        inspect_example("bad_import")
    assert "env.foo" in raised.value.message
    assert "wasi_snapshot_preview1" in raised.value.message


def test_inspect_non_function_imports_named(engine):
    module_bytes = wasmtime.wat2wasm(
        """(module
             (import "env" "memory" (memory 1))
             (import "wasi_snapshot_preview1" "counter" (global i32))
             (import "env" "log" (func)))"""
    )
    with pytest.raises(InvalidModule) as raised:
        inspect_module(engine, module_bytes)
    assert "env.memory (memory)" in raised.value.message
    assert "wasi_snapshot_preview1.counter (global)" in raised.value.message
    assert "env.log" in raised.value.message


@pytest.mark.parametrize(
    "module_bytes",
    [b"", b"hello", b"\x00asm", b"\x00asm\x01\x00\x00\x00\x05", b"(module)"],
)
def test_inspect_invalid_bytes(engine, module_bytes):
    with pytest.raises(InvalidModule) as raised:
        inspect_module(engine, module_bytes)
    assert raised.value.message.startswith("not a WebAssembly module: ")


def test_inspect_invalid_reason_from_validator(engine):
    with pytest.raises(InvalidModule) as raised:
        inspect_module(engine, b"\x00asm\x01\x00\x00\x00\x05")
    assert "unexpected end-of-file" in raised.value.message
    assert "\n" not in raised.value.message


def test_inspect_type_error_rejected(engine):
    # Well-formed binary whose function body does not type-check.
    module_bytes = wasmtime.wat2wasm("(module (func (result i32)))")
    with pytest.raises(InvalidModule) as raised:
        inspect_module(engine, module_bytes)
    assert "type mismatch" in raised.value.message


def test_inspect_v128_signature_reported(engine):
    module_bytes = wasmtime.wat2wasm(
        """(module (func (export "vector") (param v128 externref) (result i32)
             i32.const 0))"""
    )
    info = inspect_module(engine, module_bytes)
    assert info.functions["vector"].params == ("v128", "externref")


def test_inspect_from_many_threads(engine):
    module_bytes = (EXAMPLES / "math.wasm").read_bytes()
    results = []

    def inspect():
        results.append(inspect_module(engine, module_bytes))

    threads = [threading.Thread(target=inspect) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(info == results[0] for info in results)


def test_check_call_returns_args_unchanged(inspect_example):
    info = inspect_example("math")
    assert check_call(info, "add", [1, 4294967295]) == [1, 4294967295]
    assert check_call(info, "mul64", ["18446744073709551615", -3]) == ["18446744073709551615", -3]


def test_check_call_unknown_function_lists_exports(inspect_example):
    info = inspect_example("math")
    with pytest.raises(UnknownFunction) as raised:
        check_call(info, "subtract", [1, 2])
    message = raised.value.message
    assert "'subtract'" in message
    assert "add, depth, div, fail, fib, load_i32, mul64, mul_f32, sqrt_f64" in message


def test_check_call_memory_export_is_not_a_function(inspect_example):
    with pytest.raises(UnknownFunction):
        check_call(inspect_example("math"), "memory", [])


@pytest.mark.parametrize(
    ("args", "expected_words"),
    [
        ({"a": 1}, "JSON array"),
        ([1], "takes 2"),
        ([1, True], "argument 1"),
        ([1.0, 2], "argument 0"),
        ([1, 2**32], "out of range"),
    ],
)
def test_check_call_invalid_arguments(inspect_example, args, expected_words):
    with pytest.raises(InvalidArguments) as raised:
        check_call(inspect_example("math"), "add", args)
    assert expected_words in raised.value.message


def test_check_call_f32_overflow(inspect_example):
    with pytest.raises(InvalidArguments) as raised:
        check_call(inspect_example("math"), "mul_f32", [1e39, 1])
    assert "f32" in raised.value.message


def test_check_call_reference_signature_rejected(engine):
    module_bytes = wasmtime.wat2wasm(
        """(module (func (export "vector") (param v128) (result i32) i32.const 0))"""
    )
    info = inspect_module(engine, module_bytes)
    with pytest.raises(InvalidArguments) as raised:
        check_call(info, "vector", [0])
    assert "cannot be called" in raised.value.message
    assert "v128" in raised.value.message


def test_check_call_command_takes_strings(inspect_example):
    info = inspect_example("echo")
    assert check_call(info, "_start", ["3", "x y"]) == ["3", "x y"]
    assert check_call(info, "_start", []) == []


@pytest.mark.parametrize("args", [[3], "3", None, ["ok", None]])
def test_check_call_command_rejects_non_strings(inspect_example, args):
    with pytest.raises(InvalidArguments) as raised:
        check_call(inspect_example("echo"), "_start", args)
    assert "string" in raised.value.message


def test_check_call_command_start_must_be_nullary(engine):
    module_bytes = wasmtime.wat2wasm(
        """(module
             (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
             (func (export "_start") (param i32)))"""
    )
    info = inspect_module(engine, module_bytes)
    with pytest.raises(InvalidArguments) as raised:
        check_call(info, "_start", [])
    assert "() -> ()" in raised.value.message

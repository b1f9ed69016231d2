"""Conversion between JSON task arguments and results and WebAssembly values.

Arguments arrive as a JSON array matched to the function's parameter types:

- i32 takes integers in [-2**31, 2**32); the upper half is the unsigned bit pattern.
- i64 takes integers in [-2**63, 2**64), as a JSON integer or as a decimal
  string (an optional minus sign and digits), because JSON parsers in other
  languages lose precision above 2**53.
- f32 and f64 take numbers or the strings "nan", "inf" and "-inf".

Booleans and non-integral numbers are not integers: True, 1.0 and 1.5 are all
rejected for i32 and i64.
"""

import math
import re
import struct
from collections.abc import Sequence

from rainchanel.errors import InvalidArguments

NUMERIC_TYPES = frozenset({"i32", "i64", "f32", "f64"})

NON_FINITE_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

_DECIMAL_INTEGER = re.compile(r"-?[0-9]+")

_INTEGER_BITS = {"i32": 32, "i64": 64}

# Largest finite float32, as a double.
_F32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]


def to_wasm_values(params: Sequence[str], args: Sequence[object]) -> list[int | float]:
    """Validate JSON arguments against parameter types and convert them for wasmtime.

    Integers in the unsigned upper half become their signed value, i64 strings
    become ints and every f32/f64 argument becomes a float. Raises
    InvalidArguments naming the argument index, the expected type and the value.
    """
    if not isinstance(args, (list, tuple)):
        raise InvalidArguments(
            f"invalid args {_show(args)}: expected a JSON array with one value "
            f"per parameter ({_describe_params(params)})"
        )
    if len(args) != len(params):
        raise InvalidArguments(
            f"invalid args: the function takes {_count(len(params), 'argument')} "
            f"({_describe_params(params)}) but got {len(args)}: {_show(args)}"
        )
    return [_to_wasm_value(index, wasm_type, value) for index, (wasm_type, value) in enumerate(zip(params, args))]


def from_wasm_values(result_types: Sequence[str], values) -> object:
    """Convert the values a wasmtime call returned into a JSON result.

    Returns None for no results, the value itself for one result and a list for
    several. Integers are signed, floats are exact Python floats (an f32
    widened to double) and non-finite floats become "nan", "inf" or "-inf".
    """
    if len(result_types) == 0:
        return None
    if len(result_types) == 1:
        # wasmtime returns a single result bare rather than in a list.
        return _from_wasm_value(result_types[0], values)
    return [_from_wasm_value(wasm_type, value) for wasm_type, value in zip(result_types, values)]


def _to_wasm_value(index: int, wasm_type: str, value: object) -> int | float:
    if wasm_type in _INTEGER_BITS:
        return _to_wasm_integer(index, wasm_type, value)
    if wasm_type in ("f32", "f64"):
        return _to_wasm_float(index, wasm_type, value)
    raise InvalidArguments(
        f"invalid argument {index}: parameter type {wasm_type} cannot be passed from JSON; "
        "only i32, i64, f32 and f64 parameters can be called"
    )


def _to_wasm_integer(index: int, wasm_type: str, value: object) -> int:
    bits = _INTEGER_BITS[wasm_type]
    low = -(2 ** (bits - 1))
    high = 2**bits - 1
    if wasm_type == "i64" and isinstance(value, str) and _DECIMAL_INTEGER.fullmatch(value):
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        accepted = "an integer or a decimal string" if wasm_type == "i64" else "an integer"
        raise InvalidArguments(
            f"invalid argument {index}: expected {wasm_type} ({accepted}), got {_show(value)}"
        )

    if not low <= number <= high:
        raise InvalidArguments(
            f"invalid argument {index}: {wasm_type} value {_show(value)} is out of range; "
            f"use an integer from {low} to {high}"
        )
    # Values in the upper half are the unsigned reading of a negative bit pattern.
    if number >= 2 ** (bits - 1):
        number -= 2**bits
    return number


def _to_wasm_float(index: int, wasm_type: str, value: object) -> float:
    if isinstance(value, str) and value in NON_FINITE_FLOATS:
        return NON_FINITE_FLOATS[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArguments(
            f'invalid argument {index}: expected {wasm_type} (a number or "nan", "inf", "-inf"), '
            f"got {_show(value)}"
        )

    try:
        number = float(value)
    except OverflowError:
        raise InvalidArguments(
            f"invalid argument {index}: {wasm_type} value {_show(value)} is out of range"
        ) from None
    if wasm_type == "f32" and math.isfinite(number) and abs(number) > _F32_MAX:
        raise InvalidArguments(
            f"invalid argument {index}: f32 value {_show(value)} is out of range; "
            f'the largest finite f32 is {_F32_MAX!r}, use "inf" for infinity'
        )
    return number


def _from_wasm_value(wasm_type: str, value: object) -> object:
    if wasm_type in ("f32", "f64"):
        number = float(value)
        if math.isnan(number):
            return "nan"
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return number
    return value


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _describe_params(params: Sequence[str]) -> str:
    return ", ".join(params) if params else "no parameters"


def _show(value: object, limit: int = 80) -> str:
    text = repr(value)
    if len(text) > limit:
        return text[: limit - 3] + "..."
    return text

"""Typing rules for task arguments and the JSON form of results."""

import math

import pytest

from rainchanel.errors import InvalidArguments
from rainchanel.wasm.values import from_wasm_values, to_wasm_values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (-(2**31), -(2**31)),
        (2**31 - 1, 2**31 - 1),
        (2**31, -(2**31)),
        (2**32 - 1, -1),
    ],
)
def test_i32_accepts_signed_and_unsigned_range(value, expected):
    assert to_wasm_values(["i32"], [value]) == [expected]


@pytest.mark.parametrize("value", [2**32, -(2**31) - 1])
def test_i32_rejects_out_of_range(value):
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["i32"], [value])
    assert "argument 0" in raised.value.message
    assert "i32" in raised.value.message
    assert str(value) in raised.value.message


@pytest.mark.parametrize("value", [True, False, 1.0, 1.5, "1", None, [1]])
def test_i32_rejects_non_integers(value):
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["i32"], [value])
    assert "i32" in raised.value.message
    assert repr(value) in raised.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2**63 - 1, 2**63 - 1),
        (2**63, -(2**63)),
        (2**64 - 1, -1),
        (-(2**63), -(2**63)),
        ("18446744073709551615", -1),
        ("-9223372036854775808", -(2**63)),
        ("9007199254740993", 9007199254740993),
        ("0", 0),
    ],
)
def test_i64_accepts_integers_and_decimal_strings(value, expected):
    assert to_wasm_values(["i64"], [value]) == [expected]


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, "18446744073709551616", "-9223372036854775809"])
def test_i64_rejects_out_of_range(value):
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["i64"], [value])
    assert "out of range" in raised.value.message


@pytest.mark.parametrize("value", [True, 1.0, "1.5", "0x10", " 1", "+1", "", "1e3", None])
def test_i64_rejects_non_integers(value):
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["i64"], [value])
    assert "i64" in raised.value.message


@pytest.mark.parametrize("wasm_type", ["f32", "f64"])
def test_floats_accept_ints_and_floats(wasm_type):
    converted = to_wasm_values([wasm_type, wasm_type], [2, 0.5])
    assert converted == [2.0, 0.5]
    assert all(isinstance(value, float) for value in converted)


@pytest.mark.parametrize("wasm_type", ["f32", "f64"])
def test_floats_accept_non_finite_strings(wasm_type):
    nan, inf, neg_inf = to_wasm_values([wasm_type] * 3, ["nan", "inf", "-inf"])
    assert math.isnan(nan)
    assert inf == math.inf
    assert neg_inf == -math.inf


@pytest.mark.parametrize("value", [True, "1.5", "NaN", "infinity", None])
def test_floats_reject_other_values(value):
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["f64"], [value])
    assert "f64" in raised.value.message


def test_f32_rejects_finite_overflow():
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["f32"], [1e39])
    assert "f32" in raised.value.message
    assert "1e+39" in raised.value.message


def test_f32_accepts_largest_finite_value():
    assert to_wasm_values(["f32"], [3.4028234663852886e38]) == [3.4028234663852886e38]


def test_f64_accepts_large_finite_value():
    assert to_wasm_values(["f64"], [1e300]) == [1e300]


def test_f64_rejects_int_beyond_double_range():
    with pytest.raises(InvalidArguments):
        to_wasm_values(["f64"], [10**400])


def test_arguments_must_be_a_list():
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["i32"], {"a": 1})
    assert "JSON array" in raised.value.message


def test_argument_count_must_match():
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["i32", "i32"], [1])
    assert "takes 2" in raised.value.message
    assert "takes 2 arguments (i32, i32) but got 1: [1]" in raised.value.message


def test_error_names_argument_index():
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["i32", "i64", "f64"], [1, 2, "x"])
    assert "argument 2" in raised.value.message


def test_reference_parameter_rejected():
    with pytest.raises(InvalidArguments) as raised:
        to_wasm_values(["externref"], [None])
    assert "externref" in raised.value.message


def test_results_none_single_and_several():
    assert from_wasm_values([], None) is None
    assert from_wasm_values(["i32"], 7) == 7
    assert from_wasm_values(["i32", "i64", "f64"], [1, 2**62, 0.5]) == [1, 2**62, 0.5]


def test_results_non_finite_as_strings():
    assert from_wasm_values(["f32"], math.nan) == "nan"
    assert from_wasm_values(["f64"], math.inf) == "inf"
    assert from_wasm_values(["f64", "f32"], [-math.inf, 1.5]) == ["-inf", 1.5]


def test_results_keep_signed_integers():
    assert from_wasm_values(["i64"], -(2**63)) == -(2**63)
    assert from_wasm_values(["i32"], -1) == -1

"""The bits the exactness test reads: each float's lowest set bit, and a row's common quantum, in any float type."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bnprops.model.exactness import lowest_bit_exponent, quantum, sums_exactly

WIDTHS = {"float16": 16, "float32": 32, "float64": 64}


def defined_exponent(value: float) -> float:
    """The definition: k with value / 2^k an odd integer (+inf for zero, NaN where not finite)."""
    if not math.isfinite(value):
        return math.nan
    if value == 0:
        return math.inf
    exact, k = Fraction(abs(value)), 0
    while exact.denominator != 1:
        exact, k = exact * 2, k - 1
    numerator = exact.numerator
    while numerator % 2 == 0:
        numerator, k = numerator // 2, k + 1
    return float(k)


def same(found: float, expected: float) -> bool:
    return (math.isnan(found) and math.isnan(expected)) or found == expected


@pytest.mark.parametrize("dtype", list(WIDTHS))
@given(data=st.data())
def test_the_lowest_bit_exponent_is_that_of_the_lowest_set_bit(dtype: str, data: st.DataObject) -> None:
    values = data.draw(hnp.arrays(dtype, st.integers(1, 8), elements=st.floats(width=WIDTHS[dtype])))
    found = lowest_bit_exponent(values)
    expected = [defined_exponent(float(v)) for v in values]
    assert all(same(float(f), e) for f, e in zip(found, expected, strict=True)), (values, found, expected)


@pytest.mark.parametrize("dtype", list(WIDTHS))
@given(data=st.data())
def test_a_rows_quantum_is_its_least_exponent_in_its_own_type_as_in_float64(dtype: str, data: st.DataObject) -> None:
    rows = data.draw(
        hnp.arrays(dtype, st.tuples(st.integers(1, 3), st.integers(1, 6)), elements=st.floats(width=WIDTHS[dtype]))
    )
    found = quantum(rows)
    for row, q in zip(rows, found, strict=True):
        exponents = [defined_exponent(float(v)) for v in row]
        expected = math.nan if any(math.isnan(e) for e in exponents) else min(exponents)
        assert same(float(q), expected), (row, q, expected)
    assert np.array_equal(found, quantum(rows.astype(np.float64)), equal_nan=True)


def test_a_row_of_zeros_has_an_infinite_quantum_and_no_row_none() -> None:
    assert quantum(np.zeros((2, 3), np.float16)).tolist() == [math.inf, math.inf]
    assert quantum(np.zeros((2, 0))).tolist() == [math.inf, math.inf]


@given(
    a=st.floats(width=32) | st.floats(),
    b=st.floats(allow_nan=False, allow_infinity=False),
    total=st.floats(width=32) | st.floats(),
)
def test_a_sum_is_exact_where_its_rationals_add_up(a: float, b: float, total: float) -> None:
    found = bool(sums_exactly(np.array([a]), b, np.array([total]))[0])
    finite = math.isfinite(a) and math.isfinite(total)
    assert found == (finite and Fraction(a) + Fraction(b) == Fraction(total)), (a, b, total)


@given(a=st.floats(allow_nan=False, allow_infinity=False), b=st.floats(allow_nan=False, allow_infinity=False))
def test_a_sum_float64_rounded_is_exact_where_nothing_was_lost(a: float, b: float) -> None:
    total = np.array([a]) + b
    found = bool(sums_exactly(np.array([a]), b, total)[0])
    assert found == (math.isfinite(total[0]) and Fraction(a) + Fraction(b) == Fraction(float(total[0])))

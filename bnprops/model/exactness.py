"""Which per-channel sums and roundings a float kernel performs exactly, whatever the order of its additions.

A sum of terms that are all integer multiples of one power of two ``q`` (their common quantum)
and whose absolute values add up to less than ``2^(p-1) q`` (``p`` the accumulation type's
significand bits) is exact in that type: every partial sum, in any order and any tree, is a
multiple of ``q`` no larger than the total, so it is representable.  The same argument makes a
difference ``x - mean`` exact, and a product of two such values exact when their significant bits
add up to fewer than ``p``.  oneDNN's benchdnn fills BatchNorm's data that way to hold kernels to a
few ulps at any size; bnprops's "exact" value regime does the same (search.strategies), and
the error model asks this module so that an exact sum contributes no summation error at all.

Everything here is derived from the inputs' bits (never from float64 results that may themselves
be rounded), and every test errs towards "not exact".
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from bnprops.base.float_warnings import ignoring

#: A sample of each channel tried first: if its own terms already fail, the whole channel does.
_SAMPLE = 64


def representable(values: np.ndarray, dtype: str) -> np.ndarray:
    """Element-wise: is the float64 value exactly a ``dtype`` number (and finite)?"""
    with ignoring("over", "invalid"):
        return np.asarray(np.isfinite(values) & (values.astype(dtype).astype(np.float64) == values), dtype=bool)


def significand_bits(dtype: str) -> int:
    return int(np.finfo(np.dtype(dtype)).nmant) + 1


def rows(values: np.ndarray, channel_axis: int) -> np.ndarray:
    """One row per channel, each contiguous (so that a sum along a row adds in the same order whatever the other
    rows: numpy orders a reduction by the array's strides)."""
    channels = values.shape[channel_axis]
    moved = np.moveaxis(values, channel_axis, 0).reshape(channels, values.size // channels if channels else 0)
    return np.ascontiguousarray(moved)


def channel_sum(values: np.ndarray, channel_axis: int) -> np.ndarray:
    """Per channel, the sum of its elements, added in one order whatever the other channels are: a stacked group's
    channels get the bits they get in their own case (numpy's sum over several axes orders by the whole shape)."""
    return np.asarray(rows(values, channel_axis).sum(axis=1))


def channel_mean(values: np.ndarray, channel_axis: int) -> np.ndarray:
    """channel_sum over the count (NaN for a channel of no elements, as numpy's mean)."""
    total = channel_sum(values, channel_axis)
    with ignoring("invalid", "divide"):
        return np.asarray(total / (values.size // max(values.shape[channel_axis], 1)))


#: Per float type: the integer type of its bits, its stored significand bits and its exponent bias.
_BITS = {
    np.dtype(np.float16): (np.int16, 10, 15),
    np.dtype(np.float32): (np.int32, 23, 127),
    np.dtype(np.float64): (np.int64, 52, 1023),
}
#: A zero's exponent before it becomes +inf (above any float's).
_ZERO = np.iinfo(np.int32).max


def _lowest_bits(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 log2 of each value's lowest set bit, read from its bits in its own type (no conversion: a float16
    array costs a sixth of its float64 copy), ``_ZERO`` for zero; and where the value is not finite."""
    values = np.ascontiguousarray(values)
    kind, stored, bias = _BITS[values.dtype]
    bits = values.view(kind)
    top = (1 << (8 * values.itemsize - 1 - stored)) - 1  # the biased exponent of inf and NaN
    biased = (bits >> stored) & top
    significand = (bits & ((1 << stored) - 1)) | ((biased != 0).astype(kind) << stored)
    lowest = (significand & -significand).astype(np.float64)  # a power of two (or 0): its exponent field is exact
    exponent = (lowest.view(np.int64) >> 52).astype(np.int32) - 1023
    found = np.maximum(biased, 1).astype(np.int32) - (bias + stored) + exponent
    return np.where(significand == 0, _ZERO, found), biased == top


def lowest_bit_exponent(values: np.ndarray) -> np.ndarray:
    """log2 of the lowest set bit of each float (``+inf`` for zero, NaN where not finite)."""
    found, nonfinite = _lowest_bits(values)
    result = np.where(found == _ZERO, np.inf, found.astype(np.float64))
    return np.asarray(np.where(nonfinite, np.nan, result), dtype=np.float64).reshape(np.shape(values))


def quantum(channel_rows: np.ndarray) -> np.ndarray:
    """Per row: the exponent of the largest power of two every element is a multiple of (+inf: all zero; NaN: a
    value not finite). The rows may be of any float type: the bits are read in it."""
    if channel_rows.shape[1] == 0:
        return np.full(channel_rows.shape[0], np.inf)
    found, nonfinite = _lowest_bits(channel_rows)
    least = found.min(axis=1)
    result = np.where(least == _ZERO, np.inf, least.astype(np.float64))
    return np.asarray(np.where(nonfinite.any(axis=1), np.nan, result), dtype=np.float64)


def fits(total: np.ndarray, quantum_exponent: np.ndarray, dtype: str) -> np.ndarray:
    """Does a multiple of 2^quantum as large as ``total`` (a float64 estimate) fit ``dtype``'s significand?

    One bit of margin absorbs the float64 rounding of ``total`` itself.
    """
    with ignoring("over", "invalid"):
        limit = np.exp2(significand_bits(dtype) - 1 + np.where(np.isfinite(quantum_exponent), quantum_exponent, 0))
        return np.asarray(np.where(np.isfinite(quantum_exponent), total < limit, True), dtype=bool)


def exact_input_sums(values: np.ndarray, *, channel_axis: int, dtype: str) -> np.ndarray:
    """Per channel: is the sum of these input values (exact numbers, of any float type) formed exactly in
    ``dtype``? (Their magnitudes are added in float64, their quanta read in their own type.)"""
    r = rows(values, channel_axis)
    finite = np.asarray(
        np.all(np.isfinite(r), axis=1), dtype=bool
    )  # (a channel's own: a NaN elsewhere spoils no other channel's sum)
    if r.shape[1] <= 1:
        return finite
    if not finite.all():
        r = np.where(finite[:, None], r, 0.0)
    head = r[:, :_SAMPLE]
    exact = np.asarray(finite & fits(np.abs(head.astype(np.float64)).sum(axis=1), quantum(head), dtype))
    if exact.any() and r.shape[1] > _SAMPLE:
        whole = r[exact]
        exact[exact] = fits(np.abs(whole.astype(np.float64)).sum(axis=1), quantum(whole), dtype)
    return exact


def sums_exactly(a: np.ndarray, b: float, total: np.ndarray) -> np.ndarray:
    """Element-wise: is ``a + b`` exactly ``total`` (all finite)? Knuth's TwoSum: float64's sum of the two, and
    what it lost, which is exactly 0 where the sum is exact."""
    a, total = np.asarray(a, dtype=np.float64), np.asarray(total, dtype=np.float64)
    with ignoring("invalid", "over"):
        s = a + b
        b_part = s - a
        lost = (a - (s - b_part)) + (b - b_part)
        return np.asarray(np.isfinite(a) & np.isfinite(total) & (s == total) & (lost == 0), dtype=bool)


def exact_quotients(numerators: list[Fraction | None], divisor: int, quotients: np.ndarray) -> np.ndarray:
    """Per channel: is ``quotient * divisor`` exactly the (exact) numerator, so that dividing is exact? (None: no
    exact numerator.)"""
    pairs = zip(numerators, quotients, strict=True)
    return np.array(
        [n is not None and bool(np.isfinite(q)) and Fraction(float(q)) * divisor == n for n, q in pairs], dtype=bool
    )

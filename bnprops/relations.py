"""Exact metamorphic relations: two BatchNorm calls whose results must agree bit for bit, no oracle needed.

Each relation comes from the operator's arithmetic, not from its closed form: a float kernel that
multiplies, divides, adds and takes square roots in some fixed order gives results that scale
*exactly* when its inputs scale by powers of two, as long as no rounding happens in the subnormal
range and nothing overflows (rounding to nearest, or toward zero, commutes with multiplication by
2^k there). The relations:

* ``scale-data``: x * 2^k with eps * 4^k (and moving_mean * 2^k, moving_var * 4^k) leaves y, dgamma
  and dbeta bit-identical and scales dx by 2^-k;
* ``scale-head``: dy * 2^k scales dx, dgamma and dbeta by 2^k, and leaves the forward alone;
* ``scale-affine``: gamma and beta * 2^k scale y and dx by 2^k (fix_gamma=False); with fix_gamma=True
  gamma * 2^k changes nothing at all;
* ``permute-channels``: permuting the channels permutes every per-channel result;
* ``repeat``: the same call twice gives the same bits.

Where a scaling relation is not exact, the code works out from the case which of the kernel's
intermediate values (float16 ones included: MXNet's native float16 kernel rounds ``x - mean``,
``(x - mean) * dy``, ``var + eps`` and more to float16, mshadow's ``half_t`` operators) might leave the
normal range, for the original call and for the scaled one, and admits only the powers k for which
none does (``parameters``); results whose own last rounding falls in the subnormal or overflow
range are not judged, element by element (``check``). Nothing else is excused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bnprops.case import GRAD_TARGETS, GRADIENT_OF, PRIOR_FIELDS, QUANTITIES, Case, Outputs
from bnprops.params import parsed

# ---------------------------------------------------------------------------------------------------
# Floating-point formats


@dataclasses.dataclass(frozen=True)
class _Format:
    name: str
    precision: int  # significand bits, the implicit one included
    emin: int  # exponent of the smallest normal number
    emax: int  # exponent of the largest finite number's leading bit
    subnormal: int  # exponent of the smallest subnormal number

    @property
    def normal_min(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def largest(self) -> float:
        return float(np.finfo(self.name).max)

    @property
    def unit(self) -> float:
        return math.ldexp(1.0, -self.precision)


FORMATS = {
    "float16": _Format("float16", 11, -14, 15, -24),
    "float32": _Format("float32", 24, -126, 127, -149),
    "float64": _Format("float64", 53, -1022, 1023, -1074),
}
#: Bits of headroom kept between a float32/float64 intermediate and the edges of its normal range: the
#: magnitudes below are estimates of MXNet's intermediates (oneDNN's order of operations is not MXNet's).
HEADROOM_WIDE = 16
#: float16 has 30 binades in all: its intermediates keep one bit (their lower bounds already have slack).
HEADROOM_HALF = 1
#: The largest |k| a scaling relation draws.
K_MAX = 48


def _accumulation(dtype: str) -> str:
    """AccReal: the type MXNet's CPU kernels sum and scale in (float32 for float16 data)."""
    return "float64" if dtype == "float64" else "float32"


def _quantum(value: float, fmt: _Format) -> float:
    """The spacing of ``fmt`` numbers at ``value`` (> 0): a nonzero sum of multiples of it is at least it."""
    exponent = max(math.frexp(value)[1] - fmt.precision, fmt.subnormal)
    return math.ldexp(1.0, exponent)


def _low_bits(values: np.ndarray) -> np.ndarray:
    """Per element, the exponent of the lowest set bit (inf for 0 and non-finite values)."""
    v = np.abs(values.astype(np.float64))
    usable = np.isfinite(v) & (v != 0)
    out = np.full(v.shape, np.inf)
    if usable.any():
        mantissa, exponent = np.frexp(v[usable])
        ints = (mantissa * 2.0**53).astype(np.int64)
        lowest = ints & -ints
        out[usable] = exponent - 53 + (np.frexp(lowest.astype(np.float64))[1] - 1)
    return out


def _high_bit(values: np.ndarray) -> float:
    """The exponent of the leading bit of the largest finite magnitude (-inf if every value is 0 or non-finite)."""
    v = np.abs(values.astype(np.float64))
    v = v[np.isfinite(v) & (v != 0)]
    return float(np.frexp(v.max())[1] - 1) if v.size else -math.inf


# ---------------------------------------------------------------------------------------------------
# What the kernels compute, in magnitudes


@dataclasses.dataclass(frozen=True)
class Family:
    """Values of one kind that a kernel forms and rounds to ``dtype``: e.g. every ``(x - mean) * dy``.

    ``lower`` bounds the magnitude of any *nonzero* value (inf: none can be nonzero), ``upper`` every
    value; ``exponent`` says, per relation, that the family scales by 2^(exponent * k). A family whose
    result is not rounded (a difference, which is exact wherever it is subnormal) has ``lower`` inf.
    """

    name: str
    dtype: str
    lower: float
    upper: float
    exponent: Mapping[str, int]


def _rows(case: Case, arr: np.ndarray) -> np.ndarray:
    """``arr`` (shaped like x) as float64 rows, one per channel."""
    return np.moveaxis(arr, case.channel_axis, 0).reshape(case.channels, -1).astype(np.float64)


def _least(values: np.ndarray, where: np.ndarray | None = None) -> float:
    """The smallest positive value (inf if none): zeros are exact and need no bound."""
    v = values if where is None else values[where]
    v = v[np.isfinite(v) & (v > 0)]
    return float(v.min()) if v.size else math.inf


def _most(values: np.ndarray, where: np.ndarray | None = None) -> float:
    v = values if where is None else values[where]
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else 0.0


def eps_as_kernel_reads(eps: float, dtype: str) -> tuple[float, float]:
    """(eps as the C++ double MXNet parses from ``str(eps)``, that double rounded to the data's type).

    The kernels add ``DType(eps)`` to the variance (float16's ``half_t`` through float) and subtract the
    double when they turn invstd back into a variance.
    """
    as_double = parsed(eps, "float64")
    with np.errstate(over="ignore", under="ignore"):
        if dtype == "float16":
            rounded = float(np.float16(np.float32(as_double)))
        else:
            rounded = float(np.dtype(dtype).type(as_double))
    return as_double, rounded


def families(case: Case) -> list[Family]:
    """The intermediate values of MXNet's CPU kernels for ``case`` that the scaling relations scale.

    Magnitudes come from float64 estimates widened by deterministic bounds on the kernel's rounding
    error, and, where a value may come from cancellation, from its quantum (a nonzero sum of multiples
    of 2^q is at least 2^q). NaN and inf elements are left out: IEEE rules scale what they make exactly.
    """

    def compute() -> list[Family]:
        with np.errstate(all="ignore"):
            return _families(case)

    return case.memo("relations.families", compute)


def _families(case: Case) -> list[Family]:
    dt = case.dtype
    half = dt == "float16"
    acc_fmt = FORMATS[_accumulation(dt)]
    acc = acc_fmt.name
    # The type each element-wise intermediate is rounded to: float16 kernels round to half_t.
    elem = dt if half else acc
    u_acc, u_elem = acc_fmt.unit, FORMATS[elem].unit
    m = case.reduction_length
    x, dy = _rows(case, case.x), _rows(case, case.dy)
    # NaN and inf elements make NaN or inf of whatever they enter, in both calls alike: they drop out
    # of every bound (as NaN). Their channel's parameters do not: with global statistics its var + eps,
    # invstd and invstd * gamma still scale every finite element's results.
    x = np.where(np.isfinite(x) & np.isfinite(dy), x, np.nan)
    dy = np.where(np.isfinite(dy), dy, np.nan)
    rm = case.moving_mean.astype(np.float64)
    rv = case.moving_var.astype(np.float64)
    gamma = np.ones(case.channels) if case.fix_gamma else np.abs(case.gamma.astype(np.float64))
    eps_double, eps_kernel = eps_as_kernel_reads(case.eps, dt)
    mom = parsed(case.momentum, "float32")
    rest = float(np.float32(1) - np.float32(mom)) if acc == "float32" else 1.0 - mom
    batch = case.uses_batch_stats
    # The training backward (and the update of the moving statistics) runs in training, and after an
    # inference forward through mx.sym's executor (known deviation sym-inference-backward-trains).
    training_backward = not case.use_global_stats
    if case.channels == 0 or m == 0:
        return []

    # Every x is a multiple of its lowest set bit; a channel's sum, of the smallest of them.
    quantum_xi = np.exp2(_low_bits(x))
    quantum_x = quantum_xi.min(axis=1)  # inf for an all-zero channel
    if batch:
        mean = x.mean(axis=1)
        e_mean = 2.0 * (m + 2) * u_acc * np.abs(x).sum(axis=1) / m
        lower_mean = np.maximum(np.abs(mean) - e_mean, quantum_x / m * (1 - 2 * u_acc))
        upper_mean = np.abs(mean) + e_mean
        quantum_mean = np.array([_quantum(v, acc_fmt) if np.isfinite(v) and v > 0 else np.inf for v in lower_mean])
    else:
        mean, e_mean = rm, np.zeros_like(rm)
        lower_mean = upper_mean = np.abs(rm)
        quantum_mean = np.exp2(_low_bits(rm))
    centred = x - mean[:, None]
    # x - mean is a multiple of the smaller of x's lowest bit and the mean's ulp: so much if not 0.
    quantum_d = np.minimum(quantum_xi, quantum_mean[:, None])
    certain_d = np.abs(centred) > e_mean[:, None]
    lower_d = np.maximum((np.abs(centred) - e_mean[:, None]) * (1 - 2 * u_elem), quantum_d)
    if not batch:
        lower_d = np.where(centred == 0, np.inf, lower_d)  # x - moving_mean is exactly 0 there
    upper_d = (np.abs(centred) + e_mean[:, None]) * (1 + 2 * u_elem)

    if batch:
        squares = lower_d**2 * (1 - 2 * u_acc)
        certain_var = certain_d.any(axis=1)
        lower_var = np.where(
            certain_var,
            np.where(certain_d, squares, 0).max(axis=1) / m / 2,
            np.where(np.isfinite(squares), squares, np.inf).min(axis=1) / m / 2,
        )
        upper_var = 2 * upper_d.max(axis=1) ** 2
        # var >= 0: var + eps >= eps (var's own bound matters only where it is certainly nonzero).
        lower_v = np.maximum(eps_kernel, np.where(certain_var, lower_var, 0.0)) if eps_kernel > 0 else lower_var
        upper_v = (upper_var + eps_kernel) * (1 + 2 * u_elem)
        lower_v = lower_v * (1 - 2 * u_elem)
    else:
        # The exact sum, before the kernel rounds it (to half_t in the float16 kernel): it may overflow.
        v = rv + eps_kernel
        lower_var = upper_var = np.abs(rv)
        lower_v, upper_v = v * (1 - 2 * u_acc), v * (1 + 2 * u_acc)
    # var + eps that is 0, negative or not finite gives invstd 0, inf or NaN: exact under any scaling.
    normal = np.isfinite(lower_v) & (lower_v > 0) & np.isfinite(upper_v)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lower_inv = np.where(normal, 1 / np.sqrt(upper_v) * (1 - 4 * u_acc), 0.0)
        upper_inv = np.where(normal, 1 / np.sqrt(lower_v) * (1 + 4 * u_acc), 0.0)
    rows = normal  # channels whose intermediates are ordinary numbers

    abs_dy = np.abs(dy)
    lower_t = np.where(abs_dy > 0, lower_d * abs_dy * (1 - 2 * u_elem), np.inf)
    upper_t = upper_d * abs_dy * (1 + 2 * u_elem)
    lower_xhat = lower_d * lower_inv[:, None] * (1 - 2 * u_elem)
    upper_xhat = upper_d * upper_inv[:, None] * (1 + 2 * u_elem)
    lower_g = np.where(gamma > 0, gamma, np.inf)

    out: list[Family] = []
    everywhere = np.ones_like(rows)

    def add(
        name: str,
        dtype: str,
        lower: np.ndarray | float,
        upper: np.ndarray | float,
        where: np.ndarray = everywhere,
        **exponent: int,
    ) -> None:
        """A family: the bounds are taken over ``where`` (channels, or elements); lower inf: no lower bound."""
        lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        mask_lo = np.broadcast_to(where if where.ndim == lo.ndim else where[:, None], lo.shape) if lo.ndim else None
        mask_hi = np.broadcast_to(where if where.ndim == hi.ndim else where[:, None], hi.shape) if hi.ndim else None
        out.append(
            Family(
                name,
                dtype,
                _least(lo, mask_lo) if lo.ndim else float(lo),
                _most(hi, mask_hi) if hi.ndim else float(hi),
                {k.replace("_", "-"): e for k, e in exponent.items()},
            )
        )

    # The forward.
    if batch:
        add("sum of x", acc, math.inf, 2 * np.abs(x).sum(axis=1), scale_data=1)
        add("mean = sum / M", acc, lower_mean, upper_mean, scale_data=1)
        add("(x - mean)^2", acc, lower_d**2 * (1 - 2 * u_acc), upper_d**2, scale_data=2)
        add("sum of (x - mean)^2", acc, math.inf, 2 * m * upper_d**2, scale_data=2)
        add("var = sum / M", acc, lower_var, upper_var, scale_data=2)
    # x - mean and var + eps: rounded to half_t in the float16 kernel, exact sums (where subnormal) otherwise.
    add("x - mean", elem, lower_d if half else math.inf, upper_d, scale_data=1)
    add("var + eps", elem, lower_v if half else math.inf, upper_v, rows, scale_data=2)
    add("invstd", acc, lower_inv, upper_inv, rows, scale_data=-1)
    affine = 0 if case.fix_gamma else 1  # with fix_gamma the kernels use 1, not gamma
    add("invstd * gamma", acc, lower_inv * lower_g, upper_inv * gamma, rows, scale_data=-1, scale_affine=affine)
    if not case.fix_gamma:
        add("xhat * gamma", elem, lower_xhat * lower_g[:, None], upper_xhat * gamma[:, None], rows, scale_affine=1)

    # The moving statistics' update, and invstd turned back into a variance for it.
    if training_backward:
        lower_inv2, upper_inv2 = lower_inv**2, upper_inv**2
        lower_back, upper_back = 1 / upper_inv2, 1 / lower_inv2
        # 1/invstd^2 - eps: a difference of doubles, a multiple of the smaller of their quanta if nonzero.
        lower_rec = lower_back
        if eps_double > 0:
            quantum_eps = math.ldexp(1.0, int(_low_bits(np.array([eps_double]))[0]))
            lower_rec = np.full_like(
                lower_back, min(_quantum(_least(lower_back, rows), FORMATS["float64"]), quantum_eps)
            )
        # oneDNN's path forms the recovered variance, and its product with 1 - momentum, in float.
        rec = "float32" if dt == "float32" else "float64"
        add("invstd^2", acc, lower_inv2, upper_inv2, rows, scale_data=-2)
        add("1 / invstd^2", "float64", lower_back, upper_back, rows, scale_data=2)
        add("recovered variance", rec, lower_rec, upper_back, rows, scale_data=2)
        if mom > 0:
            add("moving_mean * momentum", acc, np.abs(rm) * mom, np.abs(rm) * mom, scale_data=1)
            add("moving_var * momentum", acc, np.abs(rv) * mom, np.abs(rv) * mom, scale_data=2)
        if rest > 0:
            add("mean * (1 - momentum)", acc, lower_mean * rest, upper_mean * rest, scale_data=1)
            add("variance * (1 - momentum)", rec, lower_rec * rest, upper_back * rest, rows, scale_data=2)

    # The backward's reductions and the data gradient.
    add("(x - mean) * dy", elem, lower_t, upper_t, rows, scale_data=1, scale_head=1)
    add("xhat * dy", acc, lower_xhat * abs_dy, upper_xhat * abs_dy, rows, scale_head=1)
    sum_t = upper_t.sum(axis=1)
    add("sum of (x - mean) * dy", acc, math.inf, 2 * sum_t, rows, scale_data=1, scale_head=1)
    add("sum of dy", acc, math.inf, 2 * abs_dy.sum(axis=1), scale_head=1)
    # sum(dy (x - mean)): its deterministic error bound, or else the quantum of its terms, bounds it below.
    dotp = (centred * dy).sum(axis=1)
    e_dotp = 2 * (m + 2) * u_acc * sum_t + (e_mean * abs_dy.sum(axis=1)) + 2 * u_elem * sum_t
    quantum_t = np.array([_quantum(v, FORMATS[elem]) if np.isfinite(v) else np.inf for v in lower_t.min(axis=1)])
    lower_dotp = np.maximum(np.abs(dotp) - e_dotp, quantum_t)
    lower_dgamma, upper_dgamma = lower_dotp * lower_inv, sum_t * upper_inv
    add("dgamma = sum * invstd", acc, lower_dgamma, upper_dgamma, rows, scale_head=1)
    lower_shift, upper_shift = lower_d * lower_dgamma[:, None], upper_d * upper_dgamma[:, None]
    add("(x - mean) * dgamma", acc, lower_shift, upper_shift, rows, scale_head=1)
    if training_backward:
        # The projection (x - mean) * sum(...) invstd^2 / M, stored in DType by the native kernel.
        lower_k = lower_dotp * lower_inv**2 * (1 - 4 * u_acc)
        upper_k = sum_t * upper_inv**2 * (1 + 4 * u_acc)
        add("sum * invstd^2", acc, lower_k, upper_k, rows, scale_data=-1, scale_head=1)
        add("sum * invstd^2 / M", acc, lower_k / m, upper_k / m, rows, scale_data=-1, scale_head=1)
        lower_proj, upper_proj = lower_d * (lower_k / m)[:, None], upper_d * (upper_k / m)[:, None]
        add("(x - mean) * sum * invstd^2 / M", dt, lower_proj, upper_proj, rows, scale_head=1)
        lower_proj = lower_xhat * (lower_dgamma / m)[:, None]
        add("xhat * dgamma / M", acc, lower_proj, upper_xhat * (upper_dgamma / m)[:, None], rows, scale_head=1)
        sum_dy = dy.sum(axis=1)
        e_sum_dy = 2 * (m + 2) * u_acc * abs_dy.sum(axis=1)
        quantum_dy = np.exp2(np.min(_low_bits(dy), axis=1))
        lower_gm = np.maximum(np.abs(sum_dy) - e_sum_dy, quantum_dy) / m * (1 - 2 * u_acc)
        add("mean of dy", acc, lower_gm, 2 * abs_dy.sum(axis=1) / m, scale_head=1)
        if half:
            # float(dy) - mean(dy) is rounded to half_t in the float16 kernel (what follows is a half_t
            # difference, exact where subnormal, and the product that makes dx, judged element by element).
            gap = np.abs(dy - (sum_dy / m)[:, None])
            e_gm = (e_sum_dy / m)[:, None]
            floor_r = np.minimum(quantum_dy, [_quantum(v, acc_fmt) if np.isfinite(v) else np.inf for v in lower_gm])
            lower_r = np.where(gap > e_gm, (gap - e_gm) * (1 - 2 * u_elem), floor_r[:, None])
            add("dy - mean of dy", dt, lower_r, 2 * (gap + e_gm), rows, scale_head=1)
    return out


def _admissible_range(case: Case, relation: str, inputs: Mapping[str, int]) -> tuple[int, int] | None:
    """The powers k (an interval containing 0) for which every family and every scaled input stays exact."""
    lo, hi = -K_MAX, K_MAX

    def bound(e: int, low: float, high: float) -> None:
        # e * k must lie in [low, high]: (k = 0 must too, or no k will do)
        nonlocal lo, hi
        if e == 0:
            if not low <= 0 <= high:
                lo, hi = 1, 0
            return
        a, b = (low / e, high / e) if e > 0 else (high / e, low / e)
        if math.isnan(a) or math.isnan(b):
            lo, hi = 1, 0
            return
        lo = max(lo, math.ceil(a)) if a > -math.inf else lo
        hi = min(hi, math.floor(b)) if b < math.inf else hi

    for fam in families(case):
        e = fam.exponent.get(relation, 0)
        if e == 0:
            continue
        fmt = FORMATS[fam.dtype]
        room = HEADROOM_HALF if fam.dtype == "float16" else HEADROOM_WIDE
        low = fmt.emin + room - math.log2(fam.lower) if 0 < fam.lower < math.inf else -math.inf
        high = fmt.emax - room - math.log2(fam.upper) if fam.upper > 0 else math.inf
        bound(e, low, high)
    for name, e in inputs.items():
        arr = getattr(case, name)
        if arr is None or e == 0:
            continue
        fmt = FORMATS[str(arr.dtype)]
        low_bit = float(np.min(_low_bits(arr))) if arr.size else math.inf
        low = fmt.subnormal - low_bit if math.isfinite(low_bit) else -math.inf
        high = fmt.emax - _high_bit(arr)
        bound(e, low, high)
    return (lo, hi) if lo <= 0 <= hi else None


# ---------------------------------------------------------------------------------------------------
# Judging two results


@dataclasses.dataclass(frozen=True)
class Violation:
    """Where the second call's ``quantity`` is not what the relation makes of the first call's."""

    relation: str
    quantity: str
    count: int  # elements that break the relation
    size: int
    index: tuple[int, ...]  # the worst of them (largest distance in ulps)
    expected: float
    actual: float
    expected_bits: str
    actual_bits: str
    ulps: float
    detail: str = ""
    kind: str = "relation"

    def describe(self) -> str:
        if self.detail and not self.size:
            return f"{self.relation}: {self.quantity}: {self.detail}"
        apart = "signs of zero differ" if self.ulps == 0 else f"{self.ulps:g} ulps apart"
        return (
            f"{self.relation}: {self.quantity}: {self.count} of {self.size} elements break it; worst at index "
            f"{self.index} ({apart})\n"
            f"    expected: {self.expected!r} ({self.expected_bits})\n"
            f"    actual:   {self.actual!r} ({self.actual_bits})" + (f"\n    {self.detail}" if self.detail else "")
        )


def _bits(value: np.ndarray) -> str:
    width = value.dtype.itemsize * 2
    return f"0x{int(value.view(f'u{value.dtype.itemsize}')):0{width}x}"


def _ordered(arr: np.ndarray) -> np.ndarray:
    """Bit patterns as integers ordered like the floats they encode (adjacent floats differ by 1)."""
    size = arr.dtype.itemsize
    ints = arr.view(f"i{size}").astype(np.int64)
    magnitude = ints & ((1 << (8 * size - 1)) - 1)
    return np.where(ints < 0, -magnitude, magnitude)


def compare_scaled(
    relation: str,
    quantity: str,
    first: np.ndarray,
    second: np.ndarray,
    shift: int,
    *,
    prior: np.ndarray | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Violation | None:
    """Is ``second`` bit for bit ``first * 2^shift`` (after ``transform``, e.g. a permutation)?

    NaN must meet NaN, and +-inf the same infinity. With ``shift`` nonzero an element is not judged
    where the last rounding of either result falls short of twice the smallest normal number or the
    scaled value overflows (that rounding is not exact there); with a ``prior`` (grad_req 'add', the
    first call's buffer) also where the gradient added to it may have been subnormal or may overflow.
    """
    a = np.asarray(first)
    b = np.asarray(second)
    if transform is not None:
        a = transform(a)
        prior = None if prior is None else transform(prior)
    if a.shape != b.shape or a.dtype != b.dtype:
        detail = f"shape/dtype {b.dtype}{b.shape}, expected {a.dtype}{a.shape}"
        return Violation(relation, quantity, 0, 0, (), math.nan, math.nan, "", "", math.inf, detail)
    if a.size == 0:
        return None
    fmt = FORMATS[str(a.dtype)]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.ldexp(a64, shift)
        expected = scaled.astype(a.dtype)
    judged = np.ones(a.shape, dtype=bool)
    finite = np.isfinite(a64)
    if shift != 0:
        zone = 2 * fmt.normal_min
        tiny_a = finite & (a64 != 0) & (np.abs(a64) < zone)
        tiny_e = finite & (scaled != 0) & (np.abs(scaled) < zone)
        over = finite & (np.abs(scaled) > fmt.largest)
        under = finite & (a64 == 0) & (b64 != 0) & (np.abs(b64) < zone * max(1.0, 2.0**shift))
        # The first call's last rounding overflowed where the second's (2^shift times as large) did not.
        with np.errstate(over="ignore"):
            back = np.abs(np.ldexp(b64, -shift))
        overflowed = np.isinf(a64) & np.isfinite(b64) & (np.sign(a64) == np.sign(b64))
        overflowed &= back >= fmt.largest * (1 - 2 * fmt.unit)
        judged &= ~(tiny_a | tiny_e | over | under | overflowed)
    if prior is not None and shift != 0:
        # out = prior + gradient: the gradient (out - prior, to within half an ulp of out) must be normal.
        p64 = prior.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            ulp = np.spacing(np.abs(a).astype(a.dtype)).astype(np.float64)
            fresh = np.abs(a64 - p64) - ulp
            top = (np.abs(a64 - p64) + ulp) * max(1.0, 2.0**shift)
        need = 2 * fmt.normal_min * max(1.0, 2.0**-shift)
        judged &= ~(finite & (p64 != 0) & ~((fresh >= need) & (top <= fmt.largest / 2)))
    same = (expected.view(f"u{a.dtype.itemsize}") == b.view(f"u{a.dtype.itemsize}")) | (np.isnan(a64) & np.isnan(b64))
    broken = judged & ~same
    if not broken.any():
        return None
    with np.errstate(invalid="ignore"):
        distance = np.abs(_ordered(expected) - _ordered(b)).astype(np.float64)
    distance[np.isnan(a64) != np.isnan(b64)] = math.inf
    distance = np.where(broken, distance, -1.0)
    flat = int(np.argmax(distance))
    idx = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    return Violation(
        relation,
        quantity,
        int(broken.sum()),
        int(a.size),
        idx,
        float(expected[idx]),
        float(b[idx]),
        _bits(expected[idx]),
        _bits(b[idx]),
        float(distance[idx]),
        detail=f"first call: {float(a[idx])!r} ({_bits(a[idx])}), scaled by 2^{shift}" if shift else "",
    )


# ---------------------------------------------------------------------------------------------------
# The relations


@dataclasses.dataclass(frozen=True)
class Scale:
    """The power of two a scaling relation multiplies by."""

    k: int

    def __str__(self) -> str:
        return f"k={self.k}"


@dataclasses.dataclass(frozen=True)
class Permutation:
    order: tuple[int, ...]

    def __str__(self) -> str:
        return f"channels in the order {list(self.order)}"


@dataclasses.dataclass(frozen=True)
class Again:
    def __str__(self) -> str:
        return "the same call again"


Params = Any


class Relation:
    """Two calls: the case, and ``transform(case, params)``; ``check`` says where their results break it."""

    name: str = ""
    statement: str = ""

    def parameters(self, case: Case, choice: int = 0) -> Params | None:
        """The parameters numbered ``choice`` (modulo how many there are; 0 is the simplest) for ``case``,
        or None if the relation says nothing about the case (no exact instance of it exists)."""
        raise NotImplementedError

    def transform(self, case: Case, params: Params) -> Case:
        raise NotImplementedError

    def check(self, case: Case, first: Outputs, second: Outputs, params: Params) -> list[Violation]:
        raise NotImplementedError

    def _compare(
        self,
        first: Outputs,
        second: Outputs,
        shifts: Mapping[str, int],
        *,
        priors: Mapping[str, np.ndarray] | None = None,
        transform: Callable[[str, np.ndarray], np.ndarray] | None = None,
    ) -> list[Violation]:
        found: list[Violation] = []
        for q in QUANTITIES:
            if q not in first and q not in second:
                continue
            if (q in first) != (q in second):
                which = "the second call" if q in first else "the first call"
                found.append(
                    Violation(
                        self.name, q, 0, 0, (), math.nan, math.nan, "", "", math.inf, f"{which} did not return it"
                    )
                )
                continue
            shift = shifts.get(q, 0)
            move = None if transform is None else functools.partial(transform, q)
            prior = None if priors is None else priors.get(q)
            found += filter(
                None, [compare_scaled(self.name, q, first[q], second[q], shift, prior=prior, transform=move)]
            )
        return found


def _priors(case: Case) -> dict[str, np.ndarray]:
    return {GRADIENT_OF[t]: p for t in GRAD_TARGETS if (p := case.prior(t)) is not None}


class ScalingRelation(Relation):
    """A relation that multiplies some inputs by powers of two: 2^(e k) for each input's exponent e."""

    def inputs(self, case: Case) -> dict[str, int]:
        """The array fields it scales, with their exponents (prior gradient buffers included)."""
        raise NotImplementedError

    def shifts(self, case: Case) -> dict[str, int]:
        """Per quantity, e such that the quantity scales by 2^(e k)."""
        raise NotImplementedError

    def eps_exponent(self) -> int:
        return 0

    def _eps_scales(self, case: Case, k: int) -> bool:
        """Does MXNet read eps * 4^k as exactly 4^k times what it reads for eps (both the double and DType)?"""
        e = self.eps_exponent() * k
        if e == 0 or case.eps == 0:
            return True
        scaled = math.ldexp(case.eps, e)
        if not math.isfinite(scaled) or math.ldexp(scaled, -e) != case.eps:
            return False
        (d0, t0), (d1, t1) = eps_as_kernel_reads(case.eps, case.dtype), eps_as_kernel_reads(scaled, case.dtype)
        if d1 != math.ldexp(d0, e) or t1 != math.ldexp(t0, e):
            return False
        # Normal in DType (float16 kernels may truncate instead of rounding: both scale exactly there).
        fmt = FORMATS[case.dtype]
        return all(t == 0 or 2 * fmt.normal_min <= abs(t) <= fmt.largest / 2 for t in (t0, t1))

    def candidates(self, case: Case) -> list[int]:
        """Every admissible k != 0, simplest (smallest |k|, positive first) first."""

        def compute() -> list[int]:
            window = _admissible_range(case, self.name, self.inputs(case))
            if window is None:
                return []
            ks = [k for k in range(window[0], window[1] + 1) if k != 0 and self._eps_scales(case, k)]
            return sorted(ks, key=lambda k: (abs(k), -k))

        return case.memo(f"relations.candidates.{self.name}", compute)

    def parameters(self, case: Case, choice: int = 0) -> Scale | None:
        ks = self.candidates(case)
        return Scale(ks[choice % len(ks)]) if ks else None

    def transform(self, case: Case, params: Scale) -> Case:
        changes: dict[str, Any] = {}
        for name, e in self.inputs(case).items():
            arr = getattr(case, name)
            if arr is None or e == 0:
                continue
            scaled = np.ldexp(arr.astype(np.float64), e * params.k).astype(arr.dtype)
            back = np.ldexp(scaled.astype(np.float64), -e * params.k)
            if not np.array_equal(back, arr.astype(np.float64), equal_nan=True):
                raise ValueError(f"{self.name}: {name} * 2^{e * params.k} is not exact in {arr.dtype}")
            changes[name] = scaled
        if self.eps_exponent():
            changes["eps"] = math.ldexp(case.eps, self.eps_exponent() * params.k)
        return case.with_(**changes)

    def check(self, case: Case, first: Outputs, second: Outputs, params: Scale) -> list[Violation]:
        shifts = {q: e * params.k for q, e in self.shifts(case).items()}
        return self._compare(first, second, shifts, priors=_priors(case))


class ScaleData(ScalingRelation):
    """x * 2^k and eps * 4^k (moving_mean * 2^k and moving_var * 4^k too) leave y, dgamma and dbeta
    bit-identical and scale dx by 2^-k; mean and the moving mean scale by 2^k, invstd by 2^-k, the
    moving variance by 4^k. momentum is unchanged.

    Why exact: every value the kernels form from x is a product, quotient, square root or sum whose
    operands scale by powers of two: the mean by 2^k, x - mean by 2^k, the variance and var + eps by
    4^k, sqrt(var + eps) by 2^k, invstd by 2^-k; xhat = (x - mean) * invstd is then the very same
    real number and rounds to the same bits, and so are y, dgamma = sum(dy (x - mean)) invstd and
    the projection (x - mean) * sum(...) invstd^2 / M, while dx = (...) * invstd * gamma scales by
    2^-k. Rounding to nearest commutes with scaling by 2^k wherever the result is a normal number.

    Where not: eps reaches the kernel as ``str(eps)`` parsed by dmlc's not-correctly-rounded ParseFloat
    (then rounded to DType for var + eps): only k with parsed(eps 4^k) = 4^k parsed(eps) in both are
    drawn. A product, quotient or conversion whose result is subnormal in either call (float16's
    x - mean, (x - mean) dy and var + eps in the native kernel; invstd^2 or the moving statistics'
    products in float32) rounds differently: the families above must stay normal (``families``); an
    overflow anywhere, likewise; results whose last rounding is subnormal are not judged.
    """

    name = "scale-data"
    statement = "x * 2^k, eps * 4^k, moving_mean * 2^k, moving_var * 4^k: y, dgamma, dbeta same bits; dx * 2^-k"

    def inputs(self, case: Case) -> dict[str, int]:
        return {"x": 1, "moving_mean": 1, "moving_var": 2, "prior_dx": -1}

    def eps_exponent(self) -> int:
        return 2

    def shifts(self, case: Case) -> dict[str, int]:
        return {
            "dx": -1,
            "moving_mean": 1,
            "moving_var": 2,
            "forward_moving_mean": 1,
            "forward_moving_var": 2,
            "mean": 1,
            "invstd": -1,
        }


class ScaleHead(ScalingRelation):
    """dy * 2^k scales dx, dgamma and dbeta by 2^k and leaves the forward (y, mean, invstd, the moving
    statistics, gamma) bit-identical.

    Why exact: the backward is linear in dy and forms sum(dy), sum(dy (x - mean)), their products
    with invstd and 1/M, the projection (x - mean) * sum(...) invstd^2 / M, dy - mean(dy) - projection
    and its product with invstd * gamma: each scales by 2^k. Nothing the forward computes reads dy.

    Where not: dy * 2^k must be exact in DType; every product, quotient and conversion above must be
    normal in both calls (float16: (x - mean) dy, the projection and dy - mean(dy) are rounded to
    half_t); results whose last rounding is subnormal or overflows are not judged. A gradient
    accumulated into a buffer (grad_req 'add') scales only if the buffer does: its prior scales too.
    """

    name = "scale-head"
    statement = "dy * 2^k: dx, dgamma, dbeta * 2^k; the forward the same bits"

    def inputs(self, case: Case) -> dict[str, int]:
        return {"dy": 1, "prior_dx": 1, "prior_dgamma": 1, "prior_dbeta": 1}

    def shifts(self, case: Case) -> dict[str, int]:
        return {"dx": 1, "dgamma": 1, "dbeta": 1}


class ScaleAffine(ScalingRelation):
    """fix_gamma=False: gamma * 2^k and beta * 2^k scale y and dx by 2^k and leave dgamma, dbeta, the
    statistics and the moving statistics bit-identical (gamma itself comes back scaled).
    fix_gamma=True: gamma * 2^k changes no result at all: the kernels use 1 for gamma (and write 1.0
    into it). beta is left alone then, as y = xhat + beta is not a multiple of beta.

    Why exact: y = xhat * gamma + beta is formed from xhat (the same in both calls) by a product and a
    sum whose operands all scale by 2^k; dx = (...) * (invstd * gamma) likewise. dgamma = sum(dy
    (x - mean)) invstd and dbeta = sum(dy) never read gamma or beta.

    Where not: gamma, beta (float32 for float16 data) and the prior dx must scale exactly; xhat * gamma
    (half_t in the float16 kernel) and invstd * gamma must stay normal; y and dx whose last rounding is
    subnormal or overflows are not judged.
    """

    name = "scale-affine"
    statement = "gamma, beta * 2^k (fix_gamma=False): y, dx * 2^k; fix_gamma=True: gamma * 2^k changes nothing"

    def inputs(self, case: Case) -> dict[str, int]:
        if case.fix_gamma:
            return {"gamma": 1}
        return {"gamma": 1, "beta": 1, "prior_dx": 1}

    def shifts(self, case: Case) -> dict[str, int]:
        if case.fix_gamma:
            return {}
        return {"y": 1, "dx": 1, "gamma": 1}


#: Arrays shaped like x (the rest are per channel).
_PER_ELEMENT = frozenset({"x", "dy", "prior_dx", "y", "dx"})


class PermuteChannels(Relation):
    """Permuting the channels (x and dy along the channel axis; gamma, beta, the moving statistics and
    the prior gradients alike) permutes every result the same way: y and dx along the channel axis,
    every per-channel result by index.

    Why exact: each channel's statistics, gradients and updates read only that channel's elements and
    parameters, in an order fixed by the shape alone; no value crosses channels.

    Where not: nowhere in the arithmetic. A kernel that blocks channels (oneDNN's nChw8c/16c layouts)
    or splits work over threads by channel could sum a channel in an order that depends on its
    position: that would be a finding, not an exception.
    """

    name = "permute-channels"
    statement = "channels permuted: every result permuted the same way, bit for bit"

    def parameters(self, case: Case, choice: int = 0) -> Permutation | None:
        c = case.channels
        if c < 2:
            return None
        if choice == 0:
            return Permutation(tuple(range(c - 1, -1, -1)))
        order = tuple(int(i) for i in np.random.default_rng(choice).permutation(c))
        if order == tuple(range(c)):
            order = order[1:] + order[:1]
        return Permutation(order)

    def _per_channel(self, case: Case, params: Permutation) -> Callable[[str, np.ndarray], np.ndarray]:
        order = np.asarray(params.order)

        def move(name: str, arr: np.ndarray) -> np.ndarray:
            return np.take(arr, order, axis=case.channel_axis if name in _PER_ELEMENT else 0)

        return move

    def transform(self, case: Case, params: Permutation) -> Case:
        move = self._per_channel(case, params)
        names = ("x", "dy", "gamma", "beta", "moving_mean", "moving_var", *PRIOR_FIELDS.values())
        return case.with_(**{n: move(n, a) for n in names if (a := getattr(case, n)) is not None})

    def check(self, case: Case, first: Outputs, second: Outputs, params: Permutation) -> list[Violation]:
        return self._compare(first, second, {}, transform=self._per_channel(case, params))


class Repeat(Relation):
    """The same call twice gives the same bits, NaN for NaN.

    Why exact: the kernels are deterministic functions of their inputs (a fixed order of operations
    for a given shape and thread count). Where not: nowhere; a difference means state leaking from one
    call into the next (a reused executor, buffer or cache) or a nondeterministic reduction.
    """

    name = "repeat"
    statement = "the same call twice: the same bits"

    def parameters(self, case: Case, choice: int = 0) -> Again:
        return Again()

    def transform(self, case: Case, params: Again) -> Case:
        return case

    def check(self, case: Case, first: Outputs, second: Outputs, params: Again) -> list[Violation]:
        return self._compare(first, second, {})


RELATIONS: dict[str, Relation] = {
    r.name: r for r in (ScaleData(), ScaleHead(), ScaleAffine(), PermuteChannels(), Repeat())
}


# ---------------------------------------------------------------------------------------------------
# Running them


@dataclasses.dataclass(frozen=True)
class RelationOutcome:
    relation: str
    case: Case
    params: Params
    second_case: Case
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def message(self, *, label: str = "MXNet") -> str:
        relation = RELATIONS.get(self.relation)
        lines = [
            f"{label} breaks relation {self.relation!r} ({relation.statement if relation else ''}) with "
            f"{self.params} on",
            f"  first:  {self.case.describe()}",
            f"  second: {self.second_case.describe()}",
        ]
        lines += ["  " + v.describe().replace("\n", "\n  ") for v in self.violations]
        lines.append(
            f"The second case is bnprops.relations.RELATIONS[{self.relation!r}].transform(case, {self.params!r}) "
            "of the case below (Case.from_json):"
        )
        lines.append(self.case.to_json() if self.case.x.size <= 4096 else "(too large to print; see the description)")
        return "\n".join(lines)


def run_relation(relation: Relation, case: Case, params: Params, runner: Callable[[Case], Outputs]) -> RelationOutcome:
    """Run both calls through ``runner`` (the first, then the second) and check the relation."""
    second_case = relation.transform(case, params)
    first = runner(case)
    second = runner(second_case)
    found = relation.check(case, first, second, params)
    return RelationOutcome(relation.name, case, params, second_case, tuple(found))


__all__ = [
    "RELATIONS",
    "Family",
    "Relation",
    "RelationOutcome",
    "Violation",
    "compare_scaled",
    "families",
    "run_relation",
]

"""Where scaling a BatchNorm call by powers of two is exact: float formats, the kernels' intermediates, admissible k.

A float kernel that multiplies, divides, adds and takes square roots in some fixed order gives results
that scale *exactly* when its inputs scale by powers of two, as long as no rounding happens in the
subnormal range and nothing overflows (rounding to nearest, or toward zero, commutes with
multiplication by 2^k there). This module works out, from a case, which of MXNet's CPU kernels'
intermediate values (float16 ones included: the native float16 kernel rounds ``x - mean``,
``(x - mean) * dy``, ``var + eps`` and more to float16, mshadow's ``half_t`` operators) might leave the
normal range, for the original call and for the scaled one (``families``), and so the powers k a
scaling relation may draw (``admissible_range``). judging.relations holds the relations themselves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import Case
from bnprops.model.exactness import lowest_bit_exponent
from bnprops.model.params import parsed

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
    found = lowest_bit_exponent(values)
    return np.where(np.isnan(found), np.inf, found)


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
    with ignoring("over", "under"):
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
    with ignoring():
        return _families(case)


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
    with ignoring("divide", "invalid", "over"):
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


def admissible_range(case: Case, relation: str, inputs: Mapping[str, int]) -> tuple[int, int] | None:
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


__all__ = ["FORMATS", "K_MAX", "Family", "admissible_range", "eps_as_kernel_reads", "families"]

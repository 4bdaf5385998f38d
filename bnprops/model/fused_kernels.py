"""The numba kernels of the fused judging path (judging.fused): per-channel sums, per-element oracle, bounds
and comparison, each one pass over the data with no temporaries.

Arrays come as (P, C, Q) views of a case's arrays (P: the axes before the channel axis, Q: those after), so
a channel's elements are met in the order of ``exactness.rows`` (p outer, q inner): the sequential sums
(np.cumsum's partial sums, MXNet's float32 ``sum += t``) are reproduced bit for bit.  The caller passes
the data in blocks of P and the per-channel ``state`` carries the sums from one block to the next.

Every kernel is compiled with IEEE semantics (``fastmath=False``: no reassociation, no contraction into
fused multiply-adds), and the per-element oracle and bounds are the reference's own functions (formulas,
compiled and inlined here), so each rounds exactly as numpy does.  A channel's coefficients are read as a
formulas.Row, by name.  Compiled code is cached on disk where the package's folder (or numba's user cache)
is writable (keyed by the formulas' source too), and compiled in memory otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import types
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit
from numba.core.caching import FunctionCache

from bnprops.model import formulas
from bnprops.model.formulas import BLOCKS, START, Row

#: The shared formulas' source: numba's disk cache checks a kernel's own file only, not the modules it inlines.
_FORMULAS = hashlib.sha256(inspect.getsource(formulas).encode()).hexdigest()


class _Cache(FunctionCache):  # type: ignore[misc]
    """numba's disk cache, its entries keyed by the shared formulas' source too."""

    def _index_key(self, sig: Any, codegen: Any) -> Any:
        return (*super()._index_key(sig, codegen), _FORMULAS)


def _jit(function: Callable[..., Any], parallel: bool = False) -> Any:
    dispatcher = njit(cache=False, fastmath=False, nogil=True, parallel=parallel)(function)
    with contextlib.suppress(RuntimeError):  # no writable cache location: compile per process instead
        dispatcher._cache = _Cache(function)
    return dispatcher


def cached() -> bool:
    """Does numba's disk cache hold every kernel compiled from this source and these formulas, so that a process
    loads them instead of compiling them? (True where there is no disk cache: nothing to share.)"""
    for value in list(globals().values()):
        cache = getattr(value, "_cache", None)
        if not isinstance(cache, _Cache):
            continue
        try:
            index = cache._cache_file._load_index()
        except Exception:  # an unreadable index: compile again
            return False
        if not any(isinstance(key, tuple) and key[-1] == _FORMULAS for key in index):
            return False
    return True


def _per_channel(function: Callable[..., Any]) -> Any:
    """A kernel whose channels are independent: it works on channels c0 to c1 - 1 (its last two arguments), so
    that threads can share a case's channels (fused_sums runs the kernels, which release the GIL, in a thread
    pool).  Never numba's ``parallel``: its OpenMP threading layer, once started, changes MXNet's own results
    in the same process (1.9.1's sums, float32 y at M = 2 10^5 off by 1.9e-4 from the same call before it
    started), and MXNet is what bnprops checks."""
    return _jit(function)


def _inline(function: Callable[..., Any]) -> Any:
    """A helper inlined into its callers' code (numba's IR inlining: the per-element code is one loop body)."""
    return njit(inline="always", fastmath=False)(function)


def _compiled(names: tuple[str, ...]) -> tuple[Any, ...]:
    """formulas.SHARED compiled to be inlined into the kernels: copies of the functions whose calls to one another
    go to each other's compiled copies (the functions themselves stay plain Python for numpy)."""
    namespace: dict[str, Any] = dict(vars(formulas))
    for f in formulas.SHARED:
        namespace[f.__name__] = _inline(types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__))
    return tuple(namespace[name] for name in names)


normalised, oracle_y, oracle_dx, bound_y, bound_dx, y_form, dx_form = _compiled(
    ("normalised", "oracle_y", "oracle_dx", "bound_y", "bound_dx", "y_form", "dx_form")
)


# --- per-channel sums --------------------------------------------------------------------------------------


@_inline
def _two_sum(hi: float, lo: float, v: float) -> Any:  # pragma: no cover - compiled
    """Knuth's TwoSum: (hi + v rounded, lo plus the rounding's exact error), a compensated sum's step."""
    t = hi + v
    z = t - hi
    return t, lo + ((hi - (t - z)) + (v - z))


@_inline
def _finite_part(v: float, all_finite: float) -> Any:  # pragma: no cover - compiled
    """(v, or 0 where it is NaN or inf; whether every value so far was finite, as 1.0 or 0.0)."""
    if v - v == 0.0:
        return v, all_finite
    return 0.0, 0.0


@_inline
def _partial_step(partial: float, spread: float, v: float, first: bool) -> Any:  # pragma: no cover - compiled
    """np.cumsum's next partial sum, and the sum of the squared partial sums from the second on."""
    if first:
        return v, spread
    partial = partial + v
    return partial, spread + partial * partial


#: Columns of raw_sums' state (per channel).
RAW = (
    "x_hi",  # sum x, compensated (Knuth's TwoSum): x_hi + x_lo
    "x_lo",
    "x_min",  # NaN-propagating, as ndarray.min
    "x_max",
    "x_nan",  # 1 where some x is NaN
    "x_finite",  # 1 where every x is finite
    "x_abs",  # sum |x| over the finite x
    "x_partial",  # np.cumsum of the finite x (the current partial sum)
    "x_spread",  # sum of the squared partial sums from the second on
    "x_f32",  # float32 sequential sum of x (MXNet's AccReal for float16/float32 data)
    "dy_hi",
    "dy_lo",
    "dy_abs",  # sum |dy| (non-finite dy included)
    "dy_abs_finite",  # sum |dy| over the finite dy
    "dy_partial",
    "dy_spread",
    "dy_f32",
    "count",
    "dy_finite",
)
R = {name: i for i, name in enumerate(RAW)}


@_per_channel
def raw_sums(x: np.ndarray, dy: np.ndarray, state: np.ndarray, c0: int, c1: int) -> None:  # pragma: no cover - compiled
    """Sums of x and dy alone, per channel, continued from ``state`` (one row per channel, columns RAW)."""
    blocks, _, inner = x.shape
    for c in range(c0, c1):
        s = state[c]
        x_hi, x_lo, x_min, x_max = s[0], s[1], s[2], s[3]
        x_nan, x_fin, x_abs, x_p, x_sp = s[4], s[5], s[6], s[7], s[8]
        x_32 = np.float32(s[9])
        d_hi, d_lo, d_abs, d_absf, d_p, d_sp = s[10], s[11], s[12], s[13], s[14], s[15]
        d_32 = np.float32(s[16])
        count, d_fin = s[17], s[18]
        for p in range(blocks):
            for q in range(inner):
                v = np.float64(x[p, c, q])
                d = np.float64(dy[p, c, q])
                x_hi, x_lo = _two_sum(x_hi, x_lo, v)
                if v != v:
                    x_nan = 1.0
                else:
                    if v < x_min:
                        x_min = v
                    if v > x_max:
                        x_max = v
                vf, x_fin = _finite_part(v, x_fin)
                x_abs += abs(vf)
                x_32 = np.float32(x_32 + np.float32(v))
                d_hi, d_lo = _two_sum(d_hi, d_lo, d)
                d_abs += abs(d)
                df, d_fin = _finite_part(d, d_fin)
                d_absf += abs(df)
                d_32 = np.float32(d_32 + np.float32(d))
                x_p, x_sp = _partial_step(x_p, x_sp, vf, count == 0.0)
                d_p, d_sp = _partial_step(d_p, d_sp, df, count == 0.0)
                count += 1.0
        s[0], s[1], s[2], s[3] = x_hi, x_lo, x_min, x_max
        s[4], s[5], s[6], s[7], s[8], s[9] = x_nan, x_fin, x_abs, x_p, x_sp, np.float64(x_32)
        s[10], s[11], s[12], s[13], s[14], s[15] = d_hi, d_lo, d_abs, d_absf, d_p, d_sp
        s[16], s[17], s[18] = np.float64(d_32), count, d_fin


#: Columns of centred_sums' state: terms (x - mean)^2 ("c2") and (x - mean) dy ("dot").
CENTRED = (
    "c2_hi",  # sum (x - mean)^2, compensated
    "c2_lo",
    "c2_abs",  # over the finite terms
    "c2_partial",
    "c2_spread",
    "c2_f32",
    "dot_hi",
    "dot_lo",
    "dot_abs",
    "dot_partial",
    "dot_spread",
    "dot_f32",
    "count",
)
K = {name: i for i, name in enumerate(CENTRED)}


@_per_channel
def centred_sums(
    x: np.ndarray, dy: np.ndarray, mean: np.ndarray, state: np.ndarray, c0: int, c1: int
) -> None:  # pragma: no cover
    """Sums of (x - mean)^2 and (x - mean) dy per channel (``mean`` finite), continued from ``state``."""
    blocks, _, inner = x.shape
    for c in range(c0, c1):
        s = state[c]
        m = mean[c]
        a_hi, a_lo, a_abs, a_p, a_sp = s[0], s[1], s[2], s[3], s[4]
        a_32 = np.float32(s[5])
        b_hi, b_lo, b_abs, b_p, b_sp = s[6], s[7], s[8], s[9], s[10]
        b_32 = np.float32(s[11])
        count = s[12]
        for p in range(blocks):
            for q in range(inner):
                centred = np.float64(x[p, c, q]) - m
                sq = centred * centred
                dot = centred * np.float64(dy[p, c, q])
                a_hi, a_lo = _two_sum(a_hi, a_lo, sq)
                b_hi, b_lo = _two_sum(b_hi, b_lo, dot)
                a_32 = np.float32(a_32 + np.float32(sq))
                b_32 = np.float32(b_32 + np.float32(dot))
                sqf = sq if sq - sq == 0.0 else 0.0
                dotf = dot if dot - dot == 0.0 else 0.0
                a_abs += abs(sqf)
                b_abs += abs(dotf)
                a_p, a_sp = _partial_step(a_p, a_sp, sqf, count == 0.0)
                b_p, b_sp = _partial_step(b_p, b_sp, dotf, count == 0.0)
                count += 1.0
        s[0], s[1], s[2], s[3], s[4], s[5] = a_hi, a_lo, a_abs, a_p, a_sp, np.float64(a_32)
        s[6], s[7], s[8], s[9], s[10], s[11] = b_hi, b_lo, b_abs, b_p, b_sp, np.float64(b_32)
        s[12] = count


@_per_channel
def xhat_sums(
    x: np.ndarray,
    dy: np.ndarray,
    mean: np.ndarray,
    inv: np.ndarray,
    wanted: np.ndarray,
    state: np.ndarray,
    c0: int,
    c1: int,
) -> None:  # pragma: no cover - compiled
    """Per wanted channel: sum dy ((x - mean) inv) compensated (state 0, 1) and sum |dy| |(x - mean) inv| (2)."""
    blocks, _, inner = x.shape
    for c in range(c0, c1):
        if not wanted[c]:
            continue
        s = state[c]
        m, k = mean[c], inv[c]
        hi, lo, total = s[0], s[1], s[2]
        for p in range(blocks):
            for q in range(inner):
                xhat = normalised(np.float64(x[p, c, q]), m, k)
                d = np.float64(dy[p, c, q])
                term = d * xhat
                hi, lo = _two_sum(hi, lo, term)
                total += abs(d) * abs(xhat)
        s[0], s[1], s[2] = hi, lo, total


# --- per element -------------------------------------------------------------------------------------------

#: The linear forms (formulas.linear_forms) are shrunk by this much below the bounds' own rounding: lower bounds
#: that let compare skip the bounds' exact evaluation where an error is clearly below them (NaN: never skip).
SHRINK = 1.0 - 2.0**-40


def _row_reader() -> Any:
    """A channel's coefficients as a formulas.Row of scalars (held in registers, not reloaded per element), the
    code generated from formulas.BLOCKS: each block's fields from its START on."""
    blocks = ", ".join(
        f"{block.__name__}({', '.join(f'kc[{START[name] + i}]' for i in range(len(block._fields)))})"
        for name, block in BLOCKS
    )
    namespace: dict[str, Any] = {block.__name__: block for _, block in BLOCKS} | {"Row": Row}
    exec(f"def row(kc):\n    return Row({blocks})\n", namespace)
    return _inline(namespace["row"])


_row = _row_reader()


@_inline
def _oracle(v: float, d: float, prior: float, t: Row, batch: bool, add: bool) -> Any:  # pragma: no cover - compiled
    """The oracle's y, dx (fresh and as requested) at one element, and |xhat| as the bounds take it."""
    o = t.oracle
    xhat = normalised(v, o.mean, o.invstd)
    y = oracle_y(xhat, o.g, o.beta)
    fresh = oracle_dx(xhat, d, o.scale, o.dbeta_m, o.dot_m, batch)
    acc = prior + fresh if add else fresh
    return y, fresh, acc, abs(normalised(v, o.mean, o.inv))


@_inline
def _bounds_y(axhat: float, y: float, t: Row) -> Any:  # pragma: no cover - compiled
    """Both models' bounds on y."""
    return bound_y(axhat, y, t.oracle.ag, t.det), bound_y(axhat, y, t.oracle.ag, t.prob)


@_inline
def _bounds_dx(
    axhat: float, d: float, fresh: float, acc: float, t: Row, batch: bool, add: bool
) -> Any:  # pragma: no cover
    """Both models' bounds on dx."""
    return bound_dx(axhat, d, fresh, acc, batch, add, t.det), bound_dx(axhat, d, fresh, acc, batch, add, t.prob)


@_inline
def _element(v: float, d: float, prior: float, t: Row, batch: bool, add: bool) -> Any:  # pragma: no cover - compiled
    """The oracle's y, dx (fresh and as requested) at one element, and both models' bounds on them."""
    y, fresh, acc, axhat = _oracle(v, d, prior, t, batch, add)
    by, sy = _bounds_y(axhat, y, t)
    bdx, sdx = _bounds_dx(axhat, d, fresh, acc, t, batch, add)
    return y, fresh, acc, by, sy, bdx, sdx


@_inline
def _lower(det: float, prob: float) -> float:  # pragma: no cover - compiled
    """A lower bound on error_model.sharpest's min(prob, det) from lower bounds on each (NaN where either is NaN: a form
    that cannot be used says nothing)."""
    if det <= prob:
        return det
    if prob < det:
        return prob
    return np.nan


@_inline
def _sharp(prob: float, det: float) -> float:  # pragma: no cover - compiled
    """error_model.sharpest: where(isfinite(prob), minimum(prob, det), det)."""
    if prob - prob == 0.0:
        if det != det:
            return det
        return prob if prob < det else det
    return det


@_per_channel
def materialise(
    x: np.ndarray,
    dy: np.ndarray,
    prior: np.ndarray,
    k: np.ndarray,
    batch: bool,
    add: bool,
    which: int,
    p0: int,
    out: np.ndarray,
    c0: int,
    c1: int,
) -> None:  # pragma: no cover - compiled
    """Write y and its deterministic and sharp bounds (which 0: out[0..2]), or dx fresh, dx as requested and
    its bounds (which 1: out[0..3]), the block's rows from row p0 of out's P."""
    blocks, _, inner = x.shape
    for c in range(c0, c1):
        t = _row(k[c])
        for p in range(blocks):
            for q in range(inner):
                pv = np.float64(prior[p, c, q]) if add else 0.0
                y, fresh, acc, by, sy, bdx, sdx = _element(
                    np.float64(x[p, c, q]), np.float64(dy[p, c, q]), pv, t, batch, add
                )
                if which == 0:
                    out[0, p0 + p, c, q] = y
                    out[1, p0 + p, c, q] = by
                    out[2, p0 + p, c, q] = _sharp(sy, by)
                else:
                    out[0, p0 + p, c, q] = fresh
                    out[1, p0 + p, c, q] = acc
                    out[2, p0 + p, c, q] = bdx
                    out[3, p0 + p, c, q] = _sharp(sdx, bdx)


#: Columns of compare's result (per channel; y in row 0, dx in row 1).  The worst ratios' positions are flat
#: indices into the case's arrays (C order), so that the smallest among equal ratios is numpy's argmax.
VERDICT = ("worst", "worst_at", "worst_sharp", "worst_sharp_at", "pattern", "bad", "bad_sharp")
_NEAR = 1.0 - 2.0**-40  # an element is judged exactly where its error exceeds _NEAR * a lower bound * the worst
_TINY = 2.0**-960  # ratio so far (or its lower bound is so small that the product could lose its precision)
#: A linear form raised by this much is at least the bound it stands for: the forms and the bounds are sums of
#: the same non-negative terms, each rounded a few times (within 2^-48 of each other), and the forms are shrunk
#: by SHRINK.
_ABOVE = (1.0 + 2.0**-38) / SHRINK


@_inline
def _adjusted(e: float, a: float, threshold: float) -> float:  # pragma: no cover - compiled
    """comparator._overflow_adjusted at one element."""
    if (a - a != 0.0) and a == a and (e - e == 0.0):  # a is +-inf, e finite
        sign = 1.0 if a > 0 else -1.0
        if sign * e >= threshold:
            return e
        return sign * threshold
    return a


@_inline
def _ratio(err: float, bound: float) -> float:  # pragma: no cover - compiled
    """comparator._ratio at one element."""
    if bound > 0:
        return err / bound
    return np.inf if err > 0 else 0.0


@_inline
def _sort(err: float, low: float, worst: float) -> Any:  # pragma: no cover - compiled
    """An error against a bound known to lie in [low, low * _ABOVE]: (certainly beyond the bound, must be judged
    exactly: it may be beyond it or not, or beyond the worst ratio ``worst`` so far).  NaN (a NaN/inf value, a
    form that cannot be used) is always judged exactly; an error of 0 never is.  Bitwise operators, not
    and/or: no branches, so that the scan vectorises."""
    over = err > low * _ABOVE
    undecided = (not (err <= _NEAR * low)) & (not over)
    beyond_worst = not (err <= _NEAR * low * worst)
    tiny = (err != 0.0) & (not (low > _TINY))
    return over, undecided | beyond_worst | tiny


@_inline
def _judge(e: float, a: float, bound: float, sharp: float, at: float, r: Any) -> Any:  # pragma: no cover - compiled
    """comparator._compare_one at one flagged element ``at``, folded into r = (worst, worst_at, worst_sharp,
    worst_sharp_at, pattern, bad, bad_sharp); also whether the element is beyond each bound."""
    worst, worst_at, worst_sharp, worst_sharp_at, pattern, bad, bad_sharp = r
    over = over_sharp = False
    if not (e - e == 0.0 and a - a == 0.0):
        if not ((e != e and a != a) or e == a):
            pattern += 1.0
        return (worst, worst_at, worst_sharp, worst_sharp_at, pattern, bad, bad_sharp), over, over_sharp
    err = abs(a - e)
    worst, worst_at, bad, over = _fold(_ratio(err, bound), worst, worst_at, bad, at)
    worst_sharp, worst_sharp_at, bad_sharp, over_sharp = _fold(
        _ratio(err, sharp), worst_sharp, worst_sharp_at, bad_sharp, at
    )
    return (worst, worst_at, worst_sharp, worst_sharp_at, pattern, bad, bad_sharp), over, over_sharp


@_inline
def _fold(ratio: float, worst: float, worst_at: float, count: float, at: float) -> Any:  # pragma: no cover
    """One error/bound ratio folded into (the worst, its first position, how many are beyond 1); also whether
    this one is."""
    if ratio > worst:
        worst, worst_at = ratio, at
    over = ratio > 1
    return worst, worst_at, count + (1.0 if over else 0.0), over


@_jit
def _scan(
    xr: np.ndarray,
    dr: np.ndarray,
    pr: np.ndarray,
    ar: np.ndarray,
    adr: np.ndarray,
    t: Any,
    batch: bool,
    add: bool,
    with_dx: bool,
    worsts: Any,
    bits: np.ndarray,
) -> Any:  # pragma: no cover - compiled
    """One row of compare, without branches (so that the compiler vectorises it): each element's bits (OVER_Y,
    OVER_SHARP_Y, OVER_DX, OVER_SHARP_DX where certainly beyond that bound; EXACT where it must be judged
    exactly); returns how many are EXACT and how many certainly beyond each bound."""
    wy, wys, wd, wds = worsts
    exact = s0 = s1 = s2 = s3 = 0  # (integers: a float sum would not vectorise)
    for q in range(xr.shape[0]):
        d = np.float64(dr[q])
        pv = np.float64(pr[q]) if add else 0.0
        y, fresh, acc, axhat = _oracle(np.float64(xr[q]), d, pv, t, batch, add)
        err = abs(np.float64(ar[q]) - y)
        low = y_form(t.det_y, axhat, abs(y)) * SHRINK
        low_sharp = _lower(low, y_form(t.prob_y, axhat, abs(y)) * SHRINK)
        o1, e1 = _sort(err, low, wy)
        o2, e2 = _sort(err, low_sharp, wys)
        o3 = o4 = e3 = e4 = False
        if with_dx:
            err = abs(np.float64(adr[q]) - acc)
            ad, af, aa = abs(d), abs(fresh), abs(acc)
            low = dx_form(t.det_dx, axhat, ad, af, aa) * SHRINK
            low_sharp = _lower(low, dx_form(t.prob_dx, axhat, ad, af, aa) * SHRINK)
            o3, e3 = _sort(err, low, wd)
            o4, e4 = _sort(err, low_sharp, wds)
        e = e1 | e2 | e3 | e4
        b1, b2, b3, b4 = o1 & (not e), o2 & (not e), o3 & (not e), o4 & (not e)
        bits[q] = np.uint8(b1) | (np.uint8(b2) << 1) | (np.uint8(b3) << 2) | (np.uint8(b4) << 3) | (np.uint8(e) << 4)
        exact += 1 if e else 0
        s0 += 1 if b1 else 0
        s1 += 1 if b2 else 0
        s2 += 1 if b3 else 0
        s3 += 1 if b4 else 0
    return exact, s0, s1, s2, s3


#: compare's bits per element.
OVER_Y, OVER_SHARP_Y, OVER_DX, OVER_SHARP_DX, EXACT = 1, 2, 4, 8, 16


@_per_channel
def compare(
    x: np.ndarray,
    dy: np.ndarray,
    prior: np.ndarray,
    actual_y: np.ndarray,
    actual_dx: np.ndarray,
    k: np.ndarray,
    batch: bool,
    add: bool,
    with_dx: bool,
    thresholds: np.ndarray,
    p0: int,
    result: np.ndarray,
    bits: np.ndarray,
    c0: int,
    c1: int,
) -> None:  # pragma: no cover - compiled
    """The comparison of y (and dx) with the oracle under both bounds, per channel, continued from result[c]
    (rows y, dx; columns VERDICT); ``bits`` (x's shape as (P, C, Q)): OVER_Y, OVER_SHARP_Y, OVER_DX and
    OVER_SHARP_DX set where the element is beyond that bound.  ``p0``: the block's first row of P, for the
    flat indices.

    Each row of Q elements is first scanned without branches (_scan), each error set against the linear forms
    of fused.coefficients, which bracket the bounds within 2^-38: an element clearly beyond a bound is marked
    so; one near a bound, or that may be the worst so far, is judged with the exact bounds in a second walk of
    the row (the few rows that have any): the same worst ratios, positions and counts as judging every
    element exactly."""
    blocks, channels, inner = x.shape
    ty, tdx = thresholds[0], thresholds[1]
    for c in range(c0, c1):
        t = _row(k[c])
        if t.oracle.judged == 0.0:
            continue  # an indeterminate channel: not judged
        r = result[c]
        ry = (r[0, 0], r[0, 1], r[0, 2], r[0, 3], r[0, 4], r[0, 5], r[0, 6])
        rd = (r[1, 0], r[1, 1], r[1, 2], r[1, 3], r[1, 4], r[1, 5], r[1, 6])
        for p in range(blocks):
            xr, dr, pr, ar, adr, br = x[p, c], dy[p, c], prior[p, c], actual_y[p, c], actual_dx[p, c], bits[p, c]
            worsts = (ry[0], ry[2], rd[0], rd[2])  # (the row's classification uses the worsts it starts with)
            exact, s0, s1, s2, s3 = _scan(xr, dr, pr, ar, adr, t, batch, add, with_dx, worsts, br)
            ry = (ry[0], ry[1], ry[2], ry[3], ry[4], ry[5] + s0, ry[6] + s1)
            rd = (rd[0], rd[1], rd[2], rd[3], rd[4], rd[5] + s2, rd[6] + s3)
            if exact == 0:
                continue
            base = ((p0 + p) * channels + c) * inner
            for q in range(inner):
                if not br[q] & EXACT:
                    continue
                d = np.float64(dr[q])
                pv = np.float64(pr[q]) if add else 0.0
                y, fresh, acc, axhat = _oracle(np.float64(xr[q]), d, pv, t, batch, add)
                by, sy = _bounds_y(axhat, y, t)
                ry, over, over_sharp = _judge(y, _adjusted(y, np.float64(ar[q]), ty), by, _sharp(sy, by), base + q, ry)
                code = (OVER_Y if over else 0) | (OVER_SHARP_Y if over_sharp else 0)
                if with_dx:
                    bdx, sdx = _bounds_dx(axhat, d, fresh, acc, t, batch, add)
                    adx = _adjusted(acc, np.float64(adr[q]), tdx)
                    rd, over, over_sharp = _judge(acc, adx, bdx, _sharp(sdx, bdx), base + q, rd)
                    code |= (OVER_DX if over else 0) | (OVER_SHARP_DX if over_sharp else 0)
                br[q] = code
        for i in range(7):
            r[0, i] = ry[i]
            r[1, i] = rd[i]

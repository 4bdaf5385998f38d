"""The fused judging path: the oracle, the error model's bounds and the comparison of a large case in a few
passes over its data (numba kernels in bnprops/fused_kernels.py), with the numpy modules as the reference.

What it computes, and how it relates to the reference (tests/test_fused.py checks each point):

* **Per-channel sums** in three passes (x and dy; the centred terms; dy xhat), in blocks of the data
  (``CHUNK`` elements) whatever the case's size: memory beyond the case's own arrays is O(C).  The sums
  the oracle's values are made of (sum x, sum (x - mean)^2, sum dy, sum dy xhat) are compensated (Knuth's
  TwoSum): within an ulp or so of the exact sum of the reference's own terms, so at least as accurate as
  the reference's (the mean's extended-precision sum, float64's pairwise sums).  They agree with the
  reference's within the reference's own summation error, ``gamma_M u64 sum|terms|`` (u64 = 2^-53).  The
  sums of magnitudes that only scale bounds (sum |x|, sum |dy|, the partial sums' squares) are sequential
  float64 sums, within ``M u64`` of the reference's, relatively.  The sequential sums the error model and
  the known deviations replay (np.cumsum's partial sums, MXNet's float32 ``sum += t``) are bit for bit.
* **Per element** (y, dx, both models' bounds on them, the comparison with MXNet's values), one pass: each
  expression in the reference's order of operations with IEEE semantics, so given the same per-channel
  values it is the reference's bit for bit; MXNet's results are judged without any array being written.
  Only when a quantity disagrees (or a known deviation needs the arrays) are the oracle's and the bounds'
  arrays materialised, by the same formulas, and the reference comparator builds the Mismatch from them.
* **Same verdicts.**  For float16 and float32 data every bound is at least ``2^-24`` of the magnitudes
  the per-channel sums' differences move values by ``~2^-44`` (worst case ``2^-32``) of, so the fused
  and reference errors and bounds differ by far less than ``CLOSE`` (2^-8) of a bound.  Wherever a fused
  decision falls within ``CLOSE`` of its threshold (an error/bound ratio near 1, an indeterminate channel's
  or a drifting sum's test near its edge) the case is marked, and bnprops.judgement judges it again on the
  reference path: the fused path only ever decides what the reference would.  float64 data, whose bounds
  are of the size of float64 rounding itself, always take the reference path.

``BNPROPS_FUSED`` chooses the path: ``auto`` (the default: fused for float16/float32 cases of at least
``MIN_ELEMENTS`` elements when numba imports), ``always`` (every float16/float32 case), ``never``; ``forced``
does the same for a block of code.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bnprops.judging.apparatus import Judging, overflow_threshold
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, Case, Outputs, memoized, param_dtype, seed
from bnprops.model.error_model import (
    SAFETY,
    _exactness,
    _rounding_scale,
    _statistics,
    accumulation_dtype,
    compute_dtype,
    finished_bounds,
    indeterminate_channels,
    probabilistic_lambda,
    statistics_bounds,
    subnormal_step,
    sum_factor,
    unit_roundoff,
)
from bnprops.model.lazy_outputs import LazyOutputs
from bnprops.model.oracle import eps_as_applied, output_dtypes, per_channel_outputs
from bnprops.model.oracle import statistics as oracle_statistics

ENV = "BNPROPS_FUSED"
MODES = ("auto", "always", "never")
THREADS_ENV = "BNPROPS_FUSED_THREADS"
#: From this many elements on (x.size), "auto" takes the fused path (measured: see bnprops bench).
MIN_ELEMENTS = 20_000
#: Elements per block of the passes (a block holds whole rows of P; float16 blocks are widened to float32).
CHUNK = 1 << 16
#: How near its threshold a fused decision may fall before the reference path decides the case instead.
CLOSE = 2.0**-8

_forced: str | None = None
_chunk: int | None = None
_threads: int | None = None


@contextlib.contextmanager
def forced(mode: str, *, chunk: int | None = None, threads: int | None = None) -> Iterator[None]:
    """Take ``mode``'s path (blocks of ``chunk`` elements, ``threads`` threads) for the cases first judged
    inside the block."""
    global _forced, _chunk, _threads
    if mode not in MODES:
        raise ValueError(f"unknown fused mode {mode!r}; choose from {MODES}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be 1 or more, not {threads}")
    before = _forced, _chunk, _threads
    _forced, _chunk, _threads = mode, chunk, threads or _threads
    try:
        yield
    finally:
        _forced, _chunk, _threads = before


def mode() -> str:
    chosen = _forced or os.environ.get(ENV, "auto") or "auto"
    if chosen not in MODES:
        raise ValueError(f"{ENV}={chosen!r}: choose from {MODES}")
    return chosen


@functools.cache
def available() -> bool:
    """Does numba import (and the kernels with it)?"""
    try:
        import bnprops.model.fused_kernels  # noqa: F401
    except ImportError:
        return False
    return True


def active(case: Case) -> bool:
    """Does ``case`` take the fused path? Decided once per case."""
    return case.memo("fused/active", lambda: _eligible(case))


def _eligible(case: Case) -> bool:
    chosen = mode()
    if chosen == "never" or case.dtype not in ("float16", "float32") or case.x.size == 0:
        return False
    if chosen == "auto" and case.x.size < MIN_ELEMENTS:
        return False
    return available()


def close_call(case: Case) -> bool:
    """Did a fused decision on ``case`` fall within CLOSE of its threshold (so the reference must decide)?"""
    return bool(getattr(case, "__dict__", {}).get("_memo", {}).get("fused/close", False))


def _mark_close(case: Case) -> None:
    case.__dict__.setdefault("_memo", {})["fused/close"] = True


def near(case: Case, *ratios: float) -> None:
    """Mark ``case`` if an error/bound ratio that decides a finding is within CLOSE of 1 (where the two paths'
    rounding could decide it differently)."""
    if any(abs(r - 1) <= CLOSE for r in ratios):
        _mark_close(case)


#: The model's memo entries the fused path gives its own values (the same values, within its rounding).
SEEDED = ("statistics", "mean_abs", "partial_sum_factors", "fresh_reference", "reference")


def prepare(case: Case) -> bool:
    """Seed ``case``'s memo with the fused path's statistics, sums and (lazy) oracle, where it takes the path;
    then every reader of the model (oracle, error model, known deviations, invariants) shares them.  A case
    the model has already computed any of these for stays on the reference path.  Returns active(case)."""
    if not active(case) or memoized(case, "fused/prepared"):
        return active(case)
    if any(memoized(case, key) is not None for key in SEEDED):
        seed(case, "fused/active", False)
        return False
    seed(case, "statistics", statistics(case))
    seed(case, "mean_abs", mean_abs(case))
    seed(case, "partial_sum_factors", partial_sum_factors(case))
    seed(case, "fresh_reference", fresh_reference(case))
    seed(case, "reference", reference(case))
    seed(case, "fused/prepared", True)
    return True


def reference_twin(case: Case) -> Case:
    """The same case (equal, same fingerprint) with nothing computed yet, judged on the reference path."""
    twin = case.with_()
    twin.memo("fused/active", lambda: False)
    return twin


# --- blocks ------------------------------------------------------------------------------------------------


def _three(case: Case, values: np.ndarray) -> np.ndarray:
    """``values`` (x's shape) as (P, C, Q): a view where the layout allows."""
    axis = case.channel_axis
    p = int(np.prod(case.shape[:axis], dtype=np.int64))
    q = int(np.prod(case.shape[axis + 1 :], dtype=np.int64))
    return np.reshape(values, (p, case.channels, q))


def _blocks(case: Case) -> list[slice]:
    """Slices of P: float16 data (widened) and arrays not contiguous (copied) block by block, CHUNK elements
    each; contiguous float32 data in one block, read in place."""
    p, c, q = _three(case, case.x).shape
    arrays = (case.x, case.dy) if case.prior_dx is None else (case.x, case.dy, case.prior_dx)
    if _chunk is None and case.dtype != "float16" and all(a.flags.c_contiguous for a in arrays):
        return [slice(0, p)]
    step = max(1, (_chunk or CHUNK) // max(1, c * q))
    return [slice(start, min(start + step, p)) for start in range(0, p, step)]


def threads() -> int:
    """How many threads share a case's channels (BNPROPS_FUSED_THREADS; default: one per core)."""
    chosen = _threads or os.environ.get(THREADS_ENV, "") or str(os.cpu_count() or 1)
    try:
        n = int(chosen)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{THREADS_ENV}={chosen!r}: give a whole number of threads, 1 or more")
    return n


def set_threads(n: int) -> None:
    """Use ``n`` threads from now on (a fuzz worker sharing the cores with others takes its share)."""
    global _threads
    if n < 1:
        raise ValueError(f"threads must be 1 or more, not {n}")
    _threads = n


def share_cores(processes: int) -> None:
    """This process is one of ``processes`` sharing the machine (fuzz workers, pytest-xdist's): its share of
    the cores, unless BNPROPS_FUSED_THREADS says otherwise."""
    if not os.environ.get(THREADS_ENV):
        set_threads(max(1, (os.cpu_count() or 1) // max(1, processes)))


@functools.cache
def _pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="bnprops-fused")


def _sweep(case: Case, kernel: Callable[..., None], arguments: Callable[[slice], tuple[Any, ...]]) -> None:
    """``kernel(*arguments(b), c0, c1)`` for each block b in order, its channels shared among threads()
    threads (the kernels release the GIL; each channel is one thread's, in order, so the sums are the same
    whatever the number of threads)."""
    n = min(threads(), case.channels)
    edges = [case.channels * i // n for i in range(n + 1)]
    groups = [(edges[i], edges[i + 1]) for i in range(n)]
    for b in _blocks(case):
        args = arguments(b)
        if n == 1:
            kernel(*args, 0, case.channels)
        else:
            list(_pool(n).map(lambda group, args=args: kernel(*args, *group), groups))


def _wide(block: np.ndarray) -> np.ndarray:
    """A block as the kernels take every input: float32 (numba has no float16; widening is exact), C-contiguous,
    read-only (so that each kernel is compiled once, for one type of array)."""
    view = np.ascontiguousarray(block, dtype=np.float32).view()
    view.flags.writeable = False
    return view


# --- per-channel sums --------------------------------------------------------------------------------------


def _kernels() -> Any:
    import bnprops.model.fused_kernels as kernels

    return kernels


def _finite_sum(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A compensated sum's value: hi + lo, or hi where it is not finite (NaN/inf terms: IEEE's result)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(np.where(np.isfinite(hi), hi + lo, hi))


def _quotient(hi: np.ndarray, lo: np.ndarray, m: int) -> np.ndarray:
    """(hi + lo) / m, rounded once (to within a hair of correct rounding): the remainder of hi / m by
    Dekker's exact product, added back."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        q1 = hi / m
        split = 134217729.0  # 2^27 + 1
        big = q1 * split
        a_hi = big - (big - q1)
        a_lo = q1 - a_hi
        b = float(m)  # m < 2^26: exactly its own high half
        p = q1 * b
        e = ((a_hi * b - p) + a_lo * b) + 0.0
        r = ((hi - p) - e) + lo
        q = q1 + r / b
        return np.asarray(np.where(np.isfinite(hi) & np.isfinite(q), q, q1))


def _raw(case: Case) -> dict[str, np.ndarray]:
    def compute() -> dict[str, np.ndarray]:
        k = _kernels()
        state = np.zeros((case.channels, len(k.RAW)))
        state[:, k.R["x_min"]], state[:, k.R["x_max"]] = np.inf, -np.inf
        state[:, k.R["x_finite"]] = state[:, k.R["dy_finite"]] = 1.0
        x3, dy3 = _three(case, case.x), _three(case, case.dy)
        _sweep(case, k.raw_sums, lambda b: (_wide(x3[b]), _wide(dy3[b]), state))
        return {name: state[:, i].copy() for name, i in k.R.items()}

    return case.memo("fused/raw", compute)


def statistics(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """oracle.statistics on the fused path."""
    if not case.uses_batch_stats:
        return case.moving_mean.astype(np.float64), case.moving_var.astype(np.float64)
    raw = _raw(case)
    m = case.reduction_length
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mean = _quotient(raw["x_hi"], raw["x_lo"], m)
        nan = raw["x_nan"] > 0
        lo = np.where(nan, np.nan, raw["x_min"])
        hi = np.where(nan, np.nan, raw["x_max"])
        mean = np.where((lo == hi) & np.isfinite(lo), lo, mean)
        centred = _centred(case, mean)
        var = _finite_sum(centred["c2_hi"], centred["c2_lo"]) / m
        var = np.where(np.isfinite(mean), var, np.nan)
    return np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)


def _centred(case: Case, mean: np.ndarray) -> dict[str, np.ndarray]:
    """The sums of the centred terms, about ``mean`` (the statistics' mean; 0 where it is not finite)."""

    def compute() -> dict[str, np.ndarray]:
        k = _kernels()
        state = np.zeros((case.channels, len(k.CENTRED)))
        finite_mean = np.ascontiguousarray(np.where(np.isfinite(mean), mean, 0.0), dtype=np.float64)
        x3, dy3 = _three(case, case.x), _three(case, case.dy)
        _sweep(case, k.centred_sums, lambda b: (_wide(x3[b]), _wide(dy3[b]), finite_mean, state))
        return {name: state[:, i].copy() for name, i in k.K.items()}

    return case.memo("fused/centred", compute)


def _statistics_mean(case: Case) -> np.ndarray:

    return oracle_statistics(case)[0]


def mean_abs(case: Case) -> np.ndarray:
    """mean |x| over the finite x, per channel (error_model._compute_statistics)."""
    return np.asarray(_raw(case)["x_abs"] / case.reduction_length)


def partial_sum_factors(case: Case) -> dict[str, np.ndarray]:
    """error_model._partial_sum_factors on the fused path."""

    raw, centred = _raw(case), _centred(case, _statistics_mean(case))
    acc = accumulation_dtype(case.dtype)
    lam = probabilistic_lambda(case.channels)
    worst = sum_factor(max(case.reduction_length - 1, 0), acc, model="deterministic")
    pairs = {
        "x": (raw["x_spread"], raw["x_abs"]),
        "c2": (centred["c2_spread"], centred["c2_abs"]),
        "dy": (raw["dy_spread"], raw["dy_abs_finite"]),
        "dot": (centred["dot_spread"], centred["dot_abs"]),
    }
    factors = {}
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for name, (squares, total) in pairs.items():
            spread = np.sqrt(squares)
            factor = np.where(total > 0, lam * unit_roundoff(acc) * spread / np.where(total > 0, total, 1.0), 0.0)
            factors[name] = np.asarray(np.minimum(factor, worst), dtype=np.float64)
    return factors


def drifts(case: Case) -> dict[str, np.ndarray]:
    """deviation_models._drifting for the four sums (x, c2, dy, dot), before the finite-channel mask."""

    def compute() -> dict[str, np.ndarray]:
        raw, mean = _raw(case), _statistics_mean(case)
        centred = _centred(case, mean)
        factors = partial_sum_factors(case)
        finite_mean = np.isfinite(mean)
        streams = {
            "x": (raw["x_f32"], _finite_sum(raw["x_hi"], raw["x_lo"]), raw["x_abs"], raw["x_finite"] > 0),
            "c2": (centred["c2_f32"], _finite_sum(centred["c2_hi"], centred["c2_lo"]), centred["c2_abs"], finite_mean),
            "dy": (raw["dy_f32"], _finite_sum(raw["dy_hi"], raw["dy_lo"]), raw["dy_abs_finite"], raw["dy_finite"] > 0),
            "dot": (
                centred["dot_f32"],
                _finite_sum(centred["dot_hi"], centred["dot_lo"]),
                centred["dot_abs"],
                finite_mean & (raw["dy_finite"] > 0),
            ),
        }
        found = {}
        with np.errstate(over="ignore", invalid="ignore"):
            for name, (sequential, total, magnitude, defined) in streams.items():
                drift = np.abs(sequential - total)
                allowed = factors[name] * magnitude
                found[name] = np.asarray(defined & (drift > allowed))
                # Where the test is within the two paths' rounding of its edge, the reference decides.
                # (allowed is 0 only where every term is, or there is one: the sums are exact on both paths.)
                edge = (np.abs(drift - allowed) <= CLOSE * allowed + 2.0**-40 * magnitude) & (allowed > 0)
                if (defined & (raw["x_finite"] > 0) & edge).any():
                    _mark_close(case)
        return found

    return case.memo("fused/drifts", compute)


def _xhat_sums(case: Case) -> dict[str, np.ndarray]:
    """sum dy xhat (the oracle's, with invstd) and the bounds' (with 0 where var + eps <= 0), sum |dy xhat|."""

    def compute() -> dict[str, np.ndarray]:
        k = _kernels()
        mean, var = oracle_statistics(case)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            s2 = var + eps_as_applied(case)
            invstd = 1.0 / np.sqrt(s2)
            inv = np.where(s2 > 0, 1 / np.sqrt(s2), 0.0)
        x3, dy3 = _three(case, case.x), _three(case, case.dy)
        mean_c = np.ascontiguousarray(mean, dtype=np.float64)

        def run(scale: np.ndarray, wanted: np.ndarray) -> np.ndarray:
            state = np.zeros((case.channels, 3))
            scale = np.ascontiguousarray(scale)
            _sweep(case, k.xhat_sums, lambda b: (_wide(x3[b]), _wide(dy3[b]), mean_c, scale, wanted, state))
            return state

        bound_state = run(inv, np.ones(case.channels, dtype=np.bool_))
        bound_dot = _finite_sum(bound_state[:, 0], bound_state[:, 1])
        differs = ~(invstd == inv)
        oracle_dot = bound_dot.copy()
        if differs.any():
            own = run(invstd, differs)
            oracle_dot[differs] = _finite_sum(own[:, 0], own[:, 1])[differs]
        return {"oracle_dot": oracle_dot, "bound_dot": bound_dot, "abs_dot": bound_state[:, 2].copy()}

    return case.memo("fused/xhat", compute)


# --- the oracle --------------------------------------------------------------------------------------------


def _arrays(case: Case, which: int) -> list[np.ndarray]:
    """Every element's y and its deterministic and sharp bounds (``which`` 0), or dx fresh, dx as requested and
    its two bounds (1), as the reference computes them."""

    def compute() -> list[np.ndarray]:
        k = _kernels()
        coeffs, batch = _coefficients(case)
        add = case.request("data") == "add" and case.prior_dx is not None
        x3, dy3 = _three(case, case.x), _three(case, case.dy)
        prior3 = _three(case, case.prior_dx) if add and case.prior_dx is not None else x3
        out = np.empty((3 if which == 0 else 4, *x3.shape))

        def arguments(b: slice) -> tuple[Any, ...]:
            return _wide(x3[b]), _wide(dy3[b]), _wide(prior3[b]), coeffs, batch, add, which, b.start, out

        _sweep(case, k.materialise, arguments)
        arrays = [np.reshape(a, case.shape) for a in out]
        for a in arrays:
            a.flags.writeable = False
        return arrays

    result: list[np.ndarray] = case.memo(f"fused/arrays/{which}", compute)
    return result


#: Where each lazily computed array comes from: (_arrays' which, index).
_Y, _Y_BOUND, _Y_SHARP = (0, 0), (0, 1), (0, 2)
_DX_FRESH, _DX, _DX_BOUND, _DX_SHARP = (1, 0), (1, 1), (1, 2), (1, 3)


def _element(case: Case, where: tuple[int, int]) -> Callable[[], np.ndarray]:
    return lambda: _arrays(case, where[0])[where[1]]


def _fresh_per_channel(case: Case) -> Outputs:
    """The oracle's per-channel quantities (oracle._fresh_reference's, from the fused sums)."""

    def compute() -> Outputs:

        g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
        mean, var = oracle_statistics(case)
        raw = _raw(case)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            invstd = 1.0 / np.sqrt(var + eps_as_applied(case))
        sum_dy_xhat = _xhat_sums(case)["oracle_dot"]
        dbeta = _finite_sum(raw["dy_hi"], raw["dy_lo"])
        out = per_channel_outputs(case, mean, var, invstd, dbeta, sum_dy_xhat)
        for value in out.values():
            value.flags.writeable = False
        # internal: the per-channel values the per-element formulas need
        out["_invstd"], out["_g"], out["_sum_dy_xhat"] = invstd, g, sum_dy_xhat
        return out

    result: Outputs = case.memo("fused/fresh", compute)
    return result


_ORDER = ("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var", "gamma")


def _public(values: Outputs) -> Outputs:
    return {k: v for k, v in values.items() if not k.startswith("_")}


def fresh_reference(case: Case) -> LazyOutputs:
    """oracle.fresh_reference on the fused path (y and dx computed when first looked at)."""
    per_channel = _public(_fresh_per_channel(case))
    eager = {q: per_channel[q] for q in _ORDER if q in per_channel}
    eager.update({q: v for q, v in per_channel.items() if q not in eager})
    return _ordered(eager, {"y": _element(case, _Y), "dx": _element(case, _DX_FRESH)})


def _ordered(eager: Outputs, lazy: dict[str, Callable[[], np.ndarray]]) -> LazyOutputs:
    """LazyOutputs with the reference's key order (y, dx first)."""
    result = LazyOutputs({}, {})
    for key in ("y", "dx"):
        if key in lazy:
            dict.__setitem__(result, key, None)
            result._lazy[key] = lazy[key]
    for key, value in eager.items():
        dict.__setitem__(result, key, value)
    return result


def reference(case: Case) -> LazyOutputs:
    """oracle.reference on the fused path: 'null' gradients absent, 'add' ones on top of their prior."""
    fresh = _public(_fresh_per_channel(case))
    eager: Outputs = {q: fresh[q] for q in _ORDER if q in fresh}
    eager.update({q: v for q, v in fresh.items() if q not in eager})
    lazy: dict[str, Callable[[], np.ndarray]] = {"y": _element(case, _Y), "dx": _element(case, _DX)}
    for target in GRAD_TARGETS:
        quantity = GRADIENT_OF[target]
        prior = case.prior(target)
        if case.request(target) == "null":
            eager.pop(quantity, None)
            lazy.pop(quantity, None)
        elif prior is not None and quantity != "dx":
            eager[quantity] = prior.astype(np.float64) + eager[quantity]
    return _ordered(eager, lazy)


# --- the bounds --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ModelBounds:
    per_channel: Outputs  # the bounds of the per-channel quantities, as error_model.bounds returns them
    coefficients: np.ndarray  # (C, MODEL): the per-element formulas' per-channel factors


def _model_bounds(case: Case, model: str) -> _ModelBounds:
    """error_model._bounds' per-channel parts for ``model`` (training_backward False, expected = the oracle's)."""

    def compute() -> _ModelBounds:

        k = _kernels()
        accumulated = reference(case)
        fresh = _public(_fresh_per_channel(case))
        st = _statistics(case, model)
        u, sums = st.u, st.sum_factors
        r = _rounding_scale(model)
        u_data = r * unit_roundoff(case.dtype)
        u_param = r * unit_roundoff(param_dtype(case.dtype))
        tiny_data = r * subnormal_step(case.dtype)
        tiny_term = r * subnormal_step(compute_dtype(case.dtype))
        acc_dtype = accumulation_dtype(case.dtype)
        ua = r * unit_roundoff(acc_dtype)
        m = case.reduction_length
        g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
        ag = np.abs(g)
        s2, rel = st.s2, st.rel_inv
        raw, xhat = _raw(case), _xhat_sums(case)
        co = np.zeros((case.channels, k.MODEL))
        c = {name: i - k.FIRST for name, i in k.C_.items() if i >= k.FIRST}
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            inv = np.where(s2 > 0, 1 / np.sqrt(s2), 0.0)
            shift = st.e_mean * inv * (1 + rel)
            co[:, c["a1"]] = shift + tiny_term * (1 + inv)
            co[:, c["b1"]] = rel + 2 * u
            co[:, c["u"]] = u
            co[:, c["ty"]] = tiny_term * (1 + ag)
            co[:, c["ud"]] = u_data
            co[:, c["td"]] = tiny_data
            co[:, c["safety"]] = SAFETY if model == "deterministic" else 1.0
            out: Outputs = {}
            sum_ady = raw["dy_abs"]
            dbeta = fresh["dbeta"]
            e_dbeta = sums["dy"] * sum_ady
            out["dbeta"] = e_dbeta + u_param * np.abs(dbeta)
            dgamma = xhat["bound_dot"]
            sum_adx = xhat["abs_dot"]
            per_product = np.where(_exactness(case).dot_sum, 0.0, 3 * u)
            e_products = per_product * sum_adx
            e_dgamma = (
                shift * np.abs(dbeta)
                + rel * np.abs(dgamma)
                + e_products
                + sums["dot"] * sum_adx
                + m * tiny_term * np.maximum(1.0, inv)
            )
            out["dgamma"] = np.zeros(case.channels) if case.fix_gamma else e_dgamma + u_param * np.abs(dgamma)
            if case.uses_batch_stats:
                t2 = np.abs(dbeta) / m
                co[:, c["k1"]] = np.abs(dgamma) / m
                co[:, c["k2"]] = e_dgamma / m
                co[:, c["t2"]] = t2
                co[:, c["e0"]] = e_dbeta / m + ua * t2
                co[:, c["agi"]] = ag * inv
                co[:, c["ua2"]] = 2 * ua
                co[:, c["u2"]] = 2 * u
                co[:, c["tiny3"]] = 3 * tiny_term
            co[:, c["tx"]] = tiny_term * (ag * np.maximum(1.0, inv))
        out.update(statistics_bounds(case, st, model, fresh))
        result = finished_bounds(case, out, accumulated, model)
        return _ModelBounds(result, co)

    bounds: _ModelBounds = case.memo(f"fused/bounds/{model}", compute)
    return bounds


def _coefficients(case: Case) -> tuple[np.ndarray, bool]:
    """Per channel, every factor of the per-element formulas (fused_kernels.COEFFICIENTS), and whether dx
    takes the batch-statistics formula."""

    def compute() -> np.ndarray:

        k = _kernels()
        fresh = _fresh_per_channel(case)
        mean = _statistics_mean(case)
        m = case.reduction_length
        det, prob = _model_bounds(case, "deterministic"), _model_bounds(case, "probabilistic")
        co = np.zeros((case.channels, k.WIDTH))
        invstd, g = fresh["_invstd"], fresh["_g"]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            co[:, k.C_["mean"]] = mean
            co[:, k.C_["invstd"]] = invstd
            co[:, k.C_["g"]] = g
            co[:, k.C_["beta"]] = case.beta.astype(np.float64)
            co[:, k.C_["scale"]] = g * invstd
            co[:, k.C_["dbeta_m"]] = fresh["dbeta"] / m
            co[:, k.C_["dot_m"]] = fresh["_sum_dy_xhat"] / m
            s2 = _model_statistics(case).s2
            co[:, k.C_["inv"]] = np.where(s2 > 0, 1 / np.sqrt(s2), 0.0)
            co[:, k.C_["ag"]] = np.abs(g)
        co[:, k.C_["judged"]] = ~np.asarray(indeterminate_channels(case), dtype=bool)
        co[:, k.FIRST : k.FIRST + k.MODEL] = det.coefficients
        co[:, k.FIRST + k.MODEL : k.LINEAR] = prob.coefficients
        for model, start in ((det, k.LINEAR), (prob, k.LINEAR + 8)):
            add = case.request("data") == "add" and case.prior_dx is not None
            co[:, start : start + 8] = _linear(model.coefficients, co[:, k.C_["ag"]], case.uses_batch_stats, add)
        return np.ascontiguousarray(co)

    coeffs: np.ndarray = case.memo("fused/coefficients", compute)
    return coeffs, case.uses_batch_stats


def _linear(model: np.ndarray, ag: np.ndarray, batch: bool, add: bool) -> np.ndarray:
    """One model's bounds on y and dx as linear forms in |xhat|, |y|, |dy|, |dx| and |dx as requested| (the same
    sums, expanded): y ~ a + b |xhat| + c |y|; dx ~ A + B |xhat| + D |dy| + F |dx| + G |dx as requested|.  All
    terms are non-negative, so the forms, evaluated in float64 and shrunk by SHRINK (2^-40, far above their
    and the bounds' few roundings), never exceed the bounds; NaN (never used) where a factor is not finite."""
    a1, b1, u, ty, ud, td, sf, k1, k2, t2, e0, agi, tx, ua2, u2, tiny3 = model.T
    with np.errstate(invalid="ignore", over="ignore"):
        forms = [sf * (ag * a1 + ty + td), sf * ag * (b1 + u), sf * (u + ud)]
        if batch:
            forms += [
                sf * (agi * (e0 + a1 * (k1 + k2) + tiny3 + u2 * t2) + tx + td),
                sf * agi * (b1 * (k1 + k2) + k2 + (ua2 + u2) * k1),
                sf * agi * u2,
            ]
        else:
            forms += [sf * (tx + td), 0 * sf, 0 * sf]
        forms += [sf * (b1 + ud), sf * ud if add else 0 * sf]
        linear = np.stack(forms, axis=1)
        usable = np.all(np.isfinite(linear) & (linear >= 0), axis=1, keepdims=True)
        return np.where(usable, linear, np.nan)


def _model_statistics(case: Case) -> Any:

    return _statistics(case, "deterministic")


def _check_indeterminate(case: Case) -> None:
    """error_model._indeterminate's test, near its edge: the reference decides."""
    st = _model_statistics(case)
    with np.errstate(invalid="ignore", over="ignore"):
        lhs = 2 * (st.e_var + st.e_eps)
        if (np.abs(lhs - st.s2) <= CLOSE * np.abs(st.s2)).any():
            _mark_close(case)


def bounds(case: Case) -> tuple[LazyOutputs, LazyOutputs]:
    """error_model.bounds(case, reference(case)) and sharp_bounds(case, reference(case), that) on the fused path."""
    det = _model_bounds(case, "deterministic").per_channel
    prob = _model_bounds(case, "probabilistic").per_channel
    with np.errstate(invalid="ignore"):
        sharp = {q: np.where(np.isfinite(b), np.minimum(b, det[q]), det[q]) for q, b in prob.items()}
    expected = reference(case)
    lazy_det = {q: _element(case, i) for q, i in (("y", _Y_BOUND), ("dx", _DX_BOUND)) if q in expected}
    lazy_sharp = {q: _element(case, i) for q, i in (("y", _Y_SHARP), ("dx", _DX_SHARP)) if q in expected}
    return _ordered(det, lazy_det), _ordered(sharp, lazy_sharp)


def judging(case: Case) -> Judging:
    """comparator.judging's apparatus on the fused path (y and dx, and their bounds, computed on demand)."""

    _check_indeterminate(case)
    bound, sharp = bounds(case)
    return Judging(reference(case), bound, sharp, output_dtypes(case), indeterminate_channels(case))


# --- the comparison ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Compared:
    """One per-element quantity judged on the fused path: what comparator._compare_one finds (worst ratios,
    where the worst lie, counts) and which elements are beyond each bound, for ``actual``."""

    actual: np.ndarray  # what was judged (the judgement asks again about the same array)
    worst: float
    worst_at: int  # flat index (C order) of the first largest error/bound
    worst_sharp: float
    worst_sharp_at: int
    pattern: int  # elements whose NaN/inf pattern differs from the oracle's
    bad: int  # beyond the deterministic bound
    bad_sharp: int  # beyond the probabilistic bound
    bits: np.ndarray = dataclasses.field(repr=False)  # fused_kernels.compare's, (P, C, Q)
    over_bit: int = 0
    sharp_bit: int = 0

    @functools.cached_property
    def over(self) -> np.ndarray:
        """bool, the quantity's shape: beyond the deterministic bound."""
        return np.reshape(self.bits & self.over_bit != 0, self.actual.shape) if self.bad else self._none

    @functools.cached_property
    def over_sharp(self) -> np.ndarray:
        """bool, the quantity's shape: beyond the probabilistic bound."""
        return np.reshape(self.bits & self.sharp_bit != 0, self.actual.shape) if self.bad_sharp else self._none

    @functools.cached_property
    def off(self) -> np.ndarray | None:
        """bool, the quantity's shape: beyond either bound (None: nowhere)."""
        if not (self.bad or self.bad_sharp):
            return None
        return np.reshape(self.bits & (self.over_bit | self.sharp_bit) != 0, self.actual.shape)

    @property
    def _none(self) -> np.ndarray:
        return np.broadcast_to(False, self.actual.shape)


def compare(case: Case, actual: Outputs) -> dict[str, Compared]:
    """y and dx judged in one pass over the data (none where y is missing or misshapen): quantity -> Compared.
    Memoised per case for the same actual arrays."""
    expected = reference(case)
    wanted = [q for q in ("y", "dx") if q in expected and q in actual and _judgeable(actual[q], case.shape)]
    if "y" not in wanted:
        return {}
    arrays = {q: np.asarray(actual[q]) for q in wanted}
    before: dict[str, Compared] = memoized(case, "fused/compared") or {}
    if set(before) == set(wanted) and all(before[q].actual is arrays[q] for q in wanted):
        return before
    k = _kernels()
    coeffs, batch = _coefficients(case)
    with_dx = "dx" in wanted
    add = case.request("data") == "add" and case.prior_dx is not None
    dtypes = output_dtypes(case)
    thresholds = np.array([overflow_threshold(dtypes["y"]), overflow_threshold(dtypes["dx"])])
    x3, dy3 = _three(case, case.x), _three(case, case.dy)
    ay3 = _three(case, arrays["y"])
    adx3 = _three(case, arrays["dx"]) if with_dx else x3
    prior3 = _three(case, case.prior_dx) if add and case.prior_dx is not None else x3
    result = np.zeros((case.channels, 2, len(k.VERDICT)))
    bits = np.zeros(x3.shape, dtype=np.uint8)  # (an indeterminate channel's are never written)

    def arguments(b: slice) -> tuple[Any, ...]:
        blocks = (_wide(a[b]) for a in (x3, dy3, prior3, ay3, adx3))
        return (*blocks, coeffs, batch, add, with_dx, thresholds, b.start, result, bits[b])

    _sweep(case, k.compare, arguments)
    found: dict[str, Compared] = {}
    for row, q in enumerate(wanted):
        per_channel = result[:, row]
        worst, worst_at = _first_largest(per_channel[:, 0], per_channel[:, 1])
        worst_sharp, worst_sharp_at = _first_largest(per_channel[:, 2], per_channel[:, 3])
        pattern, bad, bad_sharp = (int(n) for n in per_channel[:, 4:].sum(axis=0))
        over_bit, sharp_bit = (k.OVER_Y, k.OVER_SHARP_Y) if q == "y" else (k.OVER_DX, k.OVER_SHARP_DX)
        found[q] = Compared(
            arrays[q], worst, worst_at, worst_sharp, worst_sharp_at, pattern, bad, bad_sharp, bits, over_bit, sharp_bit
        )
    seed(case, "fused/compared", found)
    return found


def _judgeable(values: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Can the kernels read these values as they are (float16 or float32, widened exactly), in x's shape?"""
    return np.shape(values) == shape and np.asarray(values).dtype in (np.float16, np.float32)


def _first_largest(values: np.ndarray, at: np.ndarray) -> tuple[float, int]:
    """The largest of the channels' worst ratios, and the smallest flat index among channels that reach it
    (numpy's argmax over the whole array)."""
    worst = float(values.max())
    return worst, int(at[values == worst].min())


def element(case: Case, quantity: str, index: tuple[int, ...]) -> tuple[float, float, float]:
    """The oracle's value of y or dx (as requested) at ``index``, and its deterministic and sharp bounds, by the
    formulas the materialised arrays use (one row of Q elements computed)."""
    k = _kernels()
    coeffs, batch = _coefficients(case)
    add = case.request("data") == "add" and case.prior_dx is not None
    flat = int(np.ravel_multi_index(index, case.shape))
    x3, dy3 = _three(case, case.x), _three(case, case.dy)
    prior3 = _three(case, case.prior_dx) if add and case.prior_dx is not None else x3
    _, channels, inner = x3.shape
    p, c, q = flat // (channels * inner), (flat // inner) % channels, flat % inner
    rows = (slice(p, p + 1), slice(c, c + 1))
    which = 0 if quantity == "y" else 1
    out = np.empty((3 if which == 0 else 4, 1, 1, inner))
    blocks = (_wide(x3[rows]), _wide(dy3[rows]), _wide(prior3[rows]))
    k.materialise(*blocks, np.ascontiguousarray(coeffs[c : c + 1]), batch, add, which, 0, out, 0, 1)
    values = [float(v) for v in out[:, 0, 0, q]]
    return (values[0], values[1], values[2]) if which == 0 else (values[1], values[2], values[3])


#: The near-threshold decisions of the case being judged (judgement.judge watches each fused case).
_watched: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("bnprops_fused_watched", default=None)


@contextlib.contextmanager
def watching() -> Iterator[list[bool]]:
    """Collect, inside the block, the comparator's decisions that fell within CLOSE of their threshold (an
    element-wise test within rounding of its bound: decided on the fused path's values, the reference must
    decide it again)."""
    found: list[bool] = []
    token = _watched.set(found)
    try:
        yield found
    finally:
        _watched.reset(token)


def watched() -> bool:
    """Is a fused case being judged (so that near-threshold decisions matter)?"""
    return _watched.get() is not None


def _note() -> None:
    found = _watched.get()
    if found is not None:
        found.append(True)


def note_near(ratio: np.ndarray, sharp_ratio: np.ndarray | None = None) -> None:
    """Note a quantity's finding (judged by numpy) decided by a ratio within CLOSE of 1: its worst error/bound,
    or, where that is within the bound, its worst error/sharp bound."""
    if _watched.get() is None:
        return
    worst = float(ratio.max()) if ratio.size else 0.0
    sharp = float(sharp_ratio.max()) if sharp_ratio is not None and sharp_ratio.size else 0.0
    if abs(worst - 1) <= CLOSE or (worst <= 1 and abs(sharp - 1) <= CLOSE):
        _note()


def mode_note() -> str:
    """A line on what the fused path is here (for reports)."""
    if not available():
        return "numba missing, reference path only"
    import numba

    return f"numba {numba.__version__}, auto from {MIN_ELEMENTS:,} elements, {threads()} threads"

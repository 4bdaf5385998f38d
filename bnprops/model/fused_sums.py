"""The fused path's per-channel sums, and how its kernels (``fused_kernels``) run: in blocks of the data, on
ranges of channels shared among threads, chosen by BNPROPS_FUSED and BNPROPS_FUSED_THREADS.

Judging a large case on numpy's reference path costs many times MXNet's own time; these passes make
the sums without the reference's intermediate arrays.  The oracle's sums are compensated (TwoSum), at
least as accurate as the reference's; the sequential sums the error model and the known deviations
replay are bit for bit; each channel is one thread's, so the bits do not depend on the thread count.
A decision within ``CLOSE`` of its threshold is reported to the evaluation, which the reference then decides.

``BNPROPS_FUSED`` chooses the path: ``auto`` (the default: fused for float16/float32 cases of at least
``MIN_ELEMENTS`` elements when numba imports), ``always`` (every float16/float32 case), ``never``;
``forced`` does the same for a block of code.  The sums' accuracy in detail: the documentation's speed page.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import Case
from bnprops.model.error_model import accumulation_dtype, partial_sum_factor
from bnprops.model.oracle import eps_as_applied

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
#: Are the kernels ready in this process? A fuzz worker waits for the campaign's one compilation (fused_start).
_ready: Callable[[], bool] | None = None
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


def supports(case: Case) -> bool:
    """Can the kernels take ``case`` (float16 or float32 data, some elements) where numba imports?"""
    return case.dtype in ("float16", "float32") and case.x.size > 0 and available()


def eligible(case: Case) -> bool:
    """Does ``case`` take the fused path, as BNPROPS_FUSED (or ``forced``) chooses now? ("auto" takes it only
    once the kernels are ready: see ``wait_for``.)"""
    chosen = mode()
    if chosen == "never" or not supports(case):
        return False
    return chosen == "always" or (case.x.size >= MIN_ELEMENTS and ready())


def wait_for(check: Callable[[], bool] | None) -> None:
    """From now on "auto" takes the reference path until ``check()`` says the kernels are compiled (None: no
    waiting), so that a process never compiles them itself: it loads them from numba's disk cache."""
    global _ready
    _ready = check


def ready() -> bool:
    global _ready
    if _ready is not None and not _ready():
        return False
    _ready = None  # ready once, ready for good
    return True


# --- blocks ------------------------------------------------------------------------------------------------


def as_three(case: Case, values: np.ndarray) -> np.ndarray:
    """``values`` (x's shape) as (P, C, Q): a view where the layout allows."""
    axis = case.channel_axis
    p = int(np.prod(case.shape[:axis], dtype=np.int64))
    q = int(np.prod(case.shape[axis + 1 :], dtype=np.int64))
    return np.reshape(values, (p, case.channels, q))


def blocks(case: Case) -> list[slice]:
    """Slices of P: float16 data (widened) and arrays not contiguous (copied) block by block, CHUNK elements
    each; contiguous float32 data in one block, read in place."""
    p, c, q = as_three(case, case.x).shape
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


def sweep(case: Case, kernel: Callable[..., None], arguments: Callable[[slice], tuple[Any, ...]]) -> None:
    """``kernel(*arguments(b), c0, c1)`` for each block b in order, its channels shared among threads()
    threads (the kernels release the GIL; each channel is one thread's, in order, so the sums are the same
    whatever the number of threads)."""
    n = min(threads(), case.channels)
    edges = [case.channels * i // n for i in range(n + 1)]
    groups = [(edges[i], edges[i + 1]) for i in range(n)]
    for b in blocks(case):
        args = arguments(b)
        if n == 1:
            kernel(*args, 0, case.channels)
        else:
            list(_pool(n).map(lambda group, args=args: kernel(*args, *group), groups))


def as_input(block: np.ndarray) -> np.ndarray:
    """A block as the kernels take every input: float32 (numba has no float16; widening is exact), C-contiguous,
    read-only (so that each kernel is compiled once, for one type of array)."""
    view = np.ascontiguousarray(block, dtype=np.float32).view()
    view.flags.writeable = False
    return view


# --- per-channel sums --------------------------------------------------------------------------------------


def kernels() -> Any:
    import bnprops.model.fused_kernels as kernels

    return kernels


def finite_sum(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """A compensated sum's value: hi + lo, or hi where it is not finite (NaN/inf terms: IEEE's result)."""
    with ignoring("invalid", "over"):
        return np.asarray(np.where(np.isfinite(hi), hi + lo, hi))


def _quotient(hi: np.ndarray, lo: np.ndarray, m: int) -> np.ndarray:
    """(hi + lo) / m, rounded once (to within a hair of correct rounding): the remainder of hi / m by
    Dekker's exact product, added back."""
    with ignoring("invalid", "over", "divide"):
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


def raw_sums(case: Case) -> dict[str, np.ndarray]:
    """The first pass: per channel, the sums of x and dy and their magnitudes, extremes and finiteness."""
    k = kernels()
    state = np.zeros((case.channels, len(k.RAW)))
    state[:, k.R["x_min"]], state[:, k.R["x_max"]] = np.inf, -np.inf
    state[:, k.R["x_finite"]] = state[:, k.R["dy_finite"]] = 1.0
    x3, dy3 = as_three(case, case.x), as_three(case, case.dy)
    sweep(case, k.raw_sums, lambda b: (as_input(x3[b]), as_input(dy3[b]), state))
    return {name: state[:, i].copy() for name, i in k.R.items()}


def statistics_mean(case: Case, raw: dict[str, np.ndarray]) -> np.ndarray:
    """oracle.statistics' mean from the first pass's sums (the moving mean where the call does not normalise
    with batch statistics)."""
    if not case.uses_batch_stats:
        return case.moving_mean.astype(np.float64)
    with ignoring("invalid", "over", "divide"):
        mean = _quotient(raw["x_hi"], raw["x_lo"], case.reduction_length)
        nan = raw["x_nan"] > 0
        lo = np.where(nan, np.nan, raw["x_min"])
        hi = np.where(nan, np.nan, raw["x_max"])
        return np.asarray(np.where((lo == hi) & np.isfinite(lo), lo, mean), dtype=np.float64)


def statistics(case: Case, mean: np.ndarray, centred: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """oracle.statistics from statistics_mean's ``mean`` and the second pass's sums about it."""
    if not case.uses_batch_stats:
        return mean, case.moving_var.astype(np.float64)
    with ignoring("invalid", "over", "divide"):
        var = finite_sum(centred["c2_hi"], centred["c2_lo"]) / case.reduction_length
        var = np.where(np.isfinite(mean), var, np.nan)
    return mean, np.asarray(var, dtype=np.float64)


def centred_sums(case: Case, mean: np.ndarray) -> dict[str, np.ndarray]:
    """The second pass: the sums of the centred terms, about ``mean`` (the statistics' mean; 0 where it is not
    finite)."""
    k = kernels()
    state = np.zeros((case.channels, len(k.CENTRED)))
    finite_mean = np.ascontiguousarray(np.where(np.isfinite(mean), mean, 0.0), dtype=np.float64)
    x3, dy3 = as_three(case, case.x), as_three(case, case.dy)
    sweep(case, k.centred_sums, lambda b: (as_input(x3[b]), as_input(dy3[b]), finite_mean, state))
    return {name: state[:, i].copy() for name, i in k.K.items()}


def mean_abs(case: Case, raw: dict[str, np.ndarray]) -> np.ndarray:
    """error_model.mean_abs from the first pass's sums."""
    return np.asarray(raw["x_abs"] / case.reduction_length)


def partial_sum_factors(
    case: Case, raw: dict[str, np.ndarray], centred: dict[str, np.ndarray], *, channels: int | np.ndarray
) -> dict[str, np.ndarray]:
    """error_model.partial_sum_factors from the passes' sums (``channels``: as there)."""
    acc = accumulation_dtype(case.dtype)
    pairs = {
        "x": (raw["x_spread"], raw["x_abs"]),
        "c2": (centred["c2_spread"], centred["c2_abs"]),
        "dy": (raw["dy_spread"], raw["dy_abs_finite"]),
        "dot": (centred["dot_spread"], centred["dot_abs"]),
    }
    m = case.reduction_length
    return {
        name: partial_sum_factor(squares, total, acc, channels=channels, terms=m)
        for name, (squares, total) in pairs.items()
    }


def drifts(
    case: Case,
    mean: np.ndarray,
    raw: dict[str, np.ndarray],
    centred: dict[str, np.ndarray],
    factors: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], bool]:
    """Which of the four sums (x, c2, dy, dot) drift beyond the probabilistic bound, per channel, before the
    finite-channel mask (the reference's drifting sums, from the passes' sums); and whether a test fell within
    CLOSE of its edge (then the reference decides)."""
    close = False
    finite_mean = np.isfinite(mean)
    streams = {
        "x": (raw["x_f32"], finite_sum(raw["x_hi"], raw["x_lo"]), raw["x_abs"], raw["x_finite"] > 0),
        "c2": (centred["c2_f32"], finite_sum(centred["c2_hi"], centred["c2_lo"]), centred["c2_abs"], finite_mean),
        "dy": (raw["dy_f32"], finite_sum(raw["dy_hi"], raw["dy_lo"]), raw["dy_abs_finite"], raw["dy_finite"] > 0),
        "dot": (
            centred["dot_f32"],
            finite_sum(centred["dot_hi"], centred["dot_lo"]),
            centred["dot_abs"],
            finite_mean & (raw["dy_finite"] > 0),
        ),
    }
    found = {}
    with ignoring("over", "invalid"):
        for name, (sequential, total, magnitude, defined) in streams.items():
            drift = np.abs(sequential - total)
            allowed = factors[name] * magnitude
            found[name] = np.asarray(defined & (drift > allowed))
            # Where the test is within the two paths' rounding of its edge, the reference decides.
            # (allowed is 0 only where every term is, or there is one: the sums are exact on both paths.)
            edge = (np.abs(drift - allowed) <= CLOSE * allowed + 2.0**-40 * magnitude) & (allowed > 0)
            close = close or bool((defined & (raw["x_finite"] > 0) & edge).any())
    return found, close


def xhat_sums(case: Case, stats: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """The third pass: sum dy xhat (the oracle's, with invstd) and the bounds' (with 0 where var + eps <= 0), sum
    |dy xhat|, from the statistics ``stats``."""
    k = kernels()
    mean, var = stats
    with ignoring("divide", "invalid", "over"):
        s2 = var + eps_as_applied(case)
        invstd = 1.0 / np.sqrt(s2)
        inv = np.where(s2 > 0, 1 / np.sqrt(s2), 0.0)
    x3, dy3 = as_three(case, case.x), as_three(case, case.dy)
    mean_c = np.ascontiguousarray(mean, dtype=np.float64)

    def run(scale: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        state = np.zeros((case.channels, 3))
        scale = np.ascontiguousarray(scale)
        sweep(case, k.xhat_sums, lambda b: (as_input(x3[b]), as_input(dy3[b]), mean_c, scale, wanted, state))
        return state

    bound_state = run(inv, np.ones(case.channels, dtype=np.bool_))
    bound_dot = finite_sum(bound_state[:, 0], bound_state[:, 1])
    differs = ~(invstd == inv)
    oracle_dot = bound_dot.copy()
    if differs.any():
        own = run(invstd, differs)
        oracle_dot[differs] = finite_sum(own[:, 0], own[:, 1])[differs]
    return {"oracle_dot": oracle_dot, "bound_dot": bound_dot, "abs_dot": bound_state[:, 2].copy()}

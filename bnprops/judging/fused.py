"""The fused judging path: a large float16/float32 case judged in a few passes over its data, with the numpy
modules (oracle, error_model, comparator) as the reference it is tested against (test_fused).

Its sums (model.fused_sums) and its oracle and bounds (model.fused_oracle) seed the
case's memo, so that every reader of the model shares them; the comparison of y and dx is one pass
(fused_kernels.compare) that marks each element beyond either bound, so that MXNet's results are judged, and
known deviations whose model is the oracle within its bound are too, without the oracle's arrays being written.
Only where a quantity's NaN/inf pattern differs, or a reproducer or another model reads them, are they
materialised, by the same formulas.  A decision within fused_sums.CLOSE of its threshold sends the case to the
reference path (judgement.judge): the fused path only ever decides what the reference would.  float64 data,
whose bounds are of the size of float64 rounding itself, always take the reference path.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from bnprops.judging.apparatus import Judging, overflow_threshold
from bnprops.model.case import Case, Outputs, memoized, seed
from bnprops.model.error_model import indeterminate_channels
from bnprops.model.fused_oracle import (
    arrays,
    bounds,
    check_indeterminate,
    coefficients,
    fresh_reference,
    prior_rows,
    reference,
)
from bnprops.model.fused_sums import (
    CLOSE,
    ENV,
    MIN_ELEMENTS,
    MODES,
    THREADS_ENV,
    as_input,
    as_three,
    available,
    close_call,
    drifts,
    forced,
    kernels,
    mean_abs,
    mode,
    partial_sum_factors,
    set_threads,
    share_cores,
    statistics,
    sweep,
    threads,
)
from bnprops.model.oracle import output_dtypes

# (what the rest of bnprops uses of the fused path, in one place)
__all__ = [
    "CLOSE",
    "ENV",
    "MIN_ELEMENTS",
    "MODES",
    "THREADS_ENV",
    "Compared",
    "active",
    "arrays",
    "available",
    "close_call",
    "coefficients",
    "compare",
    "drifts",
    "element",
    "forced",
    "judging",
    "kernels",
    "mode",
    "mode_note",
    "note_close",
    "note_near",
    "prepare",
    "reference_twin",
    "set_threads",
    "share_cores",
    "threads",
    "watched",
    "watching",
]


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


def judging(case: Case) -> Judging:
    """comparator.judging's apparatus on the fused path (y and dx, and their bounds, computed on demand)."""

    check_indeterminate(case)
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
    k = kernels()
    coeffs, batch = coefficients(case)
    with_dx = "dx" in wanted
    add, prior3 = prior_rows(case)
    dtypes = output_dtypes(case)
    thresholds = np.array([overflow_threshold(dtypes["y"]), overflow_threshold(dtypes["dx"])])
    x3, dy3 = as_three(case, case.x), as_three(case, case.dy)
    ay3 = as_three(case, arrays["y"])
    adx3 = as_three(case, arrays["dx"]) if with_dx else x3
    result = np.zeros((case.channels, 2, len(k.VERDICT)))
    bits = np.zeros(x3.shape, dtype=np.uint8)  # (an indeterminate channel's are never written)

    def arguments(b: slice) -> tuple[Any, ...]:
        blocks = (as_input(a[b]) for a in (x3, dy3, prior3, ay3, adx3))
        return (*blocks, coeffs, batch, add, with_dx, thresholds, b.start, result, bits[b])

    sweep(case, k.compare, arguments)
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
    k = kernels()
    coeffs, batch = coefficients(case)
    add, prior3 = prior_rows(case)
    flat = int(np.ravel_multi_index(index, case.shape))
    x3, dy3 = as_three(case, case.x), as_three(case, case.dy)
    _, channels, inner = x3.shape
    p, c, q = flat // (channels * inner), (flat // inner) % channels, flat % inner
    rows = (slice(p, p + 1), slice(c, c + 1))
    which = 0 if quantity == "y" else 1
    out = np.empty((3 if which == 0 else 4, 1, 1, inner))
    blocks = (as_input(x3[rows]), as_input(dy3[rows]), as_input(prior3[rows]))
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


def note_close() -> None:
    """Note a decision within CLOSE of its threshold, made while a fused case is watched."""
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
        note_close()


def mode_note() -> str:
    """A line on what the fused path is here (for reports)."""
    if not available():
        return "numba missing, reference path only"
    import numba

    return f"numba {numba.__version__}, auto from {MIN_ELEMENTS:,} elements, {threads()} threads"

"""The fused engine's comparison: y and dx judged in one pass over the data, each element beyond a bound marked.

The pass (fused_kernels.compare) marks every element beyond either bound, so that MXNet's results, and known
deviations whose model is the oracle within its bound, are judged without the oracle's arrays being written.
The engine's values come from model.evaluation.FusedEvaluation; the numpy reference is what both are tested
against.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from bnprops.model.evaluation import FusedEvaluation
from bnprops.model.fused_oracle import prior_rows
from bnprops.model.fused_sums import (
    CLOSE,
    ENV,
    MIN_ELEMENTS,
    MODES,
    THREADS_ENV,
    as_input,
    as_three,
    available,
    forced,
    kernels,
    mode,
    set_threads,
    share_cores,
    sweep,
    threads,
    wait_for,
)
from bnprops.model.oracle import overflow_threshold

# (what the rest of bnprops uses of the fused path, in one place)
__all__ = [
    "CLOSE",
    "ENV",
    "MIN_ELEMENTS",
    "MODES",
    "THREADS_ENV",
    "Compared",
    "available",
    "compare",
    "element",
    "forced",
    "is_near",
    "kernels",
    "mode",
    "mode_note",
    "set_threads",
    "share_cores",
    "threads",
    "wait_for",
]


# --- the comparison --------------------------------------------------------------------------------------------------


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


def compare(ev: FusedEvaluation, actual: dict[str, Any]) -> dict[str, Compared]:
    """y and dx judged in one pass over the data (none where y is missing or misshapen): quantity -> Compared."""
    case, expected = ev.case, ev.expected
    wanted = [q for q in ("y", "dx") if q in expected and q in actual and _judgeable(actual[q], case.shape)]
    if "y" not in wanted:
        return {}
    arrays = {q: np.asarray(actual[q]) for q in wanted}
    k = kernels()
    coeffs, batch = ev.coefficients, case.uses_batch_stats
    with_dx = "dx" in wanted
    add, prior3 = prior_rows(case)
    dtypes = ev.dtypes
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
    return found


def _judgeable(values: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Can the kernels read these values as they are (float16 or float32, widened exactly), in x's shape?"""
    return np.shape(values) == shape and np.asarray(values).dtype in (np.float16, np.float32)


def _first_largest(values: np.ndarray, at: np.ndarray) -> tuple[float, int]:
    """The largest of the channels' worst ratios, and the smallest flat index among channels that reach it
    (numpy's argmax over the whole array)."""
    worst = float(values.max())
    return worst, int(at[values == worst].min())


def element(ev: FusedEvaluation, quantity: str, index: tuple[int, ...]) -> tuple[float, float, float]:
    """The oracle's value of y or dx (as requested) at ``index``, and its deterministic and sharp bounds, by the
    formulas the materialised arrays use (one row of Q elements computed)."""
    case = ev.case
    k = kernels()
    coeffs, batch = ev.coefficients, case.uses_batch_stats
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


def is_near(worst: float, sharp: float = 0.0) -> bool:
    """Is a quantity's finding decided by a ratio within CLOSE of 1: its worst error/bound, or, where that is
    within the bound, its worst error/sharp bound (on the fused engine's values the reference must decide it)?"""
    return abs(worst - 1) <= CLOSE or (worst <= 1 and abs(sharp - 1) <= CLOSE)


def mode_note() -> str:
    """A line on what the fused path is here (for reports)."""
    if not available():
        return "numba missing, reference path only"
    import numba

    return f"numba {numba.__version__}, auto from {MIN_ELEMENTS:,} elements, {threads()} threads"

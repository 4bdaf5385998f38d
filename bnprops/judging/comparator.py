"""Compare a runner's Outputs with the oracle's under the error model, and say what differs.

A ``Comparison`` compares MXNet's outputs with one evaluation of the case once; the verdict, where each
quantity lies beyond its bound, and the worst disagreement within any set of elements are all read from it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging import fused
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.error_model import PROBABILISTIC_FAILURE, indeterminate_quantities, sharpest
from bnprops.model.evaluation import Evaluation, FusedEvaluation, evaluate
from bnprops.model.oracle import overflow_threshold, per_channel
from bnprops.mx.snippets import snippet


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """The worst disagreement in one quantity."""

    quantity: str
    #: "value", "accuracy", "nonfinite", "invariant" (judging.invariants), "unrecorded" (in a known
    #: deviation's region, neither the oracle's value nor its model's), "shape" or "missing".
    kind: str
    count: int  # elements that disagree
    size: int
    index: tuple[int, ...]
    expected: float
    actual: float
    error: float
    bound: float
    detail: str = ""
    #: The probabilistic bound at the same element ("accuracy": the error lies between the two).
    sharp_bound: float = float("nan")
    #: Every element that disagrees (the quantity's shape; None for "shape" and "missing").
    where: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    #: "unrecorded": the known deviation whose region it is in, and what its model gives at ``index``.
    deviation: str = ""
    model: float = float("nan")

    @property
    def ratio(self) -> float:
        if self.bound > 0:
            return self.error / self.bound
        return 0.0 if self.error == 0 else float("inf")

    def describe(self) -> str:
        where = f"at index {self.index}" if self.index else ""
        if self.kind == "missing":
            return f"{self.quantity}: the runner did not return it"
        if self.kind == "shape":
            return f"{self.quantity}: {self.detail}"
        head = {
            "value": f"{self.count} of {self.size} elements outside the error bound; worst {where}",
            "accuracy": f"accuracy finding: {self.count} of {self.size} elements beyond the probabilistic "
            f"bound (within the deterministic one); worst {where}",
            "nonfinite": f"{self.count} of {self.size} elements differ in their NaN/inf pattern; first {where}",
            "invariant": f"{self.count} of {self.size} elements break an invariant: {self.detail}; first {where}",
            "unrecorded": f"deviates, but not as recorded by known deviation {self.deviation}: {self.count} of "
            f"{self.size} elements in its region match neither the oracle nor its model; worst {where}",
        }[self.kind]
        if self.kind == "invariant":
            bound = "at least" if self.expected == 0 and self.quantity == "moving_var" else "exactly"
            if "non-finite" in self.detail:
                bound = "finite (exactly, near)"
            return (
                f"{self.quantity}: {head}\n    must be {bound}: {self.expected!r}\n    actual:{' ' * 12}{self.actual!r}"
            )
        text = f"{self.quantity}: {head}\n    expected (oracle): {self.expected!r}\n"
        if self.kind == "unrecorded":
            text += f"    model:             {self.model!r}\n"
        text += f"    actual:            {self.actual!r}\n"
        if self.kind == "accuracy":
            digits = math.log10(self.error / self.sharp_bound) if self.sharp_bound > 0 else math.inf
            return text + (
                f"    |error| = {self.error:.3g}, probabilistic bound = {self.sharp_bound:.3g}, deterministic bound = "
                f"{self.bound:.3g}\n    loses {digits:.2g} digits more than a float sum with random rounding would "
                f"(probability < {PROBABILISTIC_FAILURE:g} for a correct kernel under that model)"
            )
        return text + f"    |error| = {self.error:.3g}, bound = {self.bound:.3g} (ratio {self.ratio:.3g})"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What one comparison found: mismatches, and the largest error/bound ratio per quantity."""

    case: Case
    mismatches: tuple[Mismatch, ...]
    ratios: dict[str, float]
    #: The largest error / probabilistic bound per quantity (above 1: an accuracy finding, or worse).
    sharp_ratios: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def failed_quantities(self) -> frozenset[str]:
        return frozenset(m.quantity for m in self.mismatches)

    def message(self, *, label: str = "MXNet", entry: str = "sym", backend: str = "onednn") -> str:
        lines = [f"{label} disagrees with the oracle for {self.case.describe()}"]
        lines += ["  " + m.describe() for m in self.mismatches]
        lines += ["Reproduce with:", *("    " + line for line in reproducer(self.case, entry, backend).splitlines())]
        return "\n".join(lines)


def reproducer(case: Case, entry: str, backend: str) -> str:
    """The case's snippet through its entry point; the symbolic one for subjects that are not MXNet's."""
    try:
        return snippet(case, entry=entry, backend=backend)
    except ValueError:
        return snippet(case)


def _ratio(err: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """err / bound; where the bound is not positive (0, or NaN), inf for an error and 0 for none."""
    with ignoring("divide", "invalid", "over"):
        ratio = np.asarray(err / bound, dtype=np.float64)
        unbounded = np.logical_not(np.asarray(bound) > 0)
        if unbounded.any():  # (seldom: one pass where the division needs no mending)
            ratio = np.where(unbounded, np.where(err > 0, np.inf, 0.0), ratio)
        return ratio


def _overflow_adjusted(expected: np.ndarray, actual: np.ndarray, out_dtype: str) -> np.ndarray:
    """``actual`` in float64, each inf that stands for an exact value past the dtype's overflow threshold mapped.

    A correct kernel returns +-inf where the exact value rounds beyond the dtype's largest number, and
    may return that number where the exact value is just past the overflow threshold (max + half an
    ulp): an inf stands for the threshold, judged by the bound like any other value.
    """
    return _adjusted(expected, actual.astype(np.float64), overflow_threshold(out_dtype))


def _adjusted(expected: np.ndarray, a: np.ndarray, threshold: np.ndarray | float) -> np.ndarray:
    """_overflow_adjusted on float64 values, with the threshold of each element's dtype (``a`` itself where no
    value is infinite)."""
    infinite = np.isinf(a)
    if not infinite.any():
        return a
    with ignoring("invalid"):
        overflowed = infinite & np.isfinite(expected)
        beyond = overflowed & (np.sign(a) * expected >= threshold)  # the exact value rounds to that inf: no error
        return np.where(beyond, expected, np.where(overflowed, np.sign(a) * threshold, a))


def _nonfinite_differs(expected: np.ndarray, a: np.ndarray, finite: np.ndarray | None = None) -> np.ndarray:
    """Where exactly one of the two is non-finite, or both are but differently (NaN, +inf, -inf). ``finite``:
    where both are finite, if known."""
    finite = np.isfinite(expected) & np.isfinite(a) if finite is None else finite
    if finite.all():
        return np.zeros(finite.shape, dtype=bool)
    same_nonfinite = (np.isnan(expected) & np.isnan(a)) | (expected == a)
    return np.asarray(~finite & ~same_nonfinite)


def disagreeing(
    expected: np.ndarray, actual: np.ndarray, bound: np.ndarray, out_dtype: str, *, watch: Evaluation | None = None
) -> np.ndarray:
    """Element by element: is ``actual`` outside ``bound`` of ``expected``, or in another NaN/inf pattern?
    ``watch``: the evaluation whose values decide it (on the fused engine, an element within rounding of its
    bound marks it close: the reference decides)."""
    a = _overflow_adjusted(expected, np.asarray(actual), out_dtype)
    with ignoring("invalid", "over"):
        err = np.where(np.isfinite(expected) & np.isfinite(a), np.abs(a - expected), 0.0)
    if _watched(watch) and (np.abs(_ratio(err, np.broadcast_to(bound, err.shape)) - 1) <= fused.CLOSE).any():
        _mark_close(watch)
    return np.asarray(_nonfinite_differs(expected, a) | (err > bound))


def _watched(ev: Evaluation | None) -> bool:
    return ev is not None and ev.engine == "fused"


def _mark_close(ev: Evaluation | None) -> None:
    if ev is not None:
        ev.close = True


def element_ratios(
    expected: np.ndarray,
    actual: np.ndarray,
    bound: np.ndarray,
    out_dtype: str,
    judged: np.ndarray,
    sharp: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Element by element, among the ``judged`` elements: ``actual`` as compared (overflow adjusted), where the
    NaN/inf patterns differ, the error (0 where either is not finite), its ratio to ``bound`` and to ``sharp``
    (the probabilistic bound; None: ``bound``)."""
    threshold = overflow_threshold(out_dtype)
    return _element_ratios(expected, actual.astype(np.float64), bound, threshold, judged, sharp)


def _element_ratios(
    expected: np.ndarray,
    actual: np.ndarray,
    bound: np.ndarray,
    threshold: np.ndarray | float,
    judged: np.ndarray,
    sharp: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """element_ratios on float64 ``actual``, with the overflow threshold of each element's dtype."""
    a = _adjusted(expected, actual, threshold)
    finite = np.isfinite(expected) & np.isfinite(a)
    pattern_differs = judged & _nonfinite_differs(expected, a, finite)
    with ignoring("invalid", "over"):
        err = np.where(judged & finite, np.abs(a - expected), 0.0)
    ratio = _ratio(err, bound)
    sharp_ratio = ratio if sharp is None else _ratio(err, sharp)
    return a, pattern_differs, err, ratio, sharp_ratio


def _compare_one(
    quantity: str,
    expected: np.ndarray,
    actual: np.ndarray,
    bound: np.ndarray,
    out_dtype: str,
    judged: np.ndarray,
    sharp: np.ndarray | None = None,
    *,
    watch: Evaluation | None = None,
) -> tuple[Mismatch | None, float, float]:
    """The worst disagreement in one quantity (or None), its largest error/bound and error/sharp-bound ratios.

    ``sharp`` is the probabilistic bound (None: judge against ``bound`` alone): an error beyond it
    but within ``bound`` is an accuracy finding.  ``watch``: as for disagreeing.
    """
    nan = float("nan")
    if actual.shape != expected.shape:
        detail = f"shape {actual.shape}, expected {expected.shape}"
        mismatch = Mismatch(quantity, "shape", expected.size, expected.size, (), nan, nan, nan, 0.0, detail)
        return mismatch, float("inf"), float("inf")
    a, pattern_differs, err, ratio, sharp_ratio = element_ratios(expected, actual, bound, out_dtype, judged, sharp)
    if pattern_differs.any():
        idx = tuple(int(i) for i in np.argwhere(pattern_differs)[0])
        count = int(pattern_differs.sum())
        mismatch = Mismatch(
            quantity,
            "nonfinite",
            count,
            expected.size,
            idx,
            float(expected[idx]),
            float(a[idx]),
            nan,
            float(bound[idx]),
            where=pattern_differs,
        )
        return mismatch, float("inf"), float("inf")
    if err.size == 0:
        return None, 0.0, 0.0
    worst, worst_sharp = float(ratio.max()), float(sharp_ratio.max())
    if _watched(watch) and fused.is_near(worst, worst_sharp):
        _mark_close(watch)
    bad = ratio > 1
    kind = "value"
    if not bad.any():
        bad = sharp_ratio > 1
        kind = "accuracy"
        if not bad.any():
            return None, worst, worst_sharp
    flat = int(np.argmax(ratio if kind == "value" else sharp_ratio))
    idx = tuple(int(i) for i in np.unravel_index(flat, ratio.shape))
    mismatch = Mismatch(
        quantity,
        kind,
        int(bad.sum()),
        expected.size,
        idx,
        float(expected[idx]),
        float(a[idx]),
        float(err[idx]),
        float(bound[idx]),
        sharp_bound=float(bound[idx]) if sharp is None else float(sharp[idx]),
        where=bad,
    )
    return mismatch, worst, worst_sharp


def _compare_fused(
    ev: FusedEvaluation, quantity: str, found: fused.Compared, out_dtype: str
) -> tuple[Mismatch | None, float, float]:
    """_compare_one's result from the fused path's judgement of y or dx (NaN/inf patterns alike): the oracle's
    value and bounds computed at the worst element alone."""
    case = ev.case
    if fused.is_near(found.worst, found.worst_sharp):
        _mark_close(ev)
    if found.bad:
        kind, flat, where, count = "value", found.worst_at, found.over, found.bad
    elif found.bad_sharp:
        kind, flat, where, count = "accuracy", found.worst_sharp_at, found.over_sharp, found.bad_sharp
    else:
        return None, found.worst, found.worst_sharp
    idx = tuple(int(i) for i in np.unravel_index(flat, case.shape))
    expected, bound, sharp = fused.element(ev, quantity, idx)
    a = float(_overflow_adjusted(np.asarray([expected]), np.asarray([found.actual[idx]]), out_dtype)[0])
    mismatch = Mismatch(
        quantity, kind, count, case.x.size, idx, expected, a, abs(a - expected), bound, sharp_bound=sharp, where=where
    )
    return mismatch, found.worst, found.worst_sharp


def _partly_judged(case: Case, quantity: str, undetermined: np.ndarray) -> bool:
    return quantity in indeterminate_quantities(case) and bool(undetermined.any())


def judged_elements(case: Case, quantity: str, shape: tuple[int, ...], undetermined: np.ndarray) -> np.ndarray:
    """Where the quantity is judged: everywhere but the indeterminate channels of the quantities they spoil."""
    if _partly_judged(case, quantity, undetermined):
        per_element = shape == case.shape
        defined = ~per_channel(case, undetermined).astype(bool) if per_element else ~undetermined
        return np.broadcast_to(defined, shape)
    return np.ones(shape, dtype=bool)


def judged_only(case: Case, quantity: str, mask: np.ndarray, undetermined: np.ndarray) -> np.ndarray:
    """``mask`` within the elements judged_elements judges (``mask`` itself where that is everywhere)."""
    if _partly_judged(case, quantity, undetermined):
        return np.asarray(mask & judged_elements(case, quantity, mask.shape, undetermined))
    return mask


def compare_pair(
    case: Case,
    first: Outputs,
    second: Outputs,
    *,
    exact: bool = False,
    quantities: Iterable[str] = QUANTITIES,
    excluded: Mapping[str, np.ndarray] | None = None,
    evaluation: Evaluation | None = None,
) -> Verdict:
    """Do two implementations agree? Each may be off the oracle by its bound, so they may differ by twice it.

    Judged where the oracle comparison judges, over the quantities both produce; the NaN/inf
    patterns must match. ``exact``: the two ran the same computation, so every element must be
    the same, indeterminate channels included. Otherwise ``excluded`` (quantity -> elements) are
    not compared: where a known deviation covers one of the two, the other need not follow it.
    A mismatch's "expected" is ``second``'s value, "actual" ``first``'s.  ``evaluation``: the case's, if made.
    """
    ev = evaluation or evaluate(case)
    tol, dtypes, undetermined = ev.bound, ev.dtypes, ev.undetermined
    mismatches: list[Mismatch] = []
    ratios: dict[str, float] = {}
    for q in quantities:
        if q not in first or q not in second or q not in tol:
            continue
        a, b = np.asarray(first[q]), np.asarray(second[q])
        if a.shape != b.shape or b.shape != tol[q].shape:
            detail = f"shapes {a.shape} and {b.shape}"
            mismatches.append(Mismatch(q, "shape", b.size, b.size, (), np.nan, np.nan, np.nan, 0.0, detail))
            continue
        judged: np.ndarray = np.ones(b.shape, dtype=bool) if exact else judged_elements(case, q, b.shape, undetermined)
        if not exact and excluded is not None and q in excluded:
            judged = judged & ~excluded[q]
        bound: np.ndarray = np.zeros(b.shape) if exact else 2 * tol[q]
        mismatch, ratios[q], _ = _compare_one(q, b.astype(np.float64), a, bound, dtypes[q], judged)
        if mismatch is not None:
            mismatches.append(mismatch)
    return Verdict(case, tuple(mismatches), ratios)


def compare(
    case: Case,
    actual: Outputs,
    *,
    expected: Outputs | None = None,
    quantities: Iterable[str] = QUANTITIES,
    evaluation: Evaluation | None = None,
) -> Verdict:
    """Check ``actual`` against the oracle (or ``expected``) for the chosen quantities (those it produces).
    ``evaluation``: the case's, if made."""
    ev = evaluation or evaluate(case)
    if expected is None:
        return Comparison(ev, actual, quantities).verdict
    tol = ev.bounds_of(expected)
    sharp = sharpest(ev.bounds_of(expected, model="probabilistic"), tol)
    return _verdict(ev, actual, expected, tol, sharp, quantities, {})


def _verdict(
    ev: Evaluation,
    actual: Outputs,
    expected: Outputs,
    tol: Outputs,
    sharp: Outputs,
    quantities: Iterable[str],
    fast: dict[str, fused.Compared],
) -> Verdict:
    case = ev.case
    found: dict[str, tuple[Mismatch | None, float | None, float | None]] = {}
    plain: dict[str, _Plain] = {}
    for q in quantities:
        if q not in expected:
            continue
        if q in fast and fast[q].pattern == 0 and isinstance(ev, FusedEvaluation):
            found[q] = _compare_fused(ev, q, fast[q], ev.dtypes[q])
        elif q not in actual:
            found[q] = (Mismatch(q, "missing", 0, 0, (), float("nan"), float("nan"), float("inf"), 0.0), None, None)
        else:
            judged = judged_elements(case, q, expected[q].shape, ev.undetermined)
            plain[q] = _Plain(expected[q], np.asarray(actual[q]), tol[q], ev.dtypes[q], judged, sharp[q])
            found[q] = (None, None, None)  # (in order; filled below)
    found.update(_compare_plain(plain, watch=ev))
    mismatches = tuple(m for m, _, _ in found.values() if m is not None)
    ratios = {q: r for q, (_, r, _) in found.items() if r is not None}
    sharp_ratios = {q: r for q, (_, _, r) in found.items() if r is not None}
    return Verdict(case, mismatches, ratios, sharp_ratios)


class _Plain(NamedTuple):
    """One quantity judged element by element: _compare_one's arguments."""

    expected: np.ndarray
    actual: np.ndarray
    bound: np.ndarray
    dtype: str
    judged: np.ndarray
    sharp: np.ndarray | None


def _compare_plain(plain: dict[str, _Plain], *, watch: Evaluation) -> dict[str, tuple[Mismatch | None, float, float]]:
    """_compare_one for each quantity, the quantities' elements judged in one pass (a case's ten small arrays cost
    ten times one): where a quantity shows anything (NaN/inf pattern, an error beyond a bound), _compare_one
    describes it; elsewhere the pass's largest ratios are its own, maxima being exact whatever the grouping."""
    found: dict[str, tuple[Mismatch | None, float, float]] = {}
    flat = {q: p for q, p in plain.items() if p.actual.shape == p.expected.shape and p.expected.size}
    for q, p in plain.items():
        if q not in flat:
            found[q] = _compare_one(q, *p, watch=watch)
    if not flat:
        return found
    items = list(flat.values())
    sizes = [p.expected.size for p in items]
    expected = np.concatenate([np.ravel(p.expected) for p in items]).astype(np.float64, copy=False)
    actual = np.concatenate([np.ravel(p.actual.astype(np.float64)) for p in items])
    bound = np.concatenate([_flat(p.bound, p.expected.shape) for p in items])
    sharp = np.concatenate([_flat(p.bound if p.sharp is None else p.sharp, p.expected.shape) for p in items])
    judged = np.concatenate([_flat(p.judged, p.expected.shape) for p in items])
    threshold = np.repeat([overflow_threshold(p.dtype) for p in items], sizes)
    _, pattern, _, ratio, sharp_ratio = _element_ratios(expected, actual, bound, threshold, judged, sharp)
    starts = np.cumsum([0, *sizes[:-1]])
    patterns = np.logical_or.reduceat(pattern, starts)
    worst, worst_sharp = np.maximum.reduceat(ratio, starts), np.maximum.reduceat(sharp_ratio, starts)
    for i, (q, p) in enumerate(flat.items()):
        if patterns[i] or worst[i] > 1 or worst_sharp[i] > 1:
            found[q] = _compare_one(q, *p, watch=watch)
            continue
        if _watched(watch) and fused.is_near(float(worst[i]), float(worst_sharp[i])):
            _mark_close(watch)
        found[q] = (None, float(worst[i]), float(worst_sharp[i]))
    return found


def _flat(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` broadcast to ``shape``, flattened (broadcast only where needed: it costs more than the rest)."""
    return np.ravel(values if np.shape(values) == shape else np.broadcast_to(values, shape))


class Comparison:
    """MXNet's outputs against one evaluation of the case, compared once (y and dx in one pass on the fused
    engine): the verdict, and for the judgement and the known deviations' models, where a quantity lies beyond
    its bound and the worst disagreement among any elements."""

    def __init__(self, ev: Evaluation, actual: Outputs, quantities: Iterable[str] = QUANTITIES) -> None:
        self.evaluation, self.actual = ev, actual
        self._fast = fused.compare(ev, actual) if isinstance(ev, FusedEvaluation) else {}
        self.verdict = _verdict(ev, actual, ev.expected, ev.bound, ev.sharp, quantities, self._fast)

    def _fused(self, quantity: str) -> fused.Compared | None:
        """The fused pass's judgement of y or dx, where it judged it (NaN/inf patterns alike); else None."""
        found = self._fast.get(quantity)
        return found if found is not None and found.pattern == 0 else None

    def beyond(self, quantity: str) -> np.ndarray | None:
        """Where ``quantity`` lies beyond the oracle's deterministic bound or in another NaN/inf pattern, within
        the elements judged (from the fused pass's marks where it judged the quantity); None: nowhere."""
        found = self._fused(quantity)
        if found is not None:
            return found.over if found.bad else None
        ev = self.evaluation
        expected = ev.expected[quantity]
        judged = judged_elements(ev.case, quantity, expected.shape, ev.undetermined)
        actual = np.asarray(self.actual[quantity])
        return np.asarray(disagreeing(expected, actual, ev.bound[quantity], ev.dtypes[quantity], watch=ev) & judged)

    def worst_within(self, quantity: str, within: np.ndarray) -> Mismatch | None:
        """The worst disagreement of ``quantity`` among the elements ``within`` (and judged), or None."""
        found = self._fused(quantity)
        if found is not None and (found.off is None or not (found.off & within).any()):
            return None  # (the fused pass's marks say so without the oracle's arrays)
        ev = self.evaluation
        expected = ev.expected[quantity]
        judged = judged_elements(ev.case, quantity, expected.shape, ev.undetermined) & within
        tol, sharp, dtype = ev.bound[quantity], ev.sharp[quantity], ev.dtypes[quantity]
        actual = np.asarray(self.actual[quantity])
        return _compare_one(quantity, expected, actual, tol, dtype, judged, sharp, watch=ev)[0]

    def disagreeing(self, quantity: str, values: np.ndarray, tolerance: np.ndarray) -> np.ndarray:
        """Where ``quantity`` lies beyond ``tolerance`` of a model's ``values`` (or in another NaN/inf pattern)."""
        ev = self.evaluation
        actual = np.asarray(self.actual[quantity])
        return disagreeing(values, actual, tolerance, ev.dtypes[quantity], watch=ev)

"""A stacked group of same-signature cases judged as one array computation, each case's verdict cut out of it.

The stacked call (bnprops.mx.batching) is judged as one case, each channel's bounds those of its own case. Where
that shows anything, one reference evaluation of the group (cut per case: evaluation.part) says per element what
the comparator, the invariants and the known deviations' regions see; a case with nothing there passes, as its own
judgement would say, and every other case is judged on its own slice from its part of that evaluation. The verdicts
are the ones ``judge`` gives each case alone (test_group_judgement).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bnprops.judging.comparator import Verdict, element_ratios, judged_elements
from bnprops.judging.deviation_models import Prediction
from bnprops.judging.invariants import violations
from bnprops.judging.judgement import Outcome, judge, predictions
from bnprops.judging.known_deviations import KnownDeviation
from bnprops.model import fused_sums
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.evaluation import Evaluation, cut, evaluate, part
from bnprops.mx.batching import split
from bnprops.mx.runners import IN_PROCESS_BACKEND, OPERATOR_OF_ENTRY, REDUCTION_OF_BACKEND

#: A known deviation's prediction for a case, as judgement.predictions lists them.
Found = tuple[KnownDeviation, Prediction]


def judge_group(
    group: Sequence[Case],
    stacked: Case,
    outputs: Outputs,
    *,
    entry: str,
    kernel: str,
    quantities: Iterable[str] = QUANTITIES,
    backend: str = IN_PROCESS_BACKEND,
) -> tuple[Outcome, list[Outcome]]:
    """The stacked call's outcome, and each case's: the outcome ``judge`` gives the case on its slice of
    ``outputs``. A case judged on the reference engine on its own takes its values from the group's one reference
    evaluation; one that takes the fused engine (never in a group the strategies draw) is evaluated on its own."""
    quantities = tuple(quantities)
    sizes = tuple(c.channels for c in group)
    operator = OPERATOR_OF_ENTRY.get(entry, "batchnorm")
    reduction = REDUCTION_OF_BACKEND.get(backend, "cpu")

    def judged(
        case: Case, outputs: Outputs, evaluation: Evaluation | None, found: list[Found] | None = None
    ) -> Outcome:
        mine: dict[str, Any] = {"entry": entry, "kernel": kernel, "checked": quantities, "backend": backend}
        return judge(case, outputs, evaluation=evaluation, found=found, **mine)

    ev = evaluate(stacked, operator=operator, reduction=reduction, sizes=sizes)
    # On the reference engine the stack's predictions serve its verdict and then its marks (_Seen): made once.
    shared = predictions(stacked, entry=entry, kernel=kernel, evaluation=ev) if type(ev) is Evaluation else None
    whole = judged(stacked, outputs, ev, shared)
    if len(group) == 1:  # the stacked case is the case, judged as judge would judge it alone
        return whole, [dataclasses.replace(whole, verdict=dataclasses.replace(whole.verdict, case=group[0]))]
    if not (whole.verdict.mismatches or whole.stale or whole.allowed):
        return whole, [_passed(case, entry, quantities, backend) for case in group]
    cases = split(stacked, outputs, sizes)
    if operator != "batchnorm" or any(fused_sums.eligible(case) for case in group):
        return whole, [judged(case, out, None) for case, out in zip(group, cases, strict=True)]
    reference = ev if type(ev) is Evaluation else evaluate(stacked, "reference", reduction=reduction, sizes=sizes)
    seen = _Seen(stacked, outputs, reference, entry=entry, kernel=kernel, found=shared if reference is ev else None)
    outcomes = []
    lo = 0
    for i, (case, out) in enumerate(zip(group, cases, strict=True)):
        hi = lo + case.channels
        if seen.anything is None or seen.anything[lo:hi].any():
            found = None if seen.found is None else seen.predictions(lo, hi)
            outcomes.append(judged(case, out, part(reference, group, i), found))
        else:
            ratios, sharp = seen.ratios(lo, hi)
            outcomes.append(_passed(case, entry, quantities, backend, ratios, sharp))
        lo = hi
    return whole, outcomes


def _passed(
    case: Case,
    entry: str,
    quantities: tuple[str, ...],
    backend: str,
    ratios: dict[str, float] | None = None,
    sharp: dict[str, float] | None = None,
) -> Outcome:
    """A case's outcome where nothing disagrees and no known deviation applies (with its largest ratios where
    known: a stacked verdict that agrees keeps none)."""
    verdict = Verdict(case, (), ratios or {}, sharp or {})
    return Outcome(verdict, entry, (), (), (), frozenset(quantities), backend)


class _Seen:
    """Per channel of the stacked case, from its reference evaluation: is anything there that a case's own
    judgement acts on (an element beyond the probabilistic bound or in another NaN/inf pattern, an invariant
    broken, a known deviation's region)? ``anything`` None: something about the call as a whole (a quantity
    missing or misshapen), so every case is judged. And per quantity and channel the largest error/bound ratios,
    each case's largest being what its comparison would report."""

    def __init__(
        self,
        stacked: Case,
        outputs: Outputs,
        ev: Evaluation,
        *,
        entry: str,
        kernel: str,
        found: list[Found] | None = None,
    ) -> None:
        """``found``: the known deviations' predictions for ``stacked`` and ``ev``, if made."""
        self.stacked = stacked
        self._ratios: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        #: The known deviations' predictions for the stacked case (None: not made).
        self.found: list[Found] | None = None
        self.anything: np.ndarray | None = np.zeros(stacked.channels, dtype=bool)
        for q in QUANTITIES:  # (in the comparator's order)
            expected, actual = ev.expected.get(q), outputs.get(q)
            if expected is None:
                continue
            if actual is None or np.shape(actual) != expected.shape:
                self.anything = None
                return
            judged = judged_elements(stacked, q, expected.shape, ev.undetermined)
            _, pattern, _, ratio, sharp = element_ratios(
                expected, np.asarray(actual), ev.bound[q], ev.dtypes[q], judged, ev.sharp[q]
            )
            self._mark(q, pattern | (sharp > 1))
            self._ratios[q] = (self._per_channel(ratio), self._per_channel(sharp))
        for m in violations(stacked, outputs, evaluation=ev):
            if m.where is None:
                self.anything = None
                return
            self._mark(m.quantity, m.where)
        self.found = predictions(stacked, entry=entry, kernel=kernel, evaluation=ev) if found is None else found
        for _, p in self.found:
            self._mark(p.quantity, p.where)

    def predictions(self, lo: int, hi: int) -> list[Found]:
        """The predictions for the case of channels ``lo:hi``, cut from the stacked case's: each model computes per
        channel or per element, so they are what ``predictions`` gives the case (where they cover any element)."""
        assert self.found is not None
        found = []
        for kd, p in self.found:
            own = cut(p, stacked=self.stacked, lo=lo, hi=hi)
            if own.where.any():
                found.append((kd, own))
        return found

    def _per_channel(self, values: np.ndarray) -> np.ndarray:
        """The largest of ``values`` (a quantity's, per element or per channel) in each channel."""
        stacked = self.stacked
        if values.shape == stacked.shape and values.ndim > 1:
            axes = tuple(i for i in range(values.ndim) if i != stacked.channel_axis)
            return np.asarray(np.max(values, axis=axes, initial=0.0))  # (ratios are never negative nor NaN)
        if values.shape == (stacked.channels,):
            return values
        raise ValueError(f"a mask or ratios of shape {values.shape} for a case of shape {stacked.shape}")

    def _mark(self, quantity: str, where: np.ndarray) -> None:
        assert self.anything is not None
        self.anything |= self._per_channel(where.astype(np.float64)) > 0

    def ratios(self, lo: int, hi: int) -> tuple[dict[str, float], dict[str, float]]:
        """The largest error/bound and error/probabilistic-bound ratio per quantity among channels ``lo:hi``."""
        return (
            {q: float(r[lo:hi].max()) for q, (r, _) in self._ratios.items()},
            {q: float(s[lo:hi].max()) for q, (_, s) in self._ratios.items()},
        )

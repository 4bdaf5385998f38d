"""A stacked group of same-signature cases judged as one array computation, each case's verdict cut out of it.

The stacked call (bnprops.mx.batching) is judged as one case, each channel's bounds those of its own case. Where
that shows anything, one reference evaluation of the group (cut per case: evaluation.part) says per element what
the comparator, the invariants and the known deviations' regions see; a case with nothing there passes, as its own
judgement would say, and every other case is judged on its own slice from its part of that evaluation. The verdicts
are the ones ``judge`` gives each case alone (test_group_judgement).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from bnprops.judging.comparator import Verdict, disagreeing, judged_elements
from bnprops.judging.invariants import violations
from bnprops.judging.judgement import Outcome, judge, predictions
from bnprops.model import fused_sums
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.evaluation import Evaluation, evaluate, part
from bnprops.mx.batching import split
from bnprops.mx.runners import IN_PROCESS_BACKEND, OPERATOR_OF_ENTRY


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

    def judged(case: Case, outputs: Outputs, evaluation: Evaluation | None) -> Outcome:
        return judge(
            case, outputs, entry=entry, kernel=kernel, checked=quantities, backend=backend, evaluation=evaluation
        )

    ev = evaluate(stacked, operator=operator, sizes=sizes)
    whole = judged(stacked, outputs, ev)
    if not (whole.verdict.mismatches or whole.stale or whole.allowed):
        return whole, [_passed(case, entry, quantities, backend) for case in group]
    cases = split(stacked, outputs, sizes)
    if operator != "batchnorm" or any(fused_sums.eligible(case) for case in group):
        return whole, [judged(case, out, None) for case, out in zip(group, cases, strict=True)]
    reference = ev if type(ev) is Evaluation else evaluate(stacked, "reference", sizes=sizes)
    seen = _seen(stacked, outputs, reference, entry=entry, kernel=kernel)
    outcomes = []
    lo = 0
    for i, (case, out) in enumerate(zip(group, cases, strict=True)):
        hi = lo + case.channels
        if seen is None or seen[lo:hi].any():
            outcomes.append(judged(case, out, part(reference, group, i)))
        else:
            outcomes.append(_passed(case, entry, quantities, backend))
        lo = hi
    return whole, outcomes


def _passed(case: Case, entry: str, quantities: tuple[str, ...], backend: str) -> Outcome:
    """A case's outcome where nothing disagrees and no known deviation applies (its ratios not kept)."""
    return Outcome(Verdict(case, (), {}), entry, (), (), (), frozenset(quantities), backend)


def _seen(stacked: Case, outputs: Outputs, ev: Evaluation, *, entry: str, kernel: str) -> np.ndarray | None:
    """Per channel of the stacked case: is anything there that a case's own judgement acts on (an element beyond
    the probabilistic bound or in another NaN/inf pattern, an invariant broken, a known deviation's region)?
    None: something about the call as a whole (a quantity missing or misshapen): every case is judged."""
    marks: list[tuple[str, np.ndarray]] = []
    for q, expected in ev.expected.items():
        actual = outputs.get(q)
        if actual is None or np.shape(actual) != expected.shape:
            return None
        judged = judged_elements(stacked, q, expected.shape, ev.undetermined)
        marks.append((q, judged & disagreeing(expected, np.asarray(actual), ev.sharp[q], ev.dtypes[q])))
    for m in violations(stacked, outputs, evaluation=ev):
        if m.where is None:
            return None
        marks.append((m.quantity, m.where))
    marks += [(p.quantity, p.where) for _, p in predictions(stacked, entry=entry, kernel=kernel, evaluation=ev)]
    seen = np.zeros(stacked.channels, dtype=bool)
    axes = tuple(i for i in range(stacked.x.ndim) if i != stacked.channel_axis)
    for q, where in marks:
        if where.shape == stacked.shape and where.ndim > 1:
            seen |= where.any(axis=axes)
        elif where.shape == (stacked.channels,):
            seen |= where
        else:
            raise ValueError(f"{q}: a mask of shape {where.shape} for a case of shape {stacked.shape}")
    return seen

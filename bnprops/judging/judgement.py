"""One case's outputs sorted against the oracle and the known deviations' models.

Element by element: outside every known deviation's region the oracle (and the invariants) judge
alone; inside one, an element passes if it matches the oracle or the deviation's model (and an
invariant may break only where a model that says so matches).  What fails the oracle but matches a
model is *explained* by that deviation ("matches the recorded deviation"); what matches neither is
a finding of kind "unrecorded" ("deviates, but not as recorded").  A certain deviation whose model
differs from the oracle, where MXNet returned the oracle's values instead, is *stale*.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from bnprops.judging.comparator import Comparison, Mismatch, Verdict, disagreeing, judged_only, reproducer
from bnprops.judging.deviation_models import Context, Prediction
from bnprops.judging.invariants import violations
from bnprops.judging.known_deviations import KNOWN_DEVIATIONS, KnownDeviation
from bnprops.model.case import Case, Outputs
from bnprops.model.evaluation import Evaluation, evaluate
from bnprops.mx import family, mxversion
from bnprops.mx.runners import IN_PROCESS_BACKEND, OPERATOR_OF_ENTRY, REDUCTION_OF_BACKEND


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A verdict sorted against the known deviations."""

    verdict: Verdict
    entry: str
    #: Known deviations whose model MXNet matched where it differs from the oracle, with those quantities.
    explained: tuple[tuple[KnownDeviation, frozenset[str]], ...]
    #: What no known deviation explains: these are findings ("unrecorded" ones inside a deviation's region).
    unexpected: tuple[Mismatch, ...]
    #: Known deviations that apply to the case but did not reproduce (MXNet may have been fixed).
    stale: tuple[KnownDeviation, ...]
    #: The quantities the caller asked about.
    checked: frozenset[str]
    backend: str = IN_PROCESS_BACKEND
    #: The elements some applicable known deviation covers, per quantity.
    covered: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.stale

    @property
    def case(self) -> Case:
        return self.verdict.case

    @property
    def allowed(self) -> frozenset[str]:
        """The quantities some applicable known deviation covers (in some elements)."""
        return frozenset(q for q, where in self.covered.items() if where.any())

    def message(self) -> str:
        lines: list[str] = []
        if self.unexpected:
            partial = dataclasses.replace(self.verdict, mismatches=self.unexpected)
            lines.append(
                partial.message(label=f"MXNet ({self.entry}, {self.backend})", entry=self.entry, backend=self.backend)
            )
        for kd in self.stale:
            lines.append(
                f"Known deviation {kd.id} applies to {self.case.describe()} but did not reproduce: where its model "
                f"({kd.model}) differs from the oracle, MXNet returned the oracle's values. If MXNet was fixed, "
                f"narrow or remove it in its module of bnprops/judging/deviations/.\nReproduce with:\n"
                + "\n".join("    " + line for line in reproducer(self.case, self.entry, self.backend).splitlines())
            )
        return "\n".join(lines)


def judged_outputs(comparison: Comparison) -> Verdict:
    """The comparison's verdict with the invariants (judging.invariants) that hold whatever the bounds say."""
    verdict = comparison.verdict
    broken = violations(verdict.case, comparison.actual, evaluation=comparison.evaluation)
    return dataclasses.replace(verdict, mismatches=verdict.mismatches + tuple(broken)) if broken else verdict


@dataclasses.dataclass
class _Tally:
    """Per quantity, the elements that matched a model, those under any region, and per deviation what it showed."""

    matched: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    excused: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # matched by an invariant breaker
    region: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    shown: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)  # kd.id -> q -> matched
    #: kd.id -> q -> where a certain model differs from the oracle, each made only if staleness asks (_Visible).
    visible: dict[str, dict[str, list[_Visible]]] = dataclasses.field(default_factory=dict)

    @staticmethod
    def _or(table: dict[str, np.ndarray], q: str, mask: np.ndarray) -> None:
        table[q] = table[q] | mask if q in table else mask  # (masks are never written in place)

    def add(self, kd: KnownDeviation, p: Prediction, ok: np.ndarray, visible: _Visible | None) -> None:
        q = p.quantity
        self._or(self.matched, q, ok)
        self._or(self.region, q, p.where)
        if p.breaks_invariants:
            self._or(self.excused, q, ok)
        self._or(self.shown.setdefault(kd.id, {}), q, ok)
        if visible is not None:
            self.visible.setdefault(kd.id, {}).setdefault(q, []).append(visible)

    def certain(self, kd: KnownDeviation) -> dict[str, np.ndarray]:
        """Per quantity, where the deviation's certain models differ from the oracle (made now)."""
        return {q: np.logical_or.reduce([v() for v in found]) for q, found in self.visible.get(kd.id, {}).items()}


@dataclasses.dataclass(frozen=True)
class _Visible:
    """Where a certain model's values differ from the oracle, within the prediction's elements: made only when a
    deviation's staleness is in question (it did not show), since on the fused engine an element within rounding of
    its bound sends the case to the reference engine, and among a million elements one nearly always is."""

    where: np.ndarray
    values: np.ndarray
    quantity: str
    ev: Evaluation

    def __call__(self) -> np.ndarray:
        q, ev = self.quantity, self.ev
        return np.asarray(self.where & disagreeing(ev.expected[q], self.values, ev.bound[q], ev.dtypes[q], watch=ev))


@dataclasses.dataclass(frozen=True)
class Judged:
    """A family member's call judged by the plain judgement: the contract's ``ok``, ``message`` and ``outcome``,
    with a headline saying what was judged and, on failure, the standalone script that makes the call."""

    outcome: Outcome
    head: str = ""
    #: Writes the script (only when a message needs it: most calls agree).
    script: Callable[[], str] | None = None

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    def message(self) -> str:
        if self.ok:
            return ""
        text = (f"{self.head}\n" if self.head else "") + self.outcome.message()
        if self.script is not None:
            text += "\nThe call:\n" + "\n".join("    " + line for line in self.script().splitlines() if line)
        return text


def predictions(
    case: Case,
    *,
    entry: str,
    kernel: str,
    scoped: bool = True,
    evaluation: Evaluation | None = None,
    like: str | None = None,
) -> list[tuple[KnownDeviation, Prediction]]:
    """Every known deviation's predictions for the case, within the elements the oracle judges.

    ``scoped``: only the deviations that hold in the running MXNet release (KnownDeviation.releases); one
    recorded for other releases is absent here, so it is neither applied nor reported stale.
    ``evaluation``: the case's, if made. ``like``: a plain entry point whose code the entry runs (a family
    member's backward that is BatchNorm's own): the deviations recorded there apply too; by default a member
    entry's own (its mx module's PLAIN).
    """
    ev = evaluation or evaluate(case, operator=OPERATOR_OF_ENTRY.get(entry, "batchnorm"))
    like = family.like(entry) if like is None and family.is_member(entry) else like
    rounding = mxversion.float16_conversion() if case.dtype == "float16" else "to nearest"
    ctx = Context(case, kernel, ev, float16_rounding=rounding)
    found = []
    for kd in KNOWN_DEVIATIONS:
        predicted = kd.predictions(ctx, entry=entry, scoped=scoped)
        if like is not None and like != entry:  # a declaration names one or the other, never both
            predicted = predicted + kd.predictions(ctx, entry=like, scoped=scoped)
        for p in predicted:
            where = judged_only(case, p.quantity, p.where, ev.undetermined)
            if where.any():
                found.append((kd, dataclasses.replace(p, where=where)))
    return found


def judge(
    case: Case,
    outputs: Outputs,
    *,
    entry: str,
    kernel: str,
    checked: Iterable[str],
    backend: str = IN_PROCESS_BACKEND,
    scoped: bool = True,
    evaluation: Evaluation | None = None,
    like: str | None = None,
    found: list[tuple[KnownDeviation, Prediction]] | None = None,
) -> Outcome:
    """Judge MXNet's outputs for ``case``: findings among ``checked``, staleness over every quantity.

    ``scoped=False`` applies every known deviation whatever release runs (to probe whether it is present).
    ``evaluation``: the case's, if made. ``like``: as for ``predictions``. ``found``: what ``predictions`` gives
    for the case and ``evaluation``, if made (a stacked group's, cut per case: judging.groups).

    A certain known deviation must show in some quantity it names, even one the calling property
    does not check (dgamma may agree by accident where y cannot).
    """
    operator = OPERATOR_OF_ENTRY.get(entry, "batchnorm")
    reduction = REDUCTION_OF_BACKEND.get(backend, "cpu")
    if evaluation is not None and evaluation.reduction != reduction:
        raise ValueError(f"backend {backend!r} needs bounds for {reduction!r} reductions, not {evaluation.reduction!r}")
    ev = evaluation or evaluate(case, operator=operator, reduction=reduction)
    how: dict[str, Any] = {
        "entry": entry,
        "kernel": kernel,
        "checked": checked,
        "backend": backend,
        "scoped": scoped,
        "like": like,
    }
    outcome = _judge(ev, outputs, found=found, **how)
    if ev.close:
        # A fused decision fell within its rounding of a threshold: the reference engine judges the case.
        outcome = _judge(
            evaluate(case, "reference", operator=operator, reduction=reduction, sizes=ev.sizes), outputs, **how
        )
    return outcome


def _judge(
    ev: Evaluation,
    outputs: Outputs,
    *,
    entry: str,
    kernel: str,
    checked: Iterable[str],
    backend: str,
    scoped: bool,
    like: str | None,
    found: list[tuple[KnownDeviation, Prediction]] | None = None,
) -> Outcome:
    case = ev.case
    checked = frozenset(checked)
    comparison = Comparison(ev, outputs)
    verdict = judged_outputs(comparison)
    if found is None:
        found = predictions(case, entry=entry, kernel=kernel, scoped=scoped, evaluation=ev, like=like)
    if not found:
        unexpected = tuple(m for m in verdict.mismatches if m.quantity in checked)
        return Outcome(verdict, entry, (), unexpected, (), checked, backend)
    tally = _Tally()
    for kd, p in found:
        actual = outputs.get(p.quantity)
        if actual is None or np.shape(actual) != p.where.shape:
            continue
        visible: _Visible | None = None
        if p.is_oracle:  # (the oracle's own comparison says where MXNet is beyond its bound)
            off = comparison.beyond(p.quantity)
            ok = p.where if off is None else p.where & ~off  # (never visible: its values are the oracle's)
        else:
            values, tolerance = p.model(ev)
            ok = p.where & ~comparison.disagreeing(p.quantity, values, tolerance)
            if p.certain:
                visible = _Visible(p.where, values, p.quantity, ev)
        tally.add(kd, p, ok, visible)

    failing: dict[str, np.ndarray] = {}
    for m in verdict.mismatches:
        if m.where is not None:
            _Tally._or(failing, m.quantity, m.where)
    findings = _findings(comparison, verdict, found, tally, checked)
    explained = []
    stale = []
    seen: set[str] = set()
    for kd, _ in found:
        if kd.id in seen:
            continue
        seen.add(kd.id)
        shown = tally.shown.get(kd.id, {})
        hit = frozenset(q for q, ok in shown.items() if q in failing and (ok & failing[q]).any())
        if hit & checked:
            explained.append((kd, hit & checked))
        certain = {} if hit else tally.certain(kd)
        if any(v.any() for v in certain.values()):
            showed = any((v & shown[q]).any() for q, v in certain.items() if q in shown)
            failed = any((v & failing[q]).any() for q, v in certain.items() if q in failing)
            if not showed and not failed:
                stale.append(kd)
    return Outcome(verdict, entry, tuple(explained), tuple(findings), tuple(stale), checked, backend, tally.region)


def _findings(
    comparison: Comparison,
    verdict: Verdict,
    found: list[tuple[KnownDeviation, Prediction]],
    tally: _Tally,
    checked: frozenset[str],
) -> list[Mismatch]:
    """The mismatches no model explains: outside the regions as the oracle saw them, inside as "unrecorded"."""
    outputs, ev = comparison.actual, comparison.evaluation
    result: list[Mismatch] = []
    judged_again: set[str] = set()
    for m in verdict.mismatches:
        q = m.quantity
        if q not in checked:
            continue
        if q not in tally.region or m.where is None:
            result.append(m)
        elif m.kind == "invariant":
            excused = tally.excused.get(q)
            left = m.where if excused is None else m.where & ~excused
            if left.any():
                idx = tuple(int(i) for i in np.argwhere(left)[0])
                actual = float(np.asarray(outputs[q], dtype=np.float64)[idx])
                result.append(dataclasses.replace(m, count=int(left.sum()), index=idx, actual=actual, where=left))
        elif q not in judged_again:
            judged_again.add(q)
            region, matched = tally.region[q], tally.matched[q]
            outside = comparison.worst_within(q, ~region)
            result += [] if outside is None else [outside]
            inside = comparison.worst_within(q, region & ~matched)
            result += [] if inside is None else [_unrecorded(ev, inside, found)]
    return result


def _unrecorded(ev: Evaluation, m: Mismatch, found: list[tuple[KnownDeviation, Prediction]]) -> Mismatch:
    """A mismatch inside a deviation's region that matched no model: "deviates, but not as recorded"."""
    if m.kind not in ("value", "nonfinite"):
        return m  # an accuracy finding inside a region whose model it missed is an accuracy finding
    for kd, p in found:
        if p.quantity == m.quantity and p.where[m.index]:
            model = float(p.model(ev)[0][m.index])
            return dataclasses.replace(m, kind="unrecorded", deviation=kd.id, model=model)
    return m

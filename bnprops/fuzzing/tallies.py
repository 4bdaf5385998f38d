"""What one worker ran and found: counts per target, the worst error per quantity, and the error plot's sample."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable
from typing import Any

import numpy as np

from bnprops.fuzzing.catalogue import Entry, conditioning
from bnprops.judging.checks import Outcome
from bnprops.model.case import DTYPES, QUANTITIES, Case

#: What a sampled point is, per quantity, so the plot can draw a new finding apart from what is already known.
PASSED, KNOWN, NEW = 0, 1, 2


@dataclasses.dataclass
class Points:
    """A uniform sample of judged cases for the error plot: dtype, conditioning, error/bound and class per quantity."""

    dtype: np.ndarray  # int8 index into DTYPES
    cond: np.ndarray  # float64, catalogue.conditioning
    ratio: np.ndarray  # float64 (n, len(QUANTITIES)), NaN where the quantity was not produced
    kind: np.ndarray  # int8 (n, len(QUANTITIES)): PASSED, KNOWN or NEW
    seen: int  # cases the sample was drawn from

    @classmethod
    def empty(cls) -> Points:
        return cls(
            np.zeros(0, np.int8),
            np.zeros(0),
            np.zeros((0, len(QUANTITIES))),
            np.zeros((0, len(QUANTITIES)), np.int8),
            0,
        )

    def concat(self, other: Points) -> Points:
        return Points(
            np.concatenate([self.dtype, other.dtype]),
            np.concatenate([self.cond, other.cond]),
            np.concatenate([self.ratio, other.ratio]),
            np.concatenate([self.kind, other.kind]),
            self.seen + other.seen,
        )


def point_kinds(outcome: Outcome) -> list[int]:
    """Per quantity, what the plot shows it as: NEW where the outcome has a finding (a departure no recorded
    deviation explains, or one that should have shown and did not), KNOWN where a recorded deviation explains
    the departure, else PASSED. A known deviation's departure exceeds the bound just as a new one does: only
    the outcome tells them apart."""
    new = {m.quantity for m in outcome.unexpected}
    for kd in outcome.stale:
        new |= kd.quantities & outcome.verdict.ratios.keys()
    known = {q for _, quantities in outcome.explained for q in quantities}
    return [NEW if q in new else KNOWN if q in known else PASSED for q in QUANTITIES]


class Sampler:
    """Reservoir sampling of plot points, seeded so a run is reproducible."""

    def __init__(self, cap: int, seed: int) -> None:
        self.cap = cap
        self.rng = random.Random(seed)
        self.rows: list[tuple[int, float, list[float], list[int]]] = []
        self.seen = 0

    def add(self, row: tuple[int, float, list[float], list[int]]) -> None:
        self.seen += 1
        if len(self.rows) < self.cap:
            self.rows.append(row)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.cap:
                self.rows[j] = row

    def points(self) -> Points:
        if not self.rows:
            return dataclasses.replace(Points.empty(), seen=self.seen)
        return Points(
            np.array([r[0] for r in self.rows], np.int8),
            np.array([r[1] for r in self.rows], np.float64),
            np.array([r[2] for r in self.rows], np.float64),
            np.array([r[3] for r in self.rows], np.int8),
            self.seen,
        )


@dataclasses.dataclass
class WorkerResult:
    """What one worker ran and found; picklable, so worker processes send it back whole."""

    worker: int
    cases: int = 0
    #: Cases drawn again that this worker had judged already (Hypothesis starts every chunk with its
    #: simplest cases); skipped, not counted.
    repeats: int = 0
    shrink_calls: int = 0
    elapsed_s: float = 0.0
    stop_reason: str = "budget"
    #: (entry, backend, kernel, dtype) -> {"passed"|"known"|"failed"|"error": count}
    counts: dict[tuple[str, str, str, str], dict[str, int]] = dataclasses.field(default_factory=dict)
    entries: list[Entry] = dataclasses.field(default_factory=list)
    replays: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: (dtype, quantity) -> the case with the largest error/bound ratio.
    worst: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)
    points: Points = dataclasses.field(default_factory=Points.empty)
    chunks: list[int] = dataclasses.field(default_factory=list)
    error: str = ""
    #: relation -> {"held"|"broken"|"no instance"|"error": count} over the relation checks run while exploring.
    relations: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: "entry/backend" -> {"checks"|network_findings.RESULTS: count, "ms": milliseconds} over the chains run while
    #: exploring.
    networks: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: "entry/backend" -> {"checks"|sequence_findings.RESULTS: count, "ms": milliseconds} over the sequences run.
    sequences: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: "member entry/backend" -> {"checks"|member_findings.RESULTS: count, "ms": milliseconds} over member calls.
    members: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: life-cycle check -> {"checks"|lifecycle_findings.RESULTS: count, "ms": milliseconds} over the scenarios run.
    lifecycle: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: "where/part" -> samples of this worker's main thread (fuzzing.time_shares).
    time_samples: dict[str, int] = dataclasses.field(default_factory=dict)


def count(cells: dict[Any, dict[str, int]], key: object, results: Iterable[str], *, ms: int | None = None) -> None:
    """Add one to each of ``results`` in the cell ``key`` (and the milliseconds spent, when timed)."""
    cell = cells.setdefault(key, {})
    for result in results:
        cell[result] = cell.get(result, 0) + 1
    if ms is not None:
        cell["ms"] = cell.get("ms", 0) + ms


def tally_case(
    result: WorkerResult, sampler: Sampler, target: tuple[str, str], case: Case, outcome: Outcome | None, *, kernel: str
) -> str:
    """Count one judged case, sample it for the plot, keep the worst ratios; returns passed/known/failed/error."""
    entry, backend = target
    if outcome is None:
        verdict = "error"
    elif not outcome.ok:
        verdict = "failed"
    else:
        verdict = "known" if outcome.explained else "passed"
    result.cases += 1
    count(result.counts, (entry, backend, kernel, case.dtype), (verdict,))
    if outcome is None:
        return verdict
    ratios = [outcome.verdict.ratios.get(q, math.nan) for q in QUANTITIES]
    sampler.add((DTYPES.index(case.dtype), conditioning(case), ratios, point_kinds(outcome)))
    for q, r in outcome.verdict.ratios.items():
        key = (case.dtype, q)
        if not math.isnan(r) and (key not in result.worst or r > result.worst[key]["ratio"]):
            result.worst[key] = {
                "dtype": case.dtype,
                "quantity": q,
                "ratio": r,
                "entry": entry,
                "backend": backend,
                "failed": any(m.quantity == q for m in outcome.verdict.mismatches),
                "case": case.describe(),
            }
    return verdict

"""One case through one runner, judged: the oracle, the comparator and the known deviations together.

This is the single source of truth that ``pytest -m property`` and the fuzz job share.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable

import hypothesis

from bnprops.case import QUANTITIES, Case
from bnprops.comparator import Mismatch, Verdict, compare
from bnprops.known_deviations import KNOWN_DEVIATIONS, KnownDeviation
from bnprops.runners import Runner, kernel_for

#: The properties: each names the quantities it checks (one property per thing under test).
PROPERTIES: dict[str, tuple[str, ...]] = {
    "parameter_gradients": ("dbeta", "dgamma"),
    "data_gradient": ("dx",),
    "forward_output": ("y", "mean", "invstd"),
    "moving_statistics": ("moving_mean", "moving_var"),
    "gamma_side_effect": ("gamma",),
}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A verdict sorted against the known deviations."""

    verdict: Verdict
    entry: str
    #: Known deviations that apply to the case and reproduced, with the quantities they explain.
    explained: tuple[tuple[KnownDeviation, frozenset[str]], ...]
    #: Mismatches that no known deviation explains: these are findings.
    unexpected: tuple[Mismatch, ...]
    #: Known deviations that apply to the case but did not reproduce (MXNet may have been fixed).
    stale: tuple[KnownDeviation, ...]
    #: The quantities the caller asked about.
    checked: frozenset[str]

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.stale

    @property
    def case(self) -> Case:
        return self.verdict.case

    def message(self) -> str:
        lines: list[str] = []
        if self.unexpected:
            partial = dataclasses.replace(self.verdict, mismatches=self.unexpected)
            lines.append(partial.message(label=f"MXNet ({self.entry})"))
        for kd in self.stale:
            lines.append(
                f"Known deviation {kd.id} applies to {self.case.describe()} but did not reproduce: "
                f"{', '.join(sorted(kd.quantities))} matched the oracle. If MXNet was fixed, narrow or "
                f"remove it in bnprops/known_deviations.py.\nReproduce with:\n"
                + "\n".join("    " + line for line in self.case.snippet().splitlines())
            )
        return "\n".join(lines)


def judge(verdict: Verdict, *, entry: str, kernel: str, checked: Iterable[str]) -> Outcome:
    """Sort a verdict over all quantities: findings among ``checked``, staleness over all of them.

    A certain known deviation must show in some quantity it names, even one the calling property
    does not check (dgamma may agree by accident where y cannot).
    """
    checked = frozenset(checked)
    failed = verdict.failed_quantities
    explained: list[tuple[KnownDeviation, frozenset[str]]] = []
    stale: list[KnownDeviation] = []
    allowed: set[str] = set()
    for kd in KNOWN_DEVIATIONS:
        expectation = kd.expectation(verdict.case, entry=entry, kernel=kernel)
        if not expectation.quantities:
            continue
        allowed |= expectation.quantities
        hit = expectation.quantities & failed
        if hit & checked:
            explained.append((kd, frozenset(hit & checked)))
        elif not hit and expectation.certain:
            stale.append(kd)
    unexpected = tuple(m for m in verdict.mismatches if m.quantity in checked and m.quantity not in allowed)
    return Outcome(verdict, entry, tuple(explained), unexpected, tuple(stale), checked)


#: Cases judged by assert_matches_oracle in this process, by (entry, kernel, dtype, result).
TALLY: collections.Counter[tuple[str, str, str, str]] = collections.Counter()


def check(
    case: Case, *, runner: Runner, entry: str, kernel: str | None = None, quantities: Iterable[str] = QUANTITIES
) -> Outcome:
    """Run ``case`` through ``runner`` and judge the chosen quantities (known deviations see them all)."""
    quantities = tuple(quantities)
    kernel = kernel_for(case) if kernel is None else kernel
    verdict = compare(case, runner(case))
    return judge(verdict, entry=entry, kernel=kernel, checked=quantities)


def steer(outcome: Outcome) -> None:
    """Point Hypothesis at large error/bound ratios (one target per quantity); call inside a test."""
    for quantity, ratio in outcome.verdict.ratios.items():
        if quantity in outcome.checked and math.isfinite(ratio):
            hypothesis.target(math.log10(ratio + 1e-300) if ratio > 0 else -300.0, label=quantity)


def assert_matches_oracle(
    case: Case, *, runner: Runner, entry: str, quantities: Iterable[str], kernel: str | None = None
) -> Outcome:
    """Raise AssertionError, with what differed and a reproducer, unless the case passes or fails only as known.

    Inside a Hypothesis test it also steers the search toward large relative errors.
    """
    outcome = check(case, runner=runner, entry=entry, kernel=kernel, quantities=quantities)
    result = "failed" if not outcome.ok else ("known deviation" if outcome.explained else "passed")
    TALLY[(entry, kernel or kernel_for(case), case.dtype, result)] += 1
    if hypothesis.currently_in_test_context():
        steer(outcome)
    if not outcome.ok:
        raise AssertionError(outcome.message())
    return outcome

"""One case through one runner, judged: the oracle, the comparator and the known deviations together.

This is the single source of truth that ``pytest -m property`` and the fuzz job share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

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
    checked = frozenset(checked)
    failed = verdict.failed_quantities
    explained: list[tuple[KnownDeviation, frozenset[str]]] = []
    stale: list[KnownDeviation] = []
    allowed: set[str] = set()
    for kd in KNOWN_DEVIATIONS:
        expectation = kd.expectation(verdict.case, entry=entry, kernel=kernel)
        expected = expectation.quantities & checked
        if not expected:
            continue
        allowed |= expected
        hit = expected & failed
        if hit:
            explained.append((kd, frozenset(hit)))
        elif expectation.certain:
            stale.append(kd)
    unexpected = tuple(m for m in verdict.mismatches if m.quantity not in allowed)
    return Outcome(verdict, entry, tuple(explained), unexpected, tuple(stale))


def check(case: Case, *, runner: Runner, entry: str, quantities: Iterable[str] = QUANTITIES) -> Outcome:
    """Run ``case`` through ``runner`` and judge the chosen quantities."""
    quantities = tuple(quantities)
    verdict = compare(case, runner(case), quantities=quantities)
    return judge(verdict, entry=entry, kernel=kernel_for(case), checked=quantities)


def assert_matches_oracle(case: Case, *, runner: Runner, entry: str, quantities: Iterable[str]) -> Outcome:
    """Raise AssertionError, with what differed and a reproducer, unless the case passes or fails only as known."""
    outcome = check(case, runner=runner, entry=entry, quantities=quantities)
    if not outcome.ok:
        raise AssertionError(outcome.message())
    return outcome

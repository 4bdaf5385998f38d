"""One case through one runner, judged: the oracle, the comparator and the known deviations together.

This is the single source of truth that ``pytest -m property`` and the fuzz job share.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import hypothesis
import numpy as np

from bnprops.judging.comparator import Verdict, compare_pair, reproducer
from bnprops.judging.groups import judge_group
from bnprops.judging.judgement import Outcome, judge
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.evaluation import Evaluation, evaluate
from bnprops.mx.batching import stack
from bnprops.mx.runners import ENTRY_POINTS, IN_PROCESS_BACKEND, REDUCTION_OF_BACKEND, Runner, adapt, kernel_for

__all__ = ["Outcome", "judge"]  # re-exported: the judgement is what callers of checks consume

#: The properties: each names the quantities it checks (one property per thing under test).
PROPERTIES: dict[str, tuple[str, ...]] = {
    "parameter_gradients": ("dbeta", "dgamma"),
    "data_gradient": ("dx",),
    "forward_output": ("y", "mean", "invstd"),
    "moving_statistics": ("moving_mean", "moving_var"),
    "gamma_side_effect": ("gamma",),
    "moving_statistics_timing": ("forward_moving_mean", "forward_moving_var"),
}


class Tally(NamedTuple):
    entry: str
    backend: str
    kernel: str
    dtype: str
    result: str  # "passed", "known deviation" or "failed"


#: Cases judged in this process, by entry point, backend, kernel, dtype and result; the pytest summary prints it.
COUNTS: collections.Counter[Tally] = collections.Counter()
#: Cases a known deviation explained, by (deviation id, entry, backend).
DEVIATION_HITS: collections.Counter[tuple[str, str, str]] = collections.Counter()
#: Cases judged, by decade of their reduction length M (0 for M < 10, ..., 6 for M >= 10^6).
DECADES: collections.Counter[int] = collections.Counter()


def decade(m: int) -> int:
    """The decade of a reduction length: floor(log10(M)), and 0 for an empty reduction."""
    return len(str(m)) - 1 if m > 0 else 0


def check(
    case: Case,
    *,
    runner: Runner,
    entry: str,
    kernel: str | None = None,
    quantities: Iterable[str] = QUANTITIES,
    backend: str | None = None,
) -> Outcome:
    """Run ``case`` through ``runner`` and judge the chosen quantities (known deviations see them all).

    The case is first adapted to what the entry point can express (bnprops.mx.runners.adapt); the
    outcome's case is the adapted one. ``backend`` defaults to the one this process runs.
    """
    quantities = tuple(quantities)
    backend = IN_PROCESS_BACKEND if backend is None else backend
    kernel = kernel_for(case, backend, entry) if kernel is None else kernel
    case = adapt(entry, case)
    outcome = judge(case, runner(case), entry=entry, kernel=kernel, checked=quantities, backend=backend)
    record(outcome, kernel=kernel)
    return outcome


def check_group(
    group: Sequence[Case],
    *,
    runner: Runner,
    entry: str,
    quantities: Iterable[str] = QUANTITIES,
    backend: str | None = None,
    steering: bool = False,
) -> list[Outcome]:
    """Judge same-signature cases from one stacked MXNet call (bnprops.mx.batching): one outcome per case,
    each the one ``check`` gives (judging.groups). ``steering``: inside a Hypothesis test, steer the search by
    the stacked call's ratios (the largest over the group), as assert_matches_oracle does.
    """
    quantities = tuple(quantities)
    backend = IN_PROCESS_BACKEND if backend is None else backend
    group = [adapt(entry, case) for case in group]
    stacked = stack(group)
    outputs = runner(stacked)
    kernel = kernel_for(stacked, backend, entry)
    whole, outcomes = judge_group(
        group, stacked, outputs, entry=entry, kernel=kernel, quantities=quantities, backend=backend
    )
    if steering and hypothesis.currently_in_test_context():
        steer(whole)
    for outcome in outcomes:
        record(outcome, kernel=kernel)
    return outcomes


def assert_group_matches_oracle(
    group: Sequence[Case],
    *,
    runner: Runner,
    entry: str,
    quantities: Iterable[str] = QUANTITIES,
    backend: str | None = None,
) -> list[Outcome]:
    """check_group, raising AssertionError (what differed, and a reproducer) for the first case that fails.

    Inside a Hypothesis test it also steers the search toward large relative errors."""
    outcomes = check_group(group, runner=runner, entry=entry, quantities=quantities, backend=backend, steering=True)
    for outcome in outcomes:
        if not outcome.ok:
            raise AssertionError(
                f"(case {outcomes.index(outcome) + 1} of a stacked group of {len(group)})\n" + outcome.message()
            )
    return outcomes


def record(outcome: Outcome, *, kernel: str) -> None:
    """Count a judged case for the summary (MXNet's entry points only: test doubles stay out)."""
    if outcome.entry not in ENTRY_POINTS:
        return
    result = "failed" if not outcome.ok else ("known deviation" if outcome.explained else "passed")
    COUNTS[Tally(outcome.entry, outcome.backend, kernel, outcome.case.dtype, result)] += 1
    DECADES[decade(outcome.case.reduction_length)] += 1
    for kd, _ in outcome.explained:
        DEVIATION_HITS[(kd.id, outcome.entry, outcome.backend)] += 1


def steer(outcome: Outcome) -> None:
    """Point Hypothesis at large error/bound ratios (one target per quantity); call inside a test.

    The ratios to the sharper, probabilistic bound: climbing them finds accuracy findings and, beyond, mismatches.
    """
    for quantity, ratio in (outcome.verdict.sharp_ratios or outcome.verdict.ratios).items():
        if quantity in outcome.checked and math.isfinite(ratio):
            hypothesis.target(math.log10(ratio + 1e-300) if ratio > 0 else -300.0, label=quantity)


def assert_matches_oracle(
    case: Case,
    *,
    runner: Runner,
    entry: str,
    quantities: Iterable[str],
    kernel: str | None = None,
    backend: str | None = None,
) -> Outcome:
    """Raise AssertionError, with what differed and a reproducer, unless the case passes or fails only as known.

    Inside a Hypothesis test it also steers the search toward large relative errors.
    """
    outcome = check(case, runner=runner, entry=entry, kernel=kernel, quantities=quantities, backend=backend)
    if hypothesis.currently_in_test_context():
        steer(outcome)
    if not outcome.ok:
        raise AssertionError(outcome.message())
    return outcome


@dataclasses.dataclass(frozen=True)
class Disagreement:
    """Two implementations that differ, on the same case, by more than their bounds allow."""

    first: str
    second: str
    verdict: Verdict

    def message(self) -> str:
        lines = [f"{self.first} and {self.second} disagree on {self.verdict.case.describe()}"]
        for m in self.verdict.mismatches:
            lines.append("  " + m.describe().replace("expected (oracle)", f"{self.second:<17}"))
            lines[-1] = lines[-1].replace("actual:           ", f"{self.first:<17}:")
        return "\n".join(lines)


def same_computation(case: Case, first: tuple[str, str], second: tuple[str, str]) -> bool:
    """Do two (entry, backend) pairs run the very same kernel code on the case, so that their results must be
    bit for bit the same? Every entry point reaches the same operator; verified by runs on both CPU
    backends. The exception: the executor's backward after forward(is_train=False) takes the training
    branch (known deviation sym-inference-backward-trains), a different computation.
    """
    if first[1] != second[1]:
        return False
    inference_backward = not case.is_train and not case.use_global_stats
    return not (inference_backward and "sym" in (first[0], second[0]) and first[0] != second[0])


def disagreements(
    case: Case,
    results: Mapping[str, Outputs],
    *,
    covered: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    exact: Callable[[str, str], bool] | None = None,
    evaluation: Evaluation | None = None,
) -> list[Disagreement]:
    """Every pair of ``results`` (label -> Outputs, for the same case) that disagrees.

    A pair for which ``exact(first, second)`` is true must agree bit for bit; others within twice
    the bound. Elements a known deviation covers for either member of the pair (``covered``:
    label -> quantity -> elements) are not compared: one deviates as known, the other need not.
    ``evaluation``: the case's, if made.
    """
    covered = covered or {}
    evaluation = evaluation or evaluate(case)
    found = []
    for first, second in itertools.combinations(results, 2):
        excluded: dict[str, np.ndarray] = {}
        for label in (first, second):
            for q, where in covered.get(label, {}).items():
                excluded[q] = excluded[q] | where if q in excluded else where
        same = exact is not None and exact(first, second)
        verdict = compare_pair(
            case, results[first], results[second], exact=same, excluded=excluded, evaluation=evaluation
        )
        if verdict.mismatches:
            found.append(Disagreement(first, second, verdict))
    return found


def assert_agree(
    case: Case, runners: Mapping[str, tuple[Runner, str, str]], *, quantities: Iterable[str] = QUANTITIES
) -> dict[str, Outcome]:
    """Run ``case`` through each runner (label -> (runner, entry, backend)), judge each against the oracle,
    and raise AssertionError if any fails the oracle unexpectedly or any two disagree: bit for bit
    where they run the same computation (see same_computation), else beyond twice the bound.

    Every runner must be able to express the case as given (adapt it first for gluon).
    """
    outcomes: dict[str, Outcome] = {}
    results: dict[str, Outputs] = {}
    # One evaluation per reduction class for every runner's judgement; the pairs take the widest bound present.
    reductions = {label: REDUCTION_OF_BACKEND.get(backend, "cpu") for label, (_, _, backend) in runners.items()}
    evaluations = {r: evaluate(case, reduction=r) for r in sorted(set(reductions.values()))}
    for label, (runner, entry, backend) in runners.items():
        outputs = runner(case)
        results[label] = outputs
        kernel = kernel_for(case, backend)
        ev = evaluations[reductions[label]]
        outcome = judge(case, outputs, entry=entry, kernel=kernel, checked=quantities, backend=backend, evaluation=ev)
        record(outcome, kernel=kernel)
        outcomes[label] = outcome
    where = {label: (entry, backend) for label, (_, entry, backend) in runners.items()}
    found = disagreements(
        case,
        results,
        covered={k: o.covered for k, o in outcomes.items()},
        exact=lambda a, b: same_computation(case, where[a], where[b]),
        evaluation=evaluations["gpu" if "gpu" in evaluations else "cpu"],
    )
    problems = [d.message() for d in found]
    problems += [o.message() for o in outcomes.values() if not o.ok]
    if problems:
        label, (_, entry, backend) = next(iter(runners.items()))
        problems.append(
            "Reproduce with (one of them; the others' reproducers follow from --bn-entry/--bn-backend):\n"
            + "\n".join("    " + line for line in reproducer(case, entry, backend).splitlines())
        )
        raise AssertionError("\n".join(problems))
    return outcomes

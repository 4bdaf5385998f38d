"""The speed benchmark: each stage's throughput against the raw ceiling, measured in one run.

Stages (cases per second, and the ratio to the ceiling):

* ceiling   pre-drawn cases through the runner, oracle and comparator in a tight loop
            (no Hypothesis): what one process can judge at best;
* empty     a Hypothesis loop over the same strategy with an empty body: Hypothesis's own cost;
* property  the property run's body (assert_matches_oracle on every quantity) under Hypothesis;
* stacked   the stacked property: up to 16 same-signature cases per example in one MXNet call;
* fuzz      the fuzz job on all cores, when it is available.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings

from bnprops.judging.checks import assert_group_matches_oracle, assert_matches_oracle, check
from bnprops.model.case import QUANTITIES, Case
from bnprops.mx.runners import run_symbolic
from bnprops.search.strategies import case_groups, cases


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    cases: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds > 0 else float("inf")


def _loop_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def _hypothesis_stage(name: str, examples: int, body: Callable[[Case], None]) -> Stage:
    count = 0

    @_loop_settings(examples)
    @given(case=cases())
    def loop(case: Case) -> None:
        nonlocal count
        count += 1
        body(case)

    start = time.perf_counter()
    loop()
    return Stage(name, count, time.perf_counter() - start)


def draw_cases(examples: int) -> list[Case]:
    drawn: list[Case] = []
    _hypothesis_stage("draw", examples, drawn.append)
    return drawn


def ceiling(drawn: list[Case]) -> Stage:
    start = time.perf_counter()
    for case in drawn:
        check(case, runner=run_symbolic, entry="sym")
    return Stage("ceiling", len(drawn), time.perf_counter() - start)


def empty(examples: int) -> Stage:
    return _hypothesis_stage("empty", examples, lambda case: None)


def property_run(examples: int) -> Stage:
    def body(case: Case) -> None:
        assert_matches_oracle(case, runner=run_symbolic, entry="sym", quantities=QUANTITIES)

    return _hypothesis_stage("property", examples, body)


def stacked_run(examples: int) -> Stage:
    count = 0

    @_loop_settings(examples)
    @given(group=case_groups())
    def loop(group: list[Case]) -> None:
        nonlocal count
        count += len(group)
        assert_group_matches_oracle(group, runner=run_symbolic, entry="sym")

    start = time.perf_counter()
    loop()
    return Stage("stacked", count, time.perf_counter() - start)


def fuzz_run(*, seconds: float, workers: int) -> Stage:
    """A time-limited fuzz campaign on ``workers`` processes, in a scratch folder (report writing excluded)."""
    from bnprops.fuzzing import campaign, fuzz

    with tempfile.TemporaryDirectory(prefix="bnprops-bench-") as out:
        result = campaign.run(fuzz.Config(out=Path(out), time_limit=seconds, workers=workers))
    return Stage(f"fuzz x{workers}", result.cases, result.elapsed_s)


def run(*, examples: int = 1000, fuzz_seconds: float = 20.0, workers: int = 2) -> list[Stage]:
    """Measure every stage in one run; the ceiling's first pass warms MXNet's executor cache."""
    drawn = draw_cases(examples)
    ceiling(drawn)  # warm-up: binds the executors the timed stages reuse
    stages = [ceiling(drawn), empty(examples), property_run(examples), stacked_run(examples)]
    if fuzz_seconds > 0:
        stages.append(fuzz_run(seconds=fuzz_seconds, workers=workers))
    return stages


def format_table(stages: list[Stage]) -> str:
    base = stages[0].rate
    lines = [f"{'stage':<10}{'cases':>8}{'seconds':>10}{'cases/s':>10}{'x ceiling':>11}"]
    for s in stages:
        lines.append(f"{s.name:<10}{s.cases:>8}{s.seconds:>10.2f}{s.rate:>10.1f}{s.rate / base:>11.2f}")
    by_name = {s.name: s for s in stages}
    if "empty" in by_name and "stacked" in by_name:
        ratio = by_name["stacked"].rate / by_name["empty"].rate
        lines.append(f"stacked property / empty Hypothesis loop: {ratio:.2f} (goal: >= 0.80, and >= 400 cases/s)")
    return "\n".join(lines)

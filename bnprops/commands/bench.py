"""The speed benchmark: each stage's throughput against the raw ceiling, measured in one run.

Stages (cases per second, and the ratio to the ceiling):

* ceiling   pre-drawn cases through the runner, oracle and comparator in a tight loop
            (no Hypothesis): what one process can judge at best;
* empty     a Hypothesis loop over the same strategy with an empty body: Hypothesis's own cost;
* property  the property run's body (assert_matches_oracle on every quantity) under Hypothesis;
* stacked   the stacked property: up to 16 same-signature cases per example in one MXNet call;
* drawing   the fuzz job's examples drawn, as its workers draw them, with an empty body;
* fuzz      the fuzz job on all cores, when it is available.

And per decade of M (``decades``): MXNet's own time per case against bnprops's judging time (check() minus
the runner), on the same fresh cases in the same run.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings

from bnprops.judging import fused
from bnprops.judging.checks import assert_group_matches_oracle, assert_matches_oracle, check
from bnprops.model.case import DEFAULT_EPS, DEFAULT_MOMENTUM, QUANTITIES, WRITE_ALL, Case, Outputs
from bnprops.mx.runners import run_symbolic
from bnprops.search.strategies import _values, case_groups, cases


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


def fuzz_drawing(examples: int) -> Stage:
    """The fuzz job's examples, drawn as its workers draw them (seeded searches of a chunk's size), judged by nobody:
    the cases they hold per second of drawing."""
    from bnprops.fuzzing import families, plan
    from bnprops.fuzzing.explorer import examples as fuzz_examples
    from bnprops.mx.runners import BACKENDS, RUNNERS

    config = plan.CampaignConfig(out=Path(tempfile.gettempdir()), max_examples=examples)
    strategy = fuzz_examples(config, [(e, b) for e in RUNNERS for b in BACKENDS], families.side_families(config, {}))
    count = 0

    def body(value: plan.Example) -> None:
        nonlocal count
        count += len(value[1])

    chunk = settings(_loop_settings(min(examples, config.chunk_size)), derandomize=False)
    start = time.perf_counter()
    for index in range(max(1, examples // config.chunk_size)):
        seed(plan.chunk_seed(config.seed, index))(chunk(given(strategy)(body)))()
    return Stage("drawing", count, time.perf_counter() - start)


def fuzz_run(*, seconds: float, workers: int) -> Stage:
    """A time-limited fuzz campaign on ``workers`` processes, in a scratch folder (report writing excluded)."""
    from bnprops.fuzzing import campaign, plan

    with tempfile.TemporaryDirectory(prefix="bnprops-bench-") as out:
        result = campaign.run(plan.CampaignConfig(out=Path(out), time_limit=seconds, workers=workers))
    return Stage(f"fuzz x{workers}", result.cases, result.elapsed_s)


def run(*, examples: int = 1000, fuzz_seconds: float = 20.0, workers: int = 2) -> list[Stage]:
    """Measure every stage in one run; the ceiling's first pass warms MXNet's executor cache."""
    drawn = draw_cases(examples)
    ceiling(drawn)  # warm-up: binds the executors the timed stages reuse
    stages = [ceiling(drawn), empty(examples), property_run(examples), stacked_run(examples), fuzz_drawing(examples)]
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


# --- judging against MXNet, per decade of M -----------------------------------------------------------------

#: One float32 shape per decade of M (channels second): 10^4 to 10^6 are issue 14's shapes.
DECADE_SHAPES: dict[int, tuple[int, ...]] = {
    2: (8, 16, 4, 4),  # M = 128
    3: (8, 16, 12, 12),  # M = 1,152
    4: (32, 16, 28, 28),  # M = 25,088
    5: (64, 16, 56, 56),  # M = 200,704
    6: (256, 4, 64, 64),  # M = 1,048,576
}


#: The judging paths timed side by side: numpy's reference, and the fused numba path (judging.fused)
#: on every core (its default, as MXNet's OpenMP) and on one (a fuzz worker's share when two run).
PATHS = ("reference", "fused", "fused-1t")
_MODES = {"reference": ("never", None), "fused": ("always", None), "fused-1t": ("always", 1)}


@dataclasses.dataclass(frozen=True)
class DecadeRow:
    """Mean milliseconds per case at one decade of M: MXNet's runner, and bnprops's judging (check() minus the
    runner: oracle, bounds, comparison, known deviations) on each path."""

    decade: int
    shape: tuple[int, ...]
    mxnet_ms: float
    judging_ms: dict[str, float]

    @property
    def m(self) -> int:
        return int(math.prod(self.shape) // self.shape[1])

    def ratio(self, path: str) -> float:
        return self.judging_ms[path] / self.mxnet_ms if self.mxnet_ms > 0 else float("inf")


def decade_case(shape: tuple[int, ...], seed: int) -> Case:
    """A fresh float32 training case of ``shape`` (ordinary data, random head, gamma learnt)."""
    a, _ = _values(np.random.default_rng(seed), shape, 1, "float32", "ordinary", "random", WRITE_ALL)
    return Case(
        x=a["x"],
        gamma=a["gamma"],
        beta=a["beta"],
        moving_mean=a["moving_mean"],
        moving_var=a["moving_var"],
        dy=a["dy"],
        axis=1,
        eps=DEFAULT_EPS,
        momentum=DEFAULT_MOMENTUM,
        fix_gamma=False,
        regime="ordinary/random",
    )


def judging_ms(case: Case, outputs: Outputs, path: str) -> float:
    """Milliseconds check() spends beyond the runner on ``case`` (a fresh copy: nothing computed yet) on ``path``."""
    mode, threads = _MODES[path]
    with fused.forced(mode, threads=threads):
        fresh = case.with_()
        start = time.perf_counter()
        check(fresh, runner=lambda _: outputs, entry="sym")
        return 1e3 * (time.perf_counter() - start)


def decades(*, top: int = 6, reps: int = 3, paths: tuple[str, ...] = PATHS) -> list[DecadeRow]:
    """Per decade of M up to 10^top: MXNet's time (sym entry point, executor bound once by a warm-up run) and
    each path's judging time, on the same fresh cases, means of ``reps`` cases."""
    rows = []
    for decade, shape in DECADE_SHAPES.items():
        if decade > top:
            continue
        warm = decade_case(shape, 0)
        warm_out = run_symbolic(warm)
        for path in paths:  # compiled kernels loaded, caches warm
            judging_ms(warm, warm_out, path)
        mxnet: list[float] = []
        judged: dict[str, list[float]] = {path: [] for path in paths}
        for rep in range(reps):
            case = decade_case(shape, 1 + rep)
            start = time.perf_counter()
            outputs = run_symbolic(case)
            mxnet.append(1e3 * (time.perf_counter() - start))
            for path in paths:
                judged[path].append(judging_ms(case, outputs, path))
        rows.append(DecadeRow(decade, shape, float(np.mean(mxnet)), {p: float(np.mean(v)) for p, v in judged.items()}))
    return rows


def format_decades(rows: list[DecadeRow]) -> str:
    paths = list(rows[0].judging_ms) if rows else list(PATHS)
    head = f"{'decade':<8}{'shape':<20}{'M':>10}{'MXNet ms':>10}"
    for p in paths:
        head += f"{p + ' ms':>15}{p + '/MXNet':>17}"
    lines = [head]
    for r in rows:
        line = f"10^{r.decade:<5}{r.shape!s:<20}{r.m:>10,}{r.mxnet_ms:>10.1f}"
        for p in paths:
            line += f"{r.judging_ms[p]:>15.1f}{r.ratio(p):>17.2f}"
        lines.append(line)
    at_5 = [r for r in rows if r.decade == 5]
    if at_5:
        rates = ", ".join(f"{p} {1e3 / at_5[0].judging_ms[p]:.1f}" for p in paths)
        lines.append(f"judging rate at M = {at_5[0].m:,} (cases/s; goal >= 5 per fuzz worker, fused-1t): {rates}")
    lines.append("judging = check() minus the runner (oracle, bounds, comparison, known deviations); goal: <= 2x MXNet")
    lines.append(f"for M >= 10^5 (float32, sym entry point, means of the same fresh cases; fused: {fused.mode_note()};")
    lines.append("fused-1t: the fused path on one thread)")
    return "\n".join(lines)


# --- judging a stacked group, against judging its cases one by one ------------------------------------------

#: Same-signature groups as the properties and the fuzz job stack them (case_groups: at most 10,000 elements a
#: case); 16 cases stacked make a small group (864 elements) and a mid one (73,728: the fused engine's size).
GROUP_SHAPES: dict[str, tuple[int, ...]] = {"small": (2, 3, 3, 3), "mid": (8, 4, 12, 12)}
GROUP_SIZE = 16
#: What MXNet's results are judged as: as they are (the stacked verdict agrees), and with one element of the
#: last case's dx 1% off (the group is judged case by case: what any known deviation in a group causes).
SCENARIOS = ("agreeing", "one off")
#: The engine choice: numpy's reference throughout, or the default (fused for a stack of 20,000 elements or more).
GROUP_PATHS = {"reference": "never", "auto": "auto"}
#: How each group is judged: every case alone (check() per case), the group path before issue 25's part 2 (the
#: stacked verdict, then every case alone where it disagrees) and now (checks.judge_group).
GROUP_METHODS = ("alone", "before", "group")


@dataclasses.dataclass(frozen=True)
class GroupRow:
    """Mean judging milliseconds per case for one kind of group, scenario and engine choice, by method."""

    size: str
    scenario: str
    path: str
    ms: dict[str, float]


def _group_judging_ms(group: list[Case], outputs: Outputs, method: str) -> float:
    from bnprops.judging.groups import judge_group
    from bnprops.judging.judgement import judge
    from bnprops.mx.batching import split, stack

    group = [case.with_() for case in group]  # fresh: nothing computed yet
    sym = {"entry": "sym", "kernel": "onednn", "checked": QUANTITIES}
    start = time.perf_counter()
    stacked = stack(group)
    parts = split(stacked, outputs, [c.channels for c in group])
    if method == "group":
        judge_group(group, stacked, outputs, entry="sym", kernel="onednn")
    else:
        whole = judge(stacked, outputs, **sym) if method == "before" else None  # type: ignore[arg-type]
        if whole is None or whole.verdict.mismatches or whole.stale:
            for case, part in zip(group, parts, strict=True):
                judge(case, part, **sym)  # type: ignore[arg-type]
    return 1e3 * (time.perf_counter() - start) / len(group)


def groups(*, reps: int = 3) -> list[GroupRow]:
    """Per kind of group, scenario and engine choice: each method's judging ms per case on the same MXNet results,
    means over ``reps`` fresh groups (the first group of each kind judged once before, to warm caches)."""
    from bnprops.mx.batching import stack

    rows = []
    for size, shape in GROUP_SHAPES.items():
        for scenario in SCENARIOS:
            for path, mode in GROUP_PATHS.items():
                times: dict[str, list[float]] = {m: [] for m in GROUP_METHODS}
                with fused.forced(mode):
                    for rep in range(reps + 1):
                        group = [decade_case(shape, 100 * rep + i) for i in range(GROUP_SIZE)]
                        outputs = dict(run_symbolic(stack(group)))
                        if scenario == "one off":
                            dx = np.array(outputs["dx"], copy=True)
                            dx[(0, dx.shape[1] - 1)] *= 1.01
                            outputs["dx"] = dx
                        for method in GROUP_METHODS:
                            ms = _group_judging_ms(group, outputs, method)
                            if rep:
                                times[method].append(ms)
                rows.append(GroupRow(size, scenario, path, {m: float(np.mean(v)) for m, v in times.items()}))
    return rows


def format_groups(rows: list[GroupRow]) -> str:
    head = f"{'group':<26}{'scenario':<10}{'engine':<11}" + "".join(f"{m + ' ms/case':>17}" for m in GROUP_METHODS)
    lines = [head + f"{'before/group':>14}{'alone/group':>13}"]
    for r in rows:
        shape = GROUP_SHAPES[r.size]
        label = f"{r.size} {GROUP_SIZE}x{shape!s}"
        line = f"{label:<26}{r.scenario:<10}{r.path:<11}" + "".join(f"{r.ms[m]:>17.3f}" for m in GROUP_METHODS)
        lines.append(line + f"{r.ms['before'] / r.ms['group']:>14.2f}{r.ms['alone'] / r.ms['group']:>13.2f}")
    lines.append(
        "judging ms per case of a stacked group (float32, sym's results): alone = each case by judge(); before = the "
        "stacked verdict, then each case alone where it disagrees; group = checks.judge_group (one evaluation cut "
        "per case)"
    )
    return "\n".join(lines)

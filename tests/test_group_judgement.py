"""A stacked group judged as one array computation gives each case the verdict judging it alone gives.

judge_group (bnprops.judging.groups) evaluates the stacked case once (each channel's bounds those of its own
case) and cuts each case's values out of it (bnprops.model.evaluation.part); ``judge`` on each case's slice of
the same outputs is the reference it is held to: the same outcome, the same mismatches (kind, quantity, count,
index, values, bounds), the same known deviations explained and stale. Both engines, planted faults and MXNet.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnprops.judging.comparator import Mismatch
from bnprops.judging.groups import judge_group
from bnprops.judging.judgement import Outcome, judge
from bnprops.model import fused_sums
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.evaluation import evaluate, part
from bnprops.mx.batching import split, stack
from bnprops.mx.runners import IN_PROCESS_BACKEND, kernel_for, run_symbolic
from bnprops.search.strategies import case_groups
from tests.helpers import budget, one_channel_case
from tests.planted import FAULTS, numpy_batchnorm

#: Faults whose subject computes each channel from its own data only (stats_over_all_axes mixes channels).
CHANNELWISE = sorted(set(FAULTS) - {"stats_over_all_axes"})


def _mismatch(m: Mismatch) -> tuple[object, ...]:
    # repr: floats to the last bit, NaN equal to NaN
    values = (m.expected, m.actual, m.error, m.bound, m.sharp_bound, m.model)
    return (m.quantity, m.kind, m.count, m.size, m.index, m.detail, m.deviation, *map(repr, values))


def verdict_of(outcome: Outcome) -> tuple[object, ...]:
    """Everything a caller reads from an outcome but the ratios (a passing group's outcomes carry none)."""
    return (
        outcome.ok,
        tuple(_mismatch(m) for m in outcome.verdict.mismatches),
        tuple(_mismatch(m) for m in outcome.unexpected),
        tuple((kd.id, sorted(qs)) for kd, qs in outcome.explained),
        tuple(kd.id for kd in outcome.stale),
        sorted(outcome.checked),
    )


def ratios_of(outcome: Outcome) -> tuple[object, ...]:
    verdict = outcome.verdict
    return tuple(sorted((q, repr(r)) for q, r in verdict.ratios.items())), tuple(
        sorted((q, repr(r)) for q, r in verdict.sharp_ratios.items())
    )


def assert_same_verdicts(group: list[Case], outputs: Outputs, *, entry: str, kernel: str, backend: str) -> None:
    stacked = stack(group)
    _, together = judge_group(group, stacked, outputs, entry=entry, kernel=kernel, backend=backend)
    parts_of_outputs = split(stacked, outputs, [c.channels for c in group])
    for i, (case, own, outcome) in enumerate(zip(group, parts_of_outputs, together, strict=True)):
        alone = judge(case, own, entry=entry, kernel=kernel, checked=QUANTITIES, backend=backend)
        assert verdict_of(outcome) == verdict_of(alone), (
            f"case {i + 1} of {len(group)} ({case.describe()}): the group's verdict differs from its own\n"
            f"group: {outcome.message() or 'passed'}\nalone: {alone.message() or 'passed'}"
        )
        if outcome.verdict.ratios:  # (kept wherever the stacked verdict showed anything)
            assert ratios_of(outcome) == ratios_of(alone), f"case {i + 1} of {len(group)}: {case.describe()}"


def perturbed(outputs: Outputs, seed: int, scale: float) -> Outputs:
    """MXNet's outputs with a few elements moved by ``scale`` (relatively): some cases fail, some pass."""
    rng = np.random.default_rng(seed)
    moved = {q: np.array(v, copy=True) for q, v in outputs.items()}
    for q in rng.choice(sorted(moved), size=min(2, len(moved)), replace=False):
        flat = moved[q].reshape(-1)
        if flat.size:
            at = rng.integers(0, flat.size, size=max(1, flat.size // 50))
            flat[at] = (flat[at].astype(np.float64) * (1 + scale)).astype(flat.dtype)
    return moved


@pytest.mark.parametrize("mode", ["never", "always"])
@settings(max_examples=budget(0.1), deadline=None)
@given(group=case_groups(max_size=8), fault=st.sampled_from(CHANNELWISE))
def test_a_group_judged_as_one_gives_a_planted_fault_each_cases_own_verdict(
    mode: str, group: list[Case], fault: str
) -> None:
    if mode == "always" and not fused_sums.available():
        pytest.skip("numba does not import here: no fused engine")
    runner = functools.partial(numpy_batchnorm, fault=fault)
    with fused_sums.forced(mode):
        assert_same_verdicts(group, runner(stack(group)), entry="subject", kernel="subject", backend="subject")


@pytest.mark.property
@settings(max_examples=budget(0.25), deadline=None)
@given(
    group=case_groups(max_size=8),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.0, 0.0, 0.005, 1e-6, -2.0]),
)
def test_a_group_judged_as_one_gives_mxnets_results_each_cases_own_verdict(
    group: list[Case], seed: int, scale: float
) -> None:
    # MXNet's own results bring the known deviations; moved elements bring findings into some cases only.
    stacked = stack(group)
    kernel = kernel_for(stacked, IN_PROCESS_BACKEND, "sym")
    outputs = perturbed(run_symbolic(stacked), seed, scale) if scale else run_symbolic(stacked)
    assert_same_verdicts(group, outputs, entry="sym", kernel=kernel, backend=IN_PROCESS_BACKEND)


def _same_value(a: object, b: object, where: str) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype, where
        # bit for bit, but a NaN's sign and payload (numpy's vector loops and scalar ones give either sign)
        nan = np.isnan(a) if a.dtype.kind == "f" else np.zeros(a.shape, dtype=bool)
        assert (nan == (np.isnan(b) if b.dtype.kind == "f" else nan)).all(), where
        assert a[~nan].tobytes() == b[~nan].tobytes(), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _same_value(a[key], b[key], f"{where}[{key}]")
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_value(x, y, f"{where}[{i}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _same_value(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    else:
        assert repr(a) == repr(b), where


@settings(max_examples=budget(0.1), deadline=None)
@given(group=case_groups(max_size=6))
def test_each_cases_part_of_a_stacked_evaluation_is_its_own_evaluation_bit_for_bit(group: list[Case]) -> None:
    stacked = stack(group)
    ev = evaluate(stacked, "reference", sizes=tuple(c.channels for c in group))
    for i, case in enumerate(group):
        own, alone = part(ev, group, i), evaluate(case, "reference")
        for name in ("statistics", "mean_abs", "partial_sum_factors", "fresh", "expected", "bound", "sharp"):
            _same_value(getattr(own, name), getattr(alone, name), f"{name} of {case.describe()}")
        for name in ("exactness", "undetermined", "dtypes"):
            _same_value(getattr(own, name), getattr(alone, name), f"{name} of {case.describe()}")
        for model in ("deterministic", "probabilistic"):
            _same_value(own.propagated(model), alone.propagated(model), f"{model} of {case.describe()}")


def test_parts_refuses_cases_that_are_not_the_stacked_ones() -> None:
    case = one_channel_case([1.0, 2.0, 4.0])
    ev = evaluate(stack([case, case]), "reference", sizes=(case.channels, case.channels))
    with pytest.raises(ValueError, match="sizes"):
        part(ev, [case], 0)

"""Stacking same-signature cases along the channel axis changes nothing MXNet computes."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnprops.judging.checks import check, check_group
from bnprops.judging.comparator import compare
from bnprops.model.case import Case
from bnprops.model.oracle import reference
from bnprops.mx.batching import split, stack
from bnprops.mx.runners import run_symbolic
from bnprops.search.strategies import case_groups, cases
from tests.helpers import one_channel_case
from tests.planted import FAULTS, numpy_batchnorm


def float64_params(case: Case) -> dict[str, np.ndarray]:
    """The parameters (and pre-filled gradients) as float64, so the comparison runs under float64 bounds."""
    names = ("gamma", "beta", "moving_mean", "moving_var", "prior_dx", "prior_dgamma", "prior_dbeta")
    return {name: getattr(case, name).astype(np.float64) for name in names if getattr(case, name) is not None}


def siblings(case: Case, count: int, seed: int) -> list[Case]:
    """``case`` and count - 1 cases of the same signature with other values."""
    rng = np.random.default_rng(seed)
    others = [
        case.with_(
            x=(case.x.astype(np.float64) * rng.uniform(0.5, 2) + rng.normal()).astype(case.dtype),
            dy=rng.permutation(case.dy.ravel()).reshape(case.dy.shape),
            gamma=rng.permutation(case.gamma),
        )
        for _ in range(count - 1)
    ]
    return [case, *others]


@settings(max_examples=120, deadline=None)
@given(case=cases(), count=st.integers(2, 6), seed=st.integers(0, 2**32 - 1))
def test_a_stacked_call_gives_each_case_mxnets_own_results_bit_for_bit(case: Case, count: int, seed: int) -> None:
    group = siblings(case, count, seed)
    stacked = stack(group)
    for one, part in zip(group, split(stacked, run_symbolic(stacked), [c.channels for c in group]), strict=True):
        alone = run_symbolic(one)
        for q, value in part.items():
            assert value.tobytes() == alone[q].tobytes(), f"{q} differs for {one.describe()} stacked {count}-fold"


@settings(max_examples=60, deadline=None)
@given(case=cases(), count=st.integers(2, 4), seed=st.integers(0, 2**32 - 1))
def test_the_oracle_of_a_stacked_case_is_the_stack_of_the_oracles(case: Case, count: int, seed: int) -> None:
    # numpy's float64 sums round differently for other layouts: equal to the last few ulps only.
    group = siblings(case, count, seed)
    stacked = stack(group)
    for one, part in zip(group, split(stacked, reference(stacked), [c.channels for c in group]), strict=True):
        verdict = compare(
            one.with_(x=one.x.astype(np.float64), dy=one.dy.astype(np.float64), **float64_params(one)), part
        )
        assert verdict.ok, verdict.message(label="the stacked oracle")


def test_cases_that_differ_in_a_parameter_do_not_stack() -> None:
    with pytest.raises(ValueError, match="differ in eps"):
        stack([one_channel_case([1.0, 2.0]), one_channel_case([1.0, 2.0], eps=0.5)])


def test_cases_that_differ_in_shape_do_not_stack() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        stack([one_channel_case([1.0, 2.0]), one_channel_case([1.0, 2.0, 3.0])])


def test_split_refuses_sizes_that_do_not_add_up() -> None:
    case = one_channel_case([1.0, 2.0])
    with pytest.raises(ValueError, match="add up"):
        split(case, reference(case), [2])


@settings(max_examples=80, deadline=None)
# stats_over_all_axes mixes channels, so stacking changes what that faulty subject computes.
@given(group=case_groups(max_size=5), fault=st.sampled_from(sorted(set(FAULTS) - {"stats_over_all_axes"})))
def test_judging_a_stacked_group_agrees_with_judging_each_case(group: list[Case], fault: str) -> None:
    runner = functools.partial(numpy_batchnorm, fault=fault)
    together = check_group(group, runner=runner, entry="subject", backend="subject")
    alone = [check(case, runner=runner, entry="subject", kernel="subject", backend="subject") for case in group]
    assert [o.ok for o in together] == [o.ok for o in alone]
    assert [sorted(m.quantity for m in o.unexpected) for o in together] == [
        sorted(m.quantity for m in o.unexpected) for o in alone
    ]

"""The properties: MXNet's BatchNorm, through the symbolic executor, matches the oracle.

Each example of the five per-quantity properties is a group of up to GROUP same-signature cases
(bnprops.search.strategies.case_groups: the drawn case and siblings with other values) judged case by case from one
stacked MXNet call (bnprops.mx.batching): a call's cost is mostly per call, so a group judges many cases for about
the price of one. The group shrinks to its first case, which shrinks as cases() does.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from bnprops.judging.checks import PROPERTIES, assert_group_matches_oracle, assert_matches_oracle
from bnprops.model.case import QUANTITIES, Case
from bnprops.mx.runners import IN_PROCESS_BACKEND, run_symbolic
from bnprops.search.strategies import case_groups, cases
from tests.helpers import budget

pytestmark = pytest.mark.property

#: Cases per example of the per-quantity properties: one stacked call judges up to this many.
GROUP = 32


@pytest.fixture(autouse=True)
def _chosen(request: pytest.FixtureRequest) -> None:
    # These run sym in this process: honour --bn-entry and --bn-backend.
    config = request.config
    if "sym" not in config.bn_entries or IN_PROCESS_BACKEND not in config.bn_backends:  # type: ignore[attr-defined]
        pytest.skip(f"--bn-entry/--bn-backend leave out sym on {IN_PROCESS_BACKEND}")


def check_symbolic(group: list[Case], prop: str) -> None:
    assert_group_matches_oracle(group, runner=run_symbolic, entry="sym", quantities=PROPERTIES[prop])


@given(group=case_groups(max_size=GROUP))
def test_parameter_gradients_match_the_oracle(group: list[Case]) -> None:
    check_symbolic(group, "parameter_gradients")


@given(group=case_groups(max_size=GROUP))
def test_data_gradient_matches_the_oracle(group: list[Case]) -> None:
    check_symbolic(group, "data_gradient")


@given(group=case_groups(max_size=GROUP))
def test_forward_output_matches_the_oracle(group: list[Case]) -> None:
    check_symbolic(group, "forward_output")


@given(group=case_groups(max_size=GROUP))
def test_moving_statistics_match_the_oracle(group: list[Case]) -> None:
    check_symbolic(group, "moving_statistics")


@given(group=case_groups(max_size=GROUP))
def test_fix_gamma_side_effect_matches_the_oracle(group: list[Case]) -> None:
    check_symbolic(group, "gamma_side_effect")


@given(group=case_groups())
def test_stacked_cases_match_the_oracle_case_by_case(group: list[Case]) -> None:
    # Up to 16 same-signature cases in one MXNet call: many more cases per second (see bench.py).
    assert_group_matches_oracle(group, runner=run_symbolic, entry="sym")


@settings(max_examples=budget(0.25))
@given(case=cases(sizes="large"))
def test_reductions_the_size_of_real_layers_match_the_oracle(case: Case) -> None:
    # 10^3 to 10^6 elements per channel, where loose bounds would hide a 0.5% error (100 cases in ci).
    assert_matches_oracle(case, runner=run_symbolic, entry="sym", quantities=QUANTITIES)


@settings(max_examples=budget(0.25))
@given(case=cases(value_regimes=["exact"], sizes="all"))
def test_exact_data_matches_the_oracle_to_a_few_ulps(case: Case) -> None:
    # Every sum exact and var + eps a power of 4: the bounds shrink to a few ulps at any size.
    assert_matches_oracle(case, runner=run_symbolic, entry="sym", quantities=QUANTITIES)

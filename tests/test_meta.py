"""Every property catches a planted fault, and passes a correct float implementation.

The subject (tests/planted.py) goes through exactly the check the properties use; a property that
cannot tell a faulty BatchNorm from a right one is a defect.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import find as hypothesis_find
from hypothesis import given, settings
from hypothesis.strategies import SearchStrategy

from bnprops.judging.checks import PROPERTIES, check
from bnprops.model.case import Case
from bnprops.search.strategies import cases
from tests.helpers import planted_search
from tests.planted import FAULTS, numpy_batchnorm

#: For each property, the faults it must catch (every fault is caught by some property).
CATCHES = {
    "parameter_gradients": [
        "dgamma_not_zeroed",
        "dgamma_off_by_half_percent",
        "dbeta_off_by_half_percent",
        "dgamma_off_by_half_percent_at_large_m",
        "dbeta_off_by_half_percent_at_large_m",
        "eps_dropped",
        "unbiased_variance",
        "global_stats_ignored",
    ],
    "data_gradient": [
        "add_overwrites",
        "unbiased_variance",
        "eps_dropped",
        "stats_over_all_axes",
        "dx_off_by_half_percent",
        "dx_off_by_half_percent_at_large_m",
        "global_stats_ignored",
    ],
    "forward_output": [
        "eps_dropped",
        "unbiased_variance",
        "stats_over_all_axes",
        "beta_dropped",
        "global_stats_ignored",
        "invstd_is_variance",
        "y_off_by_half_percent_at_large_m",
        "y_off_by_256_ulps_on_exact_data",
    ],
    "moving_statistics": ["momentum_swapped", "unbiased_variance", "stats_over_all_axes"],
    "gamma_side_effect": ["gamma_not_written"],
    "moving_statistics_timing": ["moving_updated_in_forward"],
}
PAIRS = [(prop, fault) for prop, faults in CATCHES.items() for fault in faults]

search = planted_search(400)


def where_it_shows(fault: str) -> SearchStrategy[Case]:
    """The strategy the property runs with, at the sizes or on the data the fault needs."""
    if fault.endswith("_at_large_m"):
        return cases(sizes="large")
    if fault.endswith("_on_exact_data"):
        return cases(value_regimes=["exact"])
    return cases()


def judged_by(prop: str, fault: str | None):  # type: ignore[no-untyped-def]
    runner = functools.partial(numpy_batchnorm, fault=fault)
    return lambda case: check(case, runner=runner, entry="subject", kernel="subject", quantities=PROPERTIES[prop])


def test_every_fault_is_caught_by_some_property() -> None:
    assert {fault for _, fault in PAIRS} == set(FAULTS)
    assert set(CATCHES) == set(PROPERTIES)


@pytest.mark.parametrize(("prop", "fault"), PAIRS, ids=[f"{p}-catches-{f}" for p, f in PAIRS])
def test_property_catches_planted_fault(prop: str, fault: str) -> None:
    judge = judged_by(prop, fault)
    found = hypothesis_find(where_it_shows(fault), lambda case: not judge(case).ok, settings=search)
    outcome = judge(found)
    assert outcome.unexpected, f"{prop} flagged {found.describe()} only through a known deviation"


@pytest.mark.parametrize("prop", sorted(PROPERTIES))
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(case=cases())
def test_property_passes_a_correct_float_implementation(prop: str, case: Case) -> None:
    outcome = judged_by(prop, None)(case)
    assert outcome.ok, outcome.message()


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(case=cases(sizes="large") | cases(value_regimes=["exact"], sizes="all"))
def test_a_correct_float_implementation_passes_at_real_sizes_and_on_exact_data(case: Case) -> None:
    outcome = check(case, runner=numpy_batchnorm, entry="subject", kernel="subject")
    assert outcome.ok, outcome.message()

"""int8 BatchNorm (quantize_net, oneDNN only) matches the clipped inference oracle within the int8 bound.

The bound (input and output quantization steps, the float scale-shift) is searched with correct numpy
emulations of the int8 kernel; a planted 5% error in y must be caught (0.5% is below int8's resolution of
1/127); the two int8 deviations show on their reproducers.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from bnprops.judging.deviations.int8_batchnorm import INT8_EPS_APPLIED_TWICE, INT8_IGNORES_FIX_GAMMA
from bnprops.judging.int8 import Int8Evaluation, check_int8
from bnprops.model.case import Case
from bnprops.mx import int8
from bnprops.search.rewrites import cases_for_int8
from tests.emulated_int8 import VARIANTS, emulated_int8
from tests.helpers import budget

QUICK = settings(max_examples=budget(0.03), deadline=None, suppress_health_check=list(HealthCheck), database=None)
SEARCH = settings(
    max_examples=budget(0.5), deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
DEVIATIONS = (INT8_EPS_APPLIED_TWICE, INT8_IGNORES_FIX_GAMMA)


def _available() -> None:
    reason = int8.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.property
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("entry", sorted(int8.RUNNERS))
@QUICK
@given(case=cases_for_int8())
def test_the_int8_batchnorm_matches_the_clipped_oracle_or_its_recorded_deviations(entry: str, case: Case) -> None:
    _available()
    judged = check_int8(case, runner=int8.RUNNERS[entry], entry=entry)
    assert judged.ok, judged.message()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("entry", sorted(int8.RUNNERS))
@pytest.mark.parametrize("kd", DEVIATIONS, ids=[kd.id for kd in DEVIATIONS])
def test_each_int8_deviation_shows_on_its_reproducer_and_is_explained(entry: str, kd: object) -> None:
    _available()
    case = kd.reproducer()  # type: ignore[attr-defined]
    judged = check_int8(case, runner=int8.RUNNERS[entry], entry=entry)
    assert judged.ok, judged.message()
    assert kd.id in {d.id for d, _ in judged.outcome.explained}  # type: ignore[attr-defined]


def test_a_five_percent_error_in_the_int8_output_is_caught() -> None:
    """int8 rounds y to 1/127 of its range (0.8%): no sound bound can see 0.5%, so the fault is 5%."""
    runner = functools.partial(emulated_int8, fault="y_off_by_five_percent")

    def caught(case: Case) -> bool:
        return not check_int8(case, runner=runner, entry="subject", kernel="subject").ok

    found = hypothesis_find(cases_for_int8(fix_gamma=False, eps=st.just(0.0)), caught, settings=SEARCH)
    assert not check_int8(found, runner=runner, entry="subject", kernel="subject").ok


@settings(max_examples=budget(0.1), deadline=None, derandomize=True, database=None)
@given(case=cases_for_int8())
def test_a_correct_int8_subject_passes(case: Case) -> None:
    judged = check_int8(case, runner=emulated_int8, entry="subject", kernel="subject")
    assert judged.ok, judged.message()


@settings(max_examples=budget(1.0), deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=cases_for_int8(sizes="all"), variant=st.sampled_from(VARIANTS))
def test_no_correct_int8_kernel_crosses_the_int8_bound(case: Case, variant: str) -> None:
    y = emulated_int8(case, variant=variant)["y"].astype(np.float64)
    ev = Int8Evaluation(case)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.abs(y - ev.expected["y"]) / ev.bound["y"]
    worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    target(worst)
    assert worst <= 1, f"{variant}: error/bound {worst:.3g} for {case.describe()}"


@pytest.mark.filterwarnings("ignore")
def test_the_int8_reproducer_makes_the_runners_call() -> None:
    _available()
    case = INT8_EPS_APPLIED_TWICE.reproducer()
    scope: dict[str, object] = {}
    exec(int8.snippet(case, "int8-gluon"), scope)
    actual = scope["actual"]
    assert isinstance(actual, dict)
    np.testing.assert_array_equal(actual["y"], int8.RUNNERS["int8-gluon"](case)["y"])

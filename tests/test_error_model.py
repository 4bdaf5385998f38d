"""The error model: bounds wide enough for correct float arithmetic, narrow enough to catch 0.5%."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bnprops.judging.checks import check
from bnprops.model.case import WRITE_ALL, Case
from bnprops.model.error_model import unit_roundoff
from bnprops.model.evaluation import evaluate
from bnprops.model.oracle import per_channel, reference, statistics
from bnprops.search.strategies import cases
from tests.helpers import one_channel_case
from tests.planted import numpy_batchnorm

sample = settings(
    max_examples=300,
    database=None,
    derandomize=True,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def detection_rate(*, fault: str, quantity: str, dtype: str) -> float:
    """The share of ordinary cases (M > 1, random heads, learnable gamma) where the fault is flagged."""
    runner = functools.partial(numpy_batchnorm, fault=fault)
    seen: list[bool] = []

    @sample
    @given(
        case=cases(
            dtypes=[dtype],
            value_regimes=["ordinary"],
            head_regimes=["random"],
            fix_gamma=False,
            grad_req=st.just(WRITE_ALL),  # a gradient that is not asked for cannot be wrong
        ).filter(lambda c: c.reduction_length > 1)
    )
    def run(case: Case) -> None:
        outcome = check(case, runner=runner, entry="subject", kernel="subject", quantities=(quantity,))
        seen.append(not outcome.ok)

    run()
    return sum(seen) / len(seen)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("fault", "quantity"),
    [
        ("dgamma_off_by_half_percent", "dgamma"),
        ("dbeta_off_by_half_percent", "dbeta"),
        ("dx_off_by_half_percent", "dx"),
    ],
)
def test_a_half_percent_error_is_caught_on_ordinary_data(fault: str, quantity: str, dtype: str) -> None:
    # Measured 0.99 to 1.0; the misses are cases whose quantity nearly cancels (sum(dy * xhat) ~ 0).
    rate = detection_rate(fault=fault, quantity=quantity, dtype=dtype)
    assert rate >= 0.95, f"a 0.5% error in {quantity} was caught in only {rate:.0%} of ordinary {dtype} cases"


def test_unit_roundoffs_are_half_an_ulp_of_one() -> None:
    assert unit_roundoff("float16") == 2.0**-11
    assert unit_roundoff("float32") == 2.0**-24
    assert unit_roundoff("float64") == 2.0**-53


@sample
@given(case=cases())
def test_quantities_a_correct_kernel_gets_exactly_have_zero_bounds(case: Case) -> None:
    tol = evaluate(case).bound
    assert np.all(tol["gamma"] == 0)
    if case.fix_gamma and case.request("gamma") == "write":
        assert np.all(tol["dgamma"] == 0)
    if not case.uses_batch_stats:
        assert np.all(tol["moving_mean"] == 0) and np.all(tol["moving_var"] == 0)


@sample
@given(
    case=cases(dtypes=["float32", "float64"], value_regimes=["ordinary", "offset", "large"]).filter(
        lambda c: c.reduction_length > 1
    )
)
def test_data_with_spread_is_never_indeterminate(case: Case) -> None:
    # (float16 data with an offset of 300 spreads may be: a float16 ulp there is a tenth of the spread.)
    assert not evaluate(case).undetermined.any()


def test_a_constant_channel_with_eps_zero_is_indeterminate() -> None:
    assert evaluate(one_channel_case([2.0, 2.0, 2.0], eps=0.0)).undetermined.all()
    # One value per channel is exact: its variance is 0 in any arithmetic.
    assert not evaluate(one_channel_case([2.0], eps=1e-30)).undetermined.any()


def test_float16_bounds_are_wider_than_float32_bounds_for_the_same_values() -> None:
    wide = one_channel_case([0.5, -1.0, 2.0, 3.5], dtype="float16")
    narrow = one_channel_case([0.5, -1.0, 2.0, 3.5], dtype="float32")
    # (not dbeta: four float16 head gradients add up exactly in float32, and the model knows it)
    for q in ("y", "dx", "dgamma"):
        assert np.all(evaluate(wide).bound[q] > evaluate(narrow).bound[q])


def largest_terms(case: Case) -> dict[str, np.ndarray]:
    """Per element, the largest term that forms each of y, dx, dgamma and dbeta (for dx:
    |g invstd| (|dy| + |dbeta|/M + |xhat dgamma|/M)), or the result where it is larger (a sum's
    result is rounded into its output dtype once more), from the oracle's values."""
    ref = reference(case)
    mean, var = statistics(case)
    inv = 1 / np.sqrt(var + case.eps)
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    xhat = (x - per_channel(case, mean)) * per_channel(case, inv)
    m = case.reduction_length
    dgamma = (dy * xhat).sum(axis=case.reduce_axes)
    return {
        "y": np.maximum(np.abs(per_channel(case, g) * xhat), np.abs(per_channel(case, case.beta.astype(np.float64)))),
        "dx": np.abs(per_channel(case, g * inv))
        * (np.abs(dy) + per_channel(case, np.abs(ref["dbeta"]) / m) + np.abs(xhat * per_channel(case, dgamma / m))),
        "dgamma": np.maximum(np.abs(dy * xhat).max(axis=case.reduce_axes), np.abs(dgamma)),
        "dbeta": np.maximum(np.abs(dy).max(axis=case.reduce_axes), np.abs(ref["dbeta"])),
    }


@settings(max_examples=60, database=None, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=cases(dtypes=["float32"], value_regimes=["exact"], sizes="all", grad_req=st.just(WRITE_ALL)))
def test_on_exact_data_float32_bounds_stay_within_16_ulps_of_the_largest_term(case: Case) -> None:
    ulp = 2 * unit_roundoff("float32")
    tol = evaluate(case).bound
    for q, term in largest_terms(case).items():
        if q == "dgamma" and case.fix_gamma:
            continue
        # (plus a few float32 subnormal steps, the absolute rounding of results near 0)
        assert np.all(tol[q] <= 16 * ulp * term + 1e-42), f"{q}: bound {tol[q].max():.3g}, {case.describe()}"

"""The oracle earns its place as ground truth: finite differences, identities, the forum's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bnprops.model.case import WRITE_ALL, Case
from bnprops.model.oracle import reference
from bnprops.search.strategies import cases
from tests.helpers import one_channel_case

# The forum thread (../shared/seed/): one feature, two samples, LinearRegressionOutput as the head.
FORUM_X = [0.18527887, -1.23678724]
FORUM_T = np.array([2.57767984, -1.55019435])

# Training calls that write their gradients: what the closed forms below describe.
float64_cases = cases(
    dtypes=["float64"],
    value_regimes=["ordinary", "offset"],
    max_elements=60,
    is_train=True,
    grad_req=st.just(WRITE_ALL),
)


def forward_loss(case: Case, **changes: object) -> float:
    """L = sum(dy * y): its gradient with respect to x, gamma and beta is the backward pass."""
    changed = case.with_(**changes)
    return float((reference(changed)["y"] * case.dy.astype(np.float64)).sum())


def central_difference(case: Case, name: str, index: tuple[int, ...], step: float) -> float:
    values = getattr(case, name).astype(np.float64)
    up, down = values.copy(), values.copy()
    up[index] += step
    down[index] -= step
    return (forward_loss(case, **{name: up}) - forward_loss(case, **{name: down})) / (2 * step)


def forum_case(*, fix_gamma: bool, eps: float = 1e-3) -> tuple[Case, np.ndarray]:
    """The thread's call as simple_bind leaves it: gamma, beta and the moving statistics all zero."""
    x = np.asarray(FORUM_X, dtype=np.float32).reshape(2, 1)
    zeros = np.zeros(1, np.float32)
    case = Case(
        x=x,
        dy=np.zeros_like(x),
        gamma=zeros,
        beta=zeros,
        moving_mean=zeros,
        moving_var=zeros,
        fix_gamma=fix_gamma,
        eps=eps,
    )
    # LinearRegressionOutput's gradient is output - label.
    dy = (reference(case)["y"] - FORUM_T.astype(np.float32).reshape(2, 1)).astype(np.float32)
    return case.with_(dy=dy), dy


def roundoff_allowance(case: Case, step: float) -> float:
    """What rounding in L contributes to a central difference: a few ulps of L's terms over the step.

    y's rounding scales with |g| (|x| + |mean|) / sqrt(var + eps) + |beta| (x - mean cancels), not |y|.
    """
    x = np.abs(case.x.astype(np.float64))
    g = 1.0 if case.fix_gamma else float(np.abs(case.gamma).max())
    s = float(np.sqrt(case.x.astype(np.float64).var(axis=case.reduce_axes).min() + case.eps))
    term = g * 2 * float(x.max()) / s + float(np.abs(case.beta).max())
    magnitude = float(np.abs(case.dy.astype(np.float64)).sum()) * term + 1.0
    return 64 * float(np.finfo(np.float64).eps) * magnitude / step


def assert_close_to_difference(*, analytic: float, difference: float, allowance: float, what: str) -> None:
    tolerance = 1e-6 * abs(analytic) + allowance
    assert abs(analytic - difference) <= tolerance, (
        f"{what}: oracle {analytic!r}, central difference {difference!r}, |diff| {abs(analytic - difference):.3g} "
        f"> tolerance {tolerance:.3g}"
    )


@settings(max_examples=60, deadline=None)
@given(case=float64_cases.filter(lambda c: c.reduction_length > 1), data=st.data())
def test_oracle_gradients_agree_with_central_differences(case: Case, data: st.DataObject) -> None:
    expected = reference(case)
    x_index = tuple(data.draw(st.integers(0, n - 1), label=f"x index {i}") for i, n in enumerate(case.shape))
    c = data.draw(st.integers(0, case.channels - 1), label="channel")
    # The step follows the spread of x_index's own channel: that sets the curvature of L.
    spread = case.x.astype(np.float64).var(axis=case.reduce_axes)[x_index[case.channel_axis]]
    h_x = 1e-6 * float(np.sqrt(spread + case.eps))
    assert_close_to_difference(
        analytic=float(expected["dx"][x_index]),
        difference=central_difference(case, "x", x_index, h_x),
        allowance=roundoff_allowance(case, h_x) + 1e-6 * float(np.abs(expected["dx"]).max()),
        what=f"dx{x_index}",
    )
    assert_close_to_difference(
        analytic=float(expected["dbeta"][c]),
        difference=central_difference(case, "beta", (c,), 1e-6),
        allowance=roundoff_allowance(case, 1e-6),
        what=f"dbeta[{c}]",
    )
    fd_dgamma = central_difference(case, "gamma", (c,), 1e-6)
    if case.fix_gamma:
        # gamma does not enter the output at all, so its gradient is exactly 0.
        assert fd_dgamma == 0 and expected["dgamma"][c] == 0
    else:
        assert_close_to_difference(
            analytic=float(expected["dgamma"][c]),
            difference=fd_dgamma,
            allowance=roundoff_allowance(case, 1e-6),
            what=f"dgamma[{c}]",
        )


@settings(max_examples=60, deadline=None)
@given(case=float64_cases)
def test_training_data_gradient_sums_to_zero_and_projects_onto_xhat_as_eps_dictates(case: Case) -> None:
    # sum(dx) = 0 and sum(dx * xhat) = g invstd sum(dy xhat) eps / (var + eps): orthogonal when eps = 0.
    case = case.with_(use_global_stats=False)
    out = reference(case)
    red = case.reduce_axes
    x = case.x.astype(np.float64)
    var = x.var(axis=red)
    assume(np.all(var + case.eps > 0))  # 0/0 has no identities
    shape = [1] * x.ndim
    shape[case.channel_axis] = case.channels
    xhat = (x - x.mean(axis=red, keepdims=True)) / np.sqrt(var + case.eps).reshape(shape)
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    dy = case.dy.astype(np.float64)
    # The magnitude of the terms dx is made of, times (1 + |xhat|) for the projection.
    m = case.reduction_length
    inner = np.abs(dy) + np.abs(dy).sum(axis=red, keepdims=True) / m
    inner = inner + np.abs(xhat) * (np.abs(dy * xhat)).sum(axis=red, keepdims=True) / m
    # x - mean rounds relative to |x|, not to the spread: offset data carries max|x| / sqrt(var + eps).
    offset = 1 + np.abs(x).max(axis=red) / np.sqrt(var + case.eps)
    scale = ((np.abs(g) / np.sqrt(var + case.eps)).reshape(shape) * inner * (1 + np.abs(xhat))).sum(axis=red)
    scale = scale * offset + 1e-300
    np.testing.assert_array_less(np.abs(out["dx"].sum(axis=red)), 1e-12 * scale + 1e-300)
    projected = g / np.sqrt(var + case.eps) * (dy * xhat).sum(axis=red) * case.eps / (var + case.eps)
    np.testing.assert_array_less(np.abs((out["dx"] * xhat).sum(axis=red) - projected), 1e-11 * scale + 1e-300)


def test_data_gradient_is_orthogonal_to_xhat_when_eps_is_zero() -> None:
    case = one_channel_case([0.5, -1.0, 2.0, 3.5, -0.25], eps=0.0)
    out = reference(case)
    x = case.x.astype(np.float64)
    xhat = (x - x.mean()) / x.std()
    assert abs(float((out["dx"] * xhat).sum())) < 1e-13


@settings(max_examples=40, deadline=None)
@given(case=float64_cases)
def test_dgamma_is_exactly_zero_and_gamma_reads_one_under_fix_gamma(case: Case) -> None:
    out = reference(case.with_(fix_gamma=True))
    assert np.all(out["dgamma"] == 0)
    assert np.all(out["gamma"] == 1)


@settings(max_examples=40, deadline=None)
@given(case=float64_cases)
def test_global_statistics_make_dx_a_pure_scaling_of_dy(case: Case) -> None:
    case = case.with_(use_global_stats=True)
    out = reference(case)
    g = np.ones(case.channels) if case.fix_gamma else case.gamma
    view = [1] * case.x.ndim
    view[case.channel_axis] = case.channels
    scale = (g / np.sqrt(case.moving_var + case.eps)).reshape(view)
    np.testing.assert_allclose(out["dx"], scale * case.dy, rtol=1e-14, atol=0)
    assert np.array_equal(out["moving_mean"], case.moving_mean) and np.array_equal(out["moving_var"], case.moving_var)


def test_oracle_reproduces_the_forum_numbers_with_the_operator_defaults() -> None:
    case, _ = forum_case(fix_gamma=True)
    out = reference(case)
    assert out["dbeta"][0] == pytest.approx(-1.0274856, rel=1e-6)
    assert out["dgamma"][0] == 0


def test_oracle_reproduces_the_forum_numbers_with_a_learnable_gamma() -> None:
    case, _ = forum_case(fix_gamma=False)
    out = reference(case)
    assert out["dbeta"][0] == pytest.approx(-1.0274855, rel=1e-6)
    assert out["dgamma"][0] == pytest.approx(-4.1237984, rel=1e-6)


def test_the_forum_users_eps_explains_the_first_manual_answer() -> None:
    # The user's hand computation used eps=1e-5 with gamma learnable and initialised to 1.
    case, _ = forum_case(fix_gamma=True, eps=1e-5)
    x = case.x.astype(np.float64)
    xn = (x - x.mean()) / np.sqrt(x.var() + 1e-5)
    manual_dgamma = float(((xn - FORUM_T.reshape(2, 1)) * xn).sum())
    assert manual_dgamma == pytest.approx(-2.127873, rel=1e-5)


def test_one_value_per_channel_normalises_to_beta_with_no_data_gradient() -> None:
    out = reference(one_channel_case([3.0], eps=1e-3))
    assert out["y"][0, 0] == 0.25 and out["dx"][0, 0] == 0

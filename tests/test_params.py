"""MXNet reads float parameters with dmlc-core's ParseFloat, which bnprops models bit for bit."""

from __future__ import annotations

import mxnet as mx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bnprops.judging.checks import check
from bnprops.model.params import parsed
from bnprops.mx.runners import run_symbolic
from tests.helpers import one_channel_case


def test_a_float32_momentum_can_be_read_one_ulp_above_itself() -> None:
    # The false alarm this model removed: moving_var 3.99e-18 away from an oracle that rounded correctly.
    momentum = 4.740775480516213e-11
    assert float(np.float32(momentum)) == momentum
    assert np.float32(parsed(momentum, "float32")).view(np.uint32) == np.float32(momentum).view(np.uint32) + 1


def test_the_former_moving_var_false_alarm_now_passes() -> None:
    case = one_channel_case(
        [0.6508470327725044],
        gamma=np.array([0.10490011715303971]),
        beta=np.array([-0.535669373161111]),
        moving_mean=np.array([0.36159505490948474]),
        moving_var=np.array([1.2132715515343597]),
        dy=[1.0],
        eps=1e-3,
        momentum=4.740775480516213e-11,
    )
    outcome = check(case, runner=run_symbolic, entry="sym")
    assert outcome.ok, outcome.message()


@settings(max_examples=40, deadline=None)
@given(
    momentum=st.floats(0, 1, width=32, allow_subnormal=False),
    eps=st.floats(-12, 2).map(lambda e: float(10**e)),
)
def test_mxnet_applies_momentum_and_eps_as_parsed(momentum: float, eps: float) -> None:
    # One value per channel: the moving mean becomes momentum * 1 + (1 - momentum) * 0, and invstd 1/sqrt(eps).
    x = mx.nd.zeros((2, 1), dtype="float64")
    mm, mv = mx.nd.ones(1, dtype="float64"), mx.nd.zeros(1, dtype="float64")
    x.attach_grad()
    with mx.autograd.record():
        y, _, invstd = mx.nd.BatchNorm(
            x, mx.nd.ones(1, dtype="float64"), mx.nd.zeros(1, dtype="float64"), mm, mv,
            eps=eps, momentum=momentum, fix_gamma=False, output_mean_var=True,
        )  # fmt: skip
    y.backward(mx.nd.ones_like(y))
    m = parsed(momentum, "float32")
    assert mm.asnumpy()[0] == m * 1.0 + (1.0 - m) * 0.0
    assert invstd.asnumpy()[0] == 1.0 / np.sqrt(parsed(eps, "float64"))

"""A frozen BatchNorm never updates its moving statistics (apache/mxnet#18673)."""

from __future__ import annotations

from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, SequenceDeviation
from bnprops.mx import mxversion

FROZEN_LAYER_KEEPS_MOVING_STATS = SequenceDeviation(
    id="frozen-layer-keeps-moving-statistics",
    releases=mxversion.Releases(
        probed=PROBED_IN_EVERY_RELEASE.probed,
        basis="the moving statistics are updated in BatchNorm's backward (batch_norm.cc, DoBackward: 1.3.1 line "
        "241, the same in 1.9.1), which nothing runs when no input needs a gradient; probed by the sequence "
        "checks' replay of its shortest sequence (tests/test_training.py) in each release's environment",
    ),
    summary="A frozen BatchNorm (no gradient for data, gamma or beta) never updates its moving statistics in training",
    conditions="a training step (batch statistics, use_global_stats=False) of a layer whose data, gamma and beta all "
    "have grad_req 'null' (a first layer with frozen parameters; gluon BatchNorm(scale=False, center=False) on "
    "data that needs no gradient), under a learnable layer that makes the backward run; every entry point, both "
    "CPU kernels, every dtype",
    model="moving_mean and moving_var keep every bit of their values before the step (MXNet updates them in "
    "BatchNorm's backward, which autograd and the executor skip when no input of BatchNorm needs a gradient); "
    "y and the gradients of the layers around it are as the single-call oracle says",
    evidence="x float32 [[1, 2], [3, -1], [0.5, 0.25]], moving (0, 1), momentum 0.9, fix_gamma=False, every "
    "BatchNorm input 'null', the output multiplied by a learnable w = 1 and w's gradient taken: moving_mean stays "
    "[0, 0] and moving_var [1, 1] on nd, gluon and sym, oneDNN and native, float32 and float64 (the contract, "
    "one update per training step, gives [0.15, 0.0417] and [1.08, 0.946]); without the learnable layer nd and "
    "gluon raise 'There are no inputs in computation graph that require gradient' and the sym executor's "
    "backward does nothing. PyTorch updates running statistics in the forward, whatever requires_grad says, so "
    "a frozen layer there tracks its statistics. Found by the state machines of tests/test_training.py (issue 10).",
    sequence=("train_step",),  # on a layer frozen from the start (or after set_grad_req to 'null' three times)
    upstream="apache/mxnet#18673 (closed, label Bug: a BatchNorm-like layer with scale=False and center=False does "
    "not update its running statistics); 1.9.1 still shows it",
    shortest_on=("gluon", {"grad_req": ("null", "null", "null")}),
)

DEVIATIONS = (FROZEN_LAYER_KEEPS_MOVING_STATS,)

"""The native kernel's guard for eps = 0 and a zero-variance channel makes moving_var inf."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import (
    Context,
    Prediction,
    kernel_form,
    predict_over,
    zero_variance,
)


def native_zero_variance_eps0(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if ctx.kernel != "native" or not case.uses_batch_stats or case.eps != 0:
        return []
    zero = zero_variance(ctx) & ctx.finite_channels
    if not zero.any():
        return []  # (predict_over's answer too, without the kernel form)
    # The guard sets invstd = 0 where the kernel's own sum of squares is exactly 0: certain for one value
    # per channel; for more equal values their rounded mean may differ from them (then the oracle's value).
    values = kernel_form(ctx, np.zeros(case.channels))
    return predict_over(ctx, ["moving_var"], zero, values, certain=case.reduction_length == 1, breaks_invariants=True)


NATIVE_ZERO_VARIANCE_EPS0 = KnownDeviation(
    id="native-zero-variance-eps0",
    upstream=none_found(
        "searched apache/mxnet issues for 'BatchNorm eps=0 constant channel moving_var inf' (no report)"
    ),
    summary="Native kernel, eps=0 and a zero-variance channel: moving_var becomes inf",
    quantities=frozenset({"moving_var"}),
    conditions="native kernel (float16, float64, or float32 with MXNET_MKLDNN_ENABLED=0); batch statistics; "
    "eps == 0; a channel whose values are all equal (certain when M = 1)",
    model=(
        "moving_var = m old + (1 - m)(1/0^2 - 0) = inf (NaN for momentum 1) in each zero-variance channel: "
        "the kernel form (deviation_models.kernel_form) with the guard's invstd = 0"
    ),
    predict=native_zero_variance_eps0,
    evidence="batch_norm.cc guards `if (sum == 0 && param_.eps == 0.0) invstd = 0;` (y, dx and dgamma are 0/0 "
    "there, which bnprops does not judge); the backward then recovers the variance as 1/invstd^2 - eps = inf "
    "and writes an infinite moving_var although the batch variance is exactly 0 (its invstd output is 0, "
    "which bnprops does not judge either). oneDNN (float32) keeps moving_var finite.",
    reproducer=lambda: minimal([1.0], "float64", eps=0.0),
    releases=PROBED_IN_EVERY_RELEASE,
)

DEVIATIONS = (NATIVE_ZERO_VARIANCE_EPS0,)

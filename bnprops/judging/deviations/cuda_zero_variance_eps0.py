"""MXNet's CUDA kernel's guard for eps = 0 and a zero-variance channel makes moving_var inf, as the native one does."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import FROM_SOURCE, GPU_SOURCE_SCOPE, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import Context, Prediction, kernel_form, predict_over, zero_variance


def cuda_zero_variance_eps0(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if ctx.kernel != "cuda" or not case.uses_batch_stats or case.eps != 0:
        return []
    zero = zero_variance(ctx) & ctx.finite_channels
    # The guard sets invStd = 0 where the kernel's own varN is exactly 0: certain for one value per channel; for
    # more equal values their mean, a sum times the rounded 1/N, may differ from them (then the oracle's value).
    values = kernel_form(ctx, np.zeros(case.channels))
    return predict_over(ctx, ["moving_var"], zero, values, certain=case.reduction_length == 1, breaks_invariants=True)


CUDA_ZERO_VARIANCE_EPS0 = KnownDeviation(
    id="cuda-zero-variance-eps0",
    releases=GPU_SOURCE_SCOPE,
    summary=f"CUDA kernel (cudnn_off), eps=0 and a zero-variance channel: moving_var becomes inf ({FROM_SOURCE})",
    upstream=none_found(
        "issues for 'BatchNorm GPU eps=0 zero variance moving_var inf cudnn_off'; nearest apache/mxnet#14357 "
        "(GPU running_var differs from CPU's on zero data) and #18751"
    ),
    quantities=frozenset({"moving_var"}),
    conditions="cuda backend (a GPU with cudnn_off=True, or use_global_stats); batch statistics; eps == 0; a "
    "channel whose values are all equal (certain when M = 1)",
    model="moving_var = m old + (1 - m)(1/0^2 - 0) = inf (NaN for momentum 1) in each zero-variance channel: "
    "the kernel form (deviation_models.kernel_form) with the guard's invstd = 0",
    predict=cuda_zero_variance_eps0,
    evidence=f"{FROM_SOURCE}. batch_norm.cu (1.9.1) 272-275: `invStd = 0; if (varN != 0 || epsilon != 0) invStd = "
    "1 / sqrt(varN * norm + epsilon)`; the backward (357, 363) recovers the variance as 1/invstd^2 - eps = inf. "
    "The same guard as the native CPU kernel's (native-zero-variance-eps0).",
    reproducer=lambda: minimal([1.0], "float32", eps=0.0),
    needs_backend="cuda",
)

DEVIATIONS = (CUDA_ZERO_VARIANCE_EPS0,)

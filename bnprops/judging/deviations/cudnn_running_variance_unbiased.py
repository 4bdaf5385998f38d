"""cuDNN updates the moving variance with the unbiased batch variance, and does so in the forward."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import FROM_SOURCE, GPU_SOURCE_SCOPE, KnownDeviation, minimal
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.model.case import param_dtype
from bnprops.model.error_model import unit_roundoff
from bnprops.model.oracle import momentum_as_applied

#: Where cuDNN runs BatchNorm (batch_norm.cu 706, 734: use_global_stats and cudnn_off take MXNet's CUDA kernel).
KERNEL = "cudnn"
UPSTREAM = (
    "apache/mxnet#21111 (a cuDNN moving variance unbiased, cudnn_off biased, shown on a GPU), #18751 and #14357 "
    "(GPU moving statistics change in a forward alone)"
)


def cudnn_moving_statistics(ctx: Context) -> dict[str, np.ndarray]:
    """What cuDNN's forward writes into the moving statistics: m old + (1 - m) batch, the variance unbiased
    (M / (M - 1)), with their tolerance: the oracle's bounds of the moving statistics, the variance's scaled too,
    and one more float32 rounding."""
    case = ctx.case
    m = case.reduction_length
    mom, rest = momentum_as_applied(case)
    mean, var = ctx.statistics
    up = unit_roundoff(param_dtype(case.dtype))
    with ignoring("invalid", "over"):
        moving_mean = mom * case.moving_mean.astype(np.float64) + rest * mean
        moving_var = mom * case.moving_var.astype(np.float64) + rest * var * (m / (m - 1))
        return {
            "moving_mean": moving_mean,
            "moving_var": moving_var,
            "moving_mean_tolerance": ctx.bound["moving_mean"] + up * np.abs(moving_mean),
            "moving_var_tolerance": ctx.bound["moving_var"] * (m / (m - 1)) + up * np.abs(moving_var),
        }


def applies(ctx: Context) -> bool:
    # M = 1: the unbiased factor divides by 0; the source does not say what cuDNN writes then (not predicted).
    return ctx.kernel == KERNEL and ctx.case.uses_batch_stats and ctx.case.reduction_length >= 2


def cudnn_running_variance_unbiased(ctx: Context) -> list[Prediction]:
    if not applies(ctx):
        return []
    found = cudnn_moving_statistics(ctx)
    values = {"moving_var": found["moving_var"]}
    tolerance = {"moving_var": found["moving_var_tolerance"]}
    return predict_over(ctx, ["moving_var"], ctx.finite_channels, values, tolerance, certain=True)


def cudnn_forward_updates_moving_statistics(ctx: Context) -> list[Prediction]:
    if not applies(ctx):
        return []
    found = cudnn_moving_statistics(ctx)
    values = {"forward_moving_mean": found["moving_mean"], "forward_moving_var": found["moving_var"]}
    tolerance = {
        "forward_moving_mean": found["moving_mean_tolerance"],
        "forward_moving_var": found["moving_var_tolerance"],
    }
    quantities = ["forward_moving_mean", "forward_moving_var"]
    return predict_over(ctx, quantities, ctx.finite_channels, values, tolerance, certain=True)


CUDNN_RUNNING_VARIANCE_UNBIASED = KnownDeviation(
    id="cudnn-running-variance-unbiased",
    releases=GPU_SOURCE_SCOPE,
    summary=f"cuDNN: moving_var takes the unbiased batch variance, M/(M-1) times the CPU's ({FROM_SOURCE})",
    quantities=frozenset({"moving_var"}),
    conditions="cudnn backend (a GPU, cudnn_off=False, use_global_stats=False); training with batch statistics; "
    "M >= 2 elements per channel; finite data",
    model="moving_var = m old + (1 - m) var M / (M - 1), var the biased batch variance y is normalised with",
    predict=cudnn_running_variance_unbiased,
    evidence=f"{FROM_SOURCE}. cudnn_batch_norm-inl.h (1.9.1) 130-148 passes the moving variance to "
    "cudnnBatchNormalizationForwardTraining as resultRunningVariance with exponentialAverageFactor 1 - momentum; "
    "cuDNN's documentation gives that running variance with the unbiased (Bessel) factor, and a user's GPU run "
    "in apache/mxnet#21111 shows cudnn_off=False unbiased and cudnn_off=True (batch_norm.cu 357-364, "
    "INVSTD_TO_VARIANCE of the biased varN / N) biased.",
    reproducer=lambda: minimal([1.0, 2.0, 4.0], "float32", momentum=0.0),
    upstream=UPSTREAM,
    needs_backend=KERNEL,
)

CUDNN_FORWARD_UPDATES_MOVING_STATISTICS = KnownDeviation(
    id="cudnn-forward-updates-moving-statistics",
    releases=GPU_SOURCE_SCOPE,
    summary=f"cuDNN: the training forward already updates the moving statistics ({FROM_SOURCE})",
    quantities=frozenset({"forward_moving_mean", "forward_moving_var"}),
    conditions="cudnn backend; training with batch statistics; M >= 2; finite data",
    model="after the forward alone, moving_mean = m old + (1 - m) mean and moving_var = m old + (1 - m) var M / "
    "(M - 1) (the backward leaves them alone: their final values are the one update)",
    predict=cudnn_forward_updates_moving_statistics,
    evidence=f"{FROM_SOURCE}. cudnn_batch_norm-inl.h (1.9.1) 119-148: the forward calls "
    "cudnnBatchNormalizationForwardTraining with the moving statistics as resultRunningMean/Variance; its "
    "Backward (172-258) does not touch them. MXNet's CUDA kernel (cudnn_off) and the CPU kernels update them in "
    "the backward (batch_norm.cu 356-365). apache/mxnet#14357: 100 forwards on a GPU moved running_var to "
    "0.9^100 where the CPU's stayed 1.",
    reproducer=lambda: minimal([1.0, 2.0, 4.0], "float32", momentum=0.5),
    upstream=UPSTREAM,
    needs_backend=KERNEL,
)

DEVIATIONS = (CUDNN_RUNNING_VARIANCE_UNBIASED, CUDNN_FORWARD_UPDATES_MOVING_STATISTICS)

"""oneDNN flushes a subnormal eps to 0: NaN gradients for a zero-variance channel."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import PROBED_WITH_ONEDNN, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import (
    Context,
    Prediction,
    invstd_of,
    kernel_form,
    predict_over,
    zero_variance,
)


def onednn_subnormal_eps_flushed(ctx: Context) -> list[Prediction]:
    case = ctx.case
    tiny = float(np.finfo(np.float32).tiny)
    if ctx.kernel != "onednn" or not case.uses_batch_stats or not 0 < case.eps < tiny:
        return []
    # The backward's invstd is 1/sqrt(var + 0). Channels with several equal values are indeterminate
    # (their float32 variance need not be 0); what is left are exact zero variances, M = 1.
    hit = zero_variance(ctx) & ~ctx.undetermined & ctx.finite_channels
    values = kernel_form(ctx, invstd_of(ctx.statistics[1]))
    quantities = {"dx"} | (set() if case.fix_gamma else {"dgamma"})
    return predict_over(ctx, quantities, hit, values, certain=True, breaks_invariants=True)


ONEDNN_SUBNORMAL_EPS_FLUSHED = KnownDeviation(
    id="onednn-subnormal-eps-flushed",
    upstream=none_found(
        "searched apache/mxnet issues for 'mkldnn batchnorm denormal subnormal eps flush to zero nan' (no "
        "report); related: the denormals RFC apache/mxnet#19361 and the flush-denormals API "
        "apache/mxnet#20338 (1.9), which do not explain 1.7.0 showing it"
    ),
    summary="oneDNN float32: a subnormal eps is flushed to zero, so a zero-variance channel gets NaN gradients",
    quantities=frozenset({"dx", "dgamma"}),
    conditions="float32 through oneDNN; batch statistics; 0 < eps < 2^-126 (float32 subnormal); a channel with "
    "a single value (M = 1), whose variance is exactly 0",
    model=("the kernel form with the backward's invstd = 1/sqrt(var + 0) = inf: dx and dgamma NaN (M = 1)"),
    predict=onednn_subnormal_eps_flushed,
    evidence="x=[1.0] (M=1): eps=1e-39 and 1.4e-45 give dx=dgamma=NaN while y=beta; eps=1.2e-38 (normal) "
    "gives the finite oracle values; float64 with the same eps matches the oracle. The backward computes "
    "1/sqrt(0 + eps) with eps flushed to 0.",
    reproducer=lambda: minimal([1.0], "float32", eps=1e-39),
    releases=PROBED_WITH_ONEDNN,
    needs_backend="onednn",
)

DEVIATIONS = (ONEDNN_SUBNORMAL_EPS_FLUSHED,)

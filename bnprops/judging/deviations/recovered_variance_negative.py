"""The backward recovers the batch variance as 1/invstd^2 - eps, which can come out below 0."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over, recovery_reach
from bnprops.model.error_model import accumulation_dtype
from bnprops.model.oracle import momentum_as_applied


def recovered_variance_negative(ctx: Context) -> list[Prediction]:
    """Where ``m old + (1 - m)(1/invstd^2 - eps)`` can come out below 0: the batch variance is within the
    rounding of ``1/invstd^2 - eps`` of 0 and ``m old`` is no larger than that rounding. The value stays
    within the bound of the oracle's; only its sign is the deviation."""
    case = ctx.case
    if ctx.kernel not in ("native", "onednn") or not case.uses_batch_stats or not case.x.size:
        return []
    var = ctx.statistics[1]
    mom, rest = momentum_as_applied(case)
    tiny = float(np.finfo(accumulation_dtype(case.dtype)).smallest_subnormal)
    with ignoring("invalid", "over"):
        reach = recovery_reach(case, var)
        possible = (var < reach) & (mom * case.moving_var.astype(np.float64) <= rest * reach + tiny)
    channels = possible & ctx.finite_channels
    return predict_over(ctx, ["moving_var"], channels, ctx.expected, certain=False, breaks_invariants=True)


RECOVERED_VARIANCE_NEGATIVE = KnownDeviation(
    id="recovered-variance-negative",
    upstream=none_found(
        "searched apache/mxnet issues for 'BatchNorm moving_var negative running variance' (no report for the "
        "CPU kernels; apache/mxnet#21111 is cuDNN's variance)"
    ),
    summary="A zero-variance channel's moving variance can come out negative: the backward recovers the "
    "batch variance as 1/invstd^2 - eps, which rounds to a few ulps of eps either side of 0",
    quantities=frozenset({"moving_var"}),
    conditions="batch statistics; a channel whose variance is within the rounding of 1/invstd^2 - eps of 0 (a "
    "constant channel), and momentum * old moving_var no larger than that rounding; every dtype, entry "
    "point and CPU kernel; the value stays within its bound, only the invariant breaks",
    model=(
        "the oracle's moving_var within its deterministic bound, which may be below 0 in the channels it "
        "names: the invariant 'never negative' is what it breaks there, and only there"
    ),
    predict=recovered_variance_negative,
    evidence="Found by the moving-variance invariant (bnprops/judging/invariants.py) in pytest -m property: "
    "float64 "
    "x=[0.65...] (M=1), eps=1e-3, momentum=0: moving_var -2.168404344971009e-19 (= 1/(invstd*invstd) - 1e-3 "
    "in double); float32 and float16 with eps=1.4e-45: -1.401298464324817e-45. A channel that stays "
    "constant (a dead ReLU) drifts to such a value under any momentum. float16[7, 1], tiny spread, "
    "eps=3.1622776601683795, momentum 0: -1.68e-4 = half(eps) - eps. batch_norm.cc: "
    "INVSTD_TO_VARIANCE(invstd, eps) = 1.0/(invstd*invstd) - eps, no clamp at 0.",
    reproducer=lambda: minimal([0.6508470327725044], "float64", eps=1e-3, momentum=0.0),
    releases=PROBED_IN_EVERY_RELEASE,
)

DEVIATIONS = (RECOVERED_VARIANCE_NEGATIVE,)

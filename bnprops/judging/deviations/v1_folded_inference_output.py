"""BatchNorm_v1 without batch statistics computes y in a folded form that loses more than the bound allows."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.model.error_model import unit_roundoff
from bnprops.model.oracle import eps_as_applied, per_channel
from bnprops.mx import mxversion

#: Roundings in the folded form's longest chain (sqrt, divide, multiply, subtract, multiply-add) and a margin.
FOLDED_ROUNDINGS = 8


def folded_reach(ctx: Context) -> np.ndarray:
    """How far y = a x + (beta - a moving_mean), a = g / sqrt(moving_var + eps), may land in float32 from the
    oracle: FOLDED_ROUNDINGS roundings of the largest of its terms."""
    case = ctx.case
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    with ignoring("divide", "invalid", "over"):
        a = g / np.sqrt(case.moving_var.astype(np.float64) + eps_as_applied(case))
        terms = (
            np.abs(per_channel(case, a) * case.x.astype(np.float64))
            + per_channel(case, np.abs(a * case.moving_mean.astype(np.float64)))
            + per_channel(case, np.abs(case.beta.astype(np.float64)))
        )
    return np.asarray(FOLDED_ROUNDINGS * unit_roundoff("float32") * terms)


def v1_folded_inference_output(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.uses_batch_stats:
        return []
    everything = np.ones(case.channels, dtype=bool)
    with ignoring("invalid", "over"):
        tolerance = {"y": np.asarray(ctx.bound["y"]) + folded_reach(ctx)}
    return predict_over(ctx, ["y"], everything, ctx.expected, tolerance, certain=False)


V1_FOLDED_INFERENCE_OUTPUT = KnownDeviation(
    id="v1-folded-inference-output",
    upstream=none_found(
        "searched apache/mxnet issues for 'BatchNorm_v1 inference precision' (no report; apache/mxnet#9216 is "
        "the same kind of question about BatchNorm's folded output); BatchNorm_v1 is the operator before the "
        "rewrite, kept under that name by apache/mxnet#5936 ('Batch Norm rewrite without mshadow ...')"
    ),
    releases=mxversion.Releases(
        probed=(
            ("1.3.1", True),
            ("1.9.1", True),
        ),
        basis="batch_norm_v1-inl.h is the same from 1.3.1 to 1.9.1 (changed only by refactors: nullptr, "
        "mxnet::Tuple, licence headers)",
    ),
    summary="BatchNorm_v1: y without batch statistics is a x + (beta - a moving_mean), less accurate than allowed",
    quantities=frozenset({"y"}),
    conditions="mx.sym.BatchNorm_v1 (sym-v1); is_train=False or use_global_stats=True; float32; where "
    "|a x| or |a moving_mean| is large against |y|",
    model="y = the oracle's y, within its bound plus 8 float32 roundings of |a x| + |a moving_mean| + |beta|, "
    "a = gamma / sqrt(moving_var + eps) (folded_reach)",
    predict=v1_folded_inference_output,
    evidence="batch_norm_v1-inl.h (1.9.1), Forward's else branch: out = broadcast(slope / sqrt(moving_var + "
    "eps)) * data + broadcast(bias - slope * moving_mean / sqrt(moving_var + eps)): the two terms cancel "
    "where x is near moving_mean. Run: float32[2, 5], is_train=False: y 0.16075122 for the oracle's "
    "0.16075137, 3.3 times the bound of (x - mean) invstd gamma + beta; the value is right, the accuracy is not.",
    reproducer=lambda: minimal([1000.0, 1000.5, 999.75, 1000.25], "float32", is_train=False).with_(
        moving_mean=np.full(1, 1000.0, np.float32), moving_var=np.full(1, 0.01, np.float32)
    ),
    entries=frozenset({"sym-v1"}),
)

DEVIATIONS = (V1_FOLDED_INFERENCE_OUTPUT,)

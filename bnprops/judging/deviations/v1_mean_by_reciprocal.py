"""BatchNorm_v1 forms the batch mean and variance as float(1/M) times a sum: a rounding more than sum / M."""

from __future__ import annotations

import dataclasses

import numpy as np

from bnprops.judging.declarations import KnownDeviation, minimal
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.model.error_model import exactness
from bnprops.model.evaluation import evaluate

#: What the reciprocal's rounding reaches: everything computed from the batch mean or variance.
REACHED = ("y", "dx", "dgamma", "mean", "invstd", "moving_mean", "moving_var")


def v1_mean_by_reciprocal(ctx: Context) -> list[Prediction]:
    case = ctx.case
    m = case.reduction_length
    if not case.uses_batch_stats or m == 0 or (m & (m - 1)) == 0:
        return []  # float(1/M) is exact for M a power of two: then the product is sum / M rounded once
    exact = ctx.evaluation.exactness
    claimed = exact.mean | exact.var | exact.invstd | exact.dot_sum
    if not claimed.any():
        return []  # where no sum is exact, the bounds already allow for any rounding of the statistics
    # The bounds of the same data without the exactness of the mean and what follows from it.
    loose = evaluate(case, "reference")
    no = np.zeros(case.channels, dtype=bool)
    loose.__dict__["exactness"] = dataclasses.replace(
        exactness(case, loose.statistics), mean=no, c2_sum=no, var=no, invstd=no, dot_sum=no
    )
    with np.errstate(invalid="ignore", over="ignore"):
        tolerance = loose.bounds_of(ctx.expected)
    return predict_over(ctx, [q for q in REACHED if q in tolerance], claimed, ctx.expected, tolerance, certain=False)


V1_MEAN_BY_RECIPROCAL = KnownDeviation(
    id="v1-mean-by-reciprocal",
    summary="BatchNorm_v1: mean and var are float(1/M) * sum, not sum / M: off exact data by an ulp or more",
    quantities=frozenset(REACHED),
    conditions="mx.sym.BatchNorm_v1 (sym-v1); batch statistics; M not a power of two; data whose sums are "
    "exact (constant channels, the exact regime), where the bounds otherwise expect the statistics exact",
    model="the oracle's values within the bounds of the same data with no exact mean, variance or "
    "normalised dot product (the ordinary, inexact error model)",
    predict=v1_mean_by_reciprocal,
    evidence="batch_norm_v1-inl.h (1.9.1): scale = shape[1] / shape.Size() (float), mean = scale * "
    "sumall_except_dim<1>(data), var = scale * sumall_except_dim<1>(square(data - mean)). Run: "
    "float32[7, 1] constant channel (0.75, the reproducer; and others), eps 0.001: y beyond its exact-data bound "
    "(38 times it in one found case), dgamma 6.6e-6 for the oracle's 0.",
    reproducer=lambda: minimal([0.75] * 7, "float32"),
    entries=frozenset({"sym-v1"}),
)

DEVIATIONS = (V1_MEAN_BY_RECIPROCAL,)

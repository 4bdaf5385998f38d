"""BatchNorm_v1's executor backward after an inference forward takes its training branch on the moving statistics."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import KnownDeviation, minimal
from bnprops.judging.deviation_models import Context, Prediction, predict_over, training_formula_dx
from bnprops.model.case import Case
from bnprops.model.error_model import unit_roundoff
from bnprops.model.oracle import eps_as_applied, per_channel
from bnprops.mx import mxversion


def v1_inference_dx(case: Case, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """BatchNorm_v1's training-branch dx with the moving statistics ``stats`` in place of the batch's, term by
    term as its Backward forms it (so that inf and NaN fall where MXNet's do): ``g invstd (dy - mean(dy) -
    (xhat - mean(xhat)) mean(dy xhat))`` (plus the prior under 'add'). Its gmean keeps the term in
    sum(x - mean), which vanishes only when mean is the batch's own."""
    mean, var = stats
    g = per_channel(case, np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64))
    dy = case.dy.astype(np.float64)
    red = case.reduce_axes
    scale = 1.0 / max(case.reduction_length, 1)
    with ignoring("divide", "invalid", "over"):
        s2 = per_channel(case, var + eps_as_applied(case))
        c = case.x.astype(np.float64) - per_channel(case, mean)
        gvar = (dy * g * c * -0.5 * s2**-1.5).sum(axis=red, keepdims=True)
        gmean = (dy * g).sum(axis=red, keepdims=True) * (-1.0 / np.sqrt(s2))
        gmean = gmean + scale * (-2.0 * c).sum(axis=red, keepdims=True) * gvar
        dx = dy * g / np.sqrt(s2) + gvar * scale * 2.0 * c + gmean * scale
    prior = case.prior("data")
    return np.asarray(dx if prior is None else prior.astype(np.float64) + dx)


def v1_inference_reach(case: Case, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """How far float32 may land from v1_inference_dx: (M + 8) roundings of the magnitudes of its terms
    (each sum over M terms, then a handful of products and sums); the terms cancel where x is far from
    the moving mean."""
    mean, var = stats
    g = per_channel(case, np.abs(np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)))
    dy = np.abs(case.dy.astype(np.float64))
    red = case.reduce_axes
    scale = 1.0 / max(case.reduction_length, 1)
    with ignoring("divide", "invalid", "over"):
        s2 = per_channel(case, var + eps_as_applied(case))
        c = np.abs(case.x.astype(np.float64) - per_channel(case, mean))
        gvar = (dy * g * c * 0.5 * s2**-1.5).sum(axis=red, keepdims=True)
        gmean = (dy * g).sum(axis=red, keepdims=True) / np.sqrt(s2)
        gmean = gmean + scale * (2.0 * c).sum(axis=red, keepdims=True) * gvar
        terms = dy * g / np.sqrt(s2) + gvar * scale * 2.0 * c + gmean * scale
    return np.asarray((case.reduction_length + 8) * unit_roundoff("float32") * terms)


def v1_inference_backward_trains(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.is_train or case.use_global_stats:
        return []
    everything = np.ones(case.channels, dtype=bool)
    # The training branch also "updates" the moving statistics with themselves, m s + (1 - m) s: 3 roundings.
    u = unit_roundoff("float32")
    drift = {q: 4 * u * np.abs(ctx.expected[q]) for q in ("moving_mean", "moving_var")}
    found = predict_over(
        ctx, ["moving_mean", "moving_var"], everything, ctx.expected, drift, certain=False, breaks_invariants=True
    )
    if "dx" not in ctx.expected:
        return found
    dx, tolerance = training_formula_dx(ctx, v1_inference_dx)
    with ignoring("invalid", "over"):
        tolerance = tolerance + v1_inference_reach(case, ctx.statistics)  # v1's own terms, which cancel
    return found + predict_over(
        ctx, ["dx"], everything, {"dx": dx}, {"dx": tolerance}, certain=True, breaks_invariants=True
    )


V1_INFERENCE_BACKWARD_TRAINS = KnownDeviation(
    id="v1-inference-backward-trains",
    releases=mxversion.Releases(
        probed=(
            ("1.3.1", True),
            ("1.9.1", True),
        ),
        basis="batch_norm_v1-inl.h is the same from 1.3.1 to 1.9.1 (changed only by refactors: nullptr, "
        "mxnet::Tuple, licence headers)",
    ),
    summary="BatchNorm_v1: executor backward after forward(is_train=False) runs its training formula for dx",
    quantities=frozenset({"dx", "moving_mean", "moving_var"}),
    conditions="mx.sym.BatchNorm_v1 executor (sym-v1); forward(is_train=False) then backward(); "
    "use_global_stats=False; float32; y, dgamma and dbeta are right",
    model=(
        "dx = v1_inference_dx, the training formula on the moving statistics, with its mean(xhat) term "
        "(plus the prior), within the training formula's bound plus (M + 8) float32 roundings of its terms "
        "(v1_inference_reach); moving_mean and moving_var = their old values within 4 ulps"
    ),
    predict=v1_inference_backward_trains,
    evidence="batch_norm_v1-inl.h (1.9.1): the inference Forward writes moving_mean/moving_var into its mean "
    "and var outputs; Backward takes the `ctx.is_train && !use_global_stats` branch (the executor's backward "
    "always runs with is_train=True) and forms gmean with tmp = scale * sum(-2 (x - mean)), which is not 0 "
    "for the moving mean. Run: x (3, 2, 4, 2) float32, is_train=False: dx 3.74 off g dy / sqrt(moving_var + "
    "eps), moving statistics unchanged to the bit. The same mix-up as sym-inference-backward-trains, with "
    "v1's own formula.",
    reproducer=lambda: minimal([1.0, 2.0, 4.0, -3.0], "float32", is_train=False),
    entries=frozenset({"sym-v1"}),
    upstream="apache/incubator-mxnet#9580 (the autograd form of the same mix-up in BatchNorm)",
)

DEVIATIONS = (V1_INFERENCE_BACKWARD_TRAINS,)

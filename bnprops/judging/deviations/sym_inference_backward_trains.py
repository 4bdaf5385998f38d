"""The executor's backward after an inference forward takes the training formula for dx."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, KnownDeviation, minimal
from bnprops.judging.deviation_models import (
    Context,
    Prediction,
    float16_projection,
    float16_projection_fits,
    predict_over,
    recovery_reach,
    training_formula_dx,
)
from bnprops.model.case import Case, param_dtype
from bnprops.model.error_model import accumulation_dtype, unit_roundoff
from bnprops.model.exactness import channel_mean
from bnprops.model.oracle import eps_as_applied, momentum_as_applied, per_channel


def sym_inference_dx(case: Case, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """What the executor's backward gives for dx after forward(is_train=False): the training formula on the
    moving statistics ``stats``, ``g invstd (dy - mean(dy) - xhat mean(dy xhat))`` (plus the prior under 'add')."""
    mean, var = stats
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    dy = case.dy.astype(np.float64)
    with ignoring("divide", "invalid", "over"):
        invstd = 1.0 / np.sqrt(var + eps_as_applied(case))
        xhat = (case.x.astype(np.float64) - per_channel(case, mean)) * per_channel(case, invstd)
        axis = case.channel_axis  # (per-channel means in one order: a stacked group's values are its cases')
        mean_dy, mean_dot = per_channel(case, channel_mean(dy, axis)), per_channel(case, channel_mean(dy * xhat, axis))
        dx = per_channel(case, g * invstd) * (dy - mean_dy - xhat * mean_dot)
    prior = case.prior("data")
    return np.asarray(dx if prior is None else prior.astype(np.float64) + dx)


def sym_inference_backward_trains(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.is_train or case.use_global_stats:
        return []
    everything = np.ones(case.channels, dtype=bool)
    # The training backward also "updates" the moving statistics with themselves, m s + (1 - m) s, the
    # variance recovered from invstd: a few ulps.
    rest = momentum_as_applied(case)[1]
    ua, up = unit_roundoff(accumulation_dtype(case.dtype)), unit_roundoff(param_dtype(case.dtype))
    old_mean, old_var = np.abs(ctx.expected["moving_mean"]), np.abs(ctx.expected["moving_var"])
    # m s and (1 - m) s each round to a multiple of the smallest subnormal too: a subnormal statistic moves by
    # up to two of them (found by `bnprops versions` on 1.5/1.6's native kernel: float32 2.0319e-43 -> 2.0179e-43).
    tiny = 2 * float(np.finfo(param_dtype(case.dtype)).smallest_subnormal)
    drift = {
        "moving_mean": (3 * ua + up) * old_mean + tiny,
        "moving_var": abs(rest) * recovery_reach(case, old_var) + (3 * ua + up) * old_var + tiny,
    }
    # Recovered from invstd, a zero moving variance may come back a few ulps below 0 (recovery_reach).
    found = predict_over(
        ctx, ["moving_mean", "moving_var"], everything, ctx.expected, drift, certain=False, breaks_invariants=True
    )
    if "dx" not in ctx.expected:
        return found
    # Bounded as the training formula on the moving statistics, for the call's gradients alone.
    dx, tolerance = training_formula_dx(ctx, sym_inference_dx)
    values = {"dx": dx}
    if case.dtype == "float16" and ctx.kernel == "native" and not float16_projection_fits(ctx):
        # The float16 kernel forms that formula in half_t: where its projection overflows, so does dx.
        overflow, dx16 = float16_projection(ctx)
        prior = case.prior("data")
        values["dx"] = np.where(overflow, dx16 if prior is None else prior.astype(np.float64) + dx16, values["dx"])
        tolerance = np.where(overflow, 0.0, tolerance)
    # Another formula: where its value overflows the data type, inf is MXNet's right answer to it.
    return found + predict_over(
        ctx, ["dx"], everything, values, {"dx": tolerance}, certain=True, breaks_invariants=True
    )


SYM_INFERENCE_BACKWARD_TRAINS = KnownDeviation(
    id="sym-inference-backward-trains",
    summary="Executor backward after forward(is_train=False) runs the training formula for dx",
    quantities=frozenset({"dx", "moving_mean", "moving_var"}),
    conditions="mx.sym executor; forward(is_train=False) then backward(); use_global_stats=False; any kernel and "
    "dtype; y, dgamma and dbeta are right",
    model=(
        "dx = sym_inference_dx, the training formula on the moving statistics (plus the prior), within the "
        "training formula's error bound; moving_mean and moving_var = their old values within a few ulps "
        "(recovery_reach)"
    ),
    predict=sym_inference_backward_trains,
    evidence="x (5, 3), moving_mean [.5, -.5, 1], moving_var [2, .5, 1.5]: dx is 1.27 off the oracle in float32 "
    "(oneDNN and native), float64 and float16, and within 2e-7 (float64: 1e-16) of sym_inference_dx; "
    "a float64 moving_var 0.18624842644487116 came back as 0.18624842644487113. "
    "The executor's Backward always runs with is_train=True; the operator's backward then takes the training "
    "branch with the saved (moving) statistics. Executor.forward documents is_train=False as evaluation "
    "'without a backward call following', but nothing stops or warns the caller. nd/npx/gluon with "
    "backward(train_mode=False) get it right; with backward() (train_mode=True) they do the same (#9580).",
    reproducer=lambda: minimal([1.0, 2.0, 4.0, -3.0], "float64", is_train=False),
    entries=frozenset({"sym"}),
    upstream="apache/incubator-mxnet#9580 (the autograd form of the same mix-up)",
    releases=PROBED_IN_EVERY_RELEASE,
    every_entry=True,
)

DEVIATIONS = (SYM_INFERENCE_BACKWARD_TRAINS,)

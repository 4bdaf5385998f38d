"""The int8 BatchNorm (_contrib_quantized_batch_norm) applies eps twice, and ignores fix_gamma."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.judging.deviations.onednn_fold_gradients_zero import fold_reproducer
from bnprops.model.case import Case
from bnprops.model.oracle import eps_as_applied, per_channel, reference
from bnprops.model.quantization import int8_bound, output_range
from bnprops.mx import mxversion

INT8_ENTRIES = frozenset({"int8-gluon", "int8-sym"})


def int8_kernel_output(case: Case, *, stored_gamma: bool) -> np.ndarray:
    """What the int8 scale-shift computes, exactly: the scale on x divided once more by sqrt(1 + eps) (oneDNN's
    BatchNorm on mean 0, var 1 adds eps again), gamma as stored or 1, clipped to the float model's range."""
    eps = eps_as_applied(case)
    gamma = case.gamma.astype(np.float64) if stored_gamma or not case.fix_gamma else np.ones(case.channels)
    alpha = gamma / np.sqrt(case.moving_var.astype(np.float64) + eps)
    y = per_channel(case, alpha / np.sqrt(1 + eps)) * case.x.astype(np.float64) + per_channel(
        case, case.beta.astype(np.float64) - alpha * case.moving_mean.astype(np.float64)
    )
    limit = output_range(reference(case.with_(is_train=False))["y"])
    return np.asarray(np.clip(y, -limit, limit))


def _predict(ctx: Context, *, stored_gamma: bool) -> list[Prediction]:
    case = ctx.case
    values = {"y": int8_kernel_output(case, stored_gamma=stored_gamma)}
    tolerance = {"y": int8_bound(case, limit=output_range(reference(case.with_(is_train=False))["y"]))}
    return predict_over(ctx, ["y"], np.ones(case.channels, dtype=bool), values, tolerance, certain=True)


def stored_gamma_differs(case: Case) -> bool:
    return case.fix_gamma and bool(np.any(case.gamma != 1))


def eps_twice(ctx: Context) -> list[Prediction]:
    if stored_gamma_differs(ctx.case) or eps_as_applied(ctx.case) == 0:
        return []
    return _predict(ctx, stored_gamma=False)


def gamma_as_stored(ctx: Context) -> list[Prediction]:
    if not stored_gamma_differs(ctx.case):
        return []
    return _predict(ctx, stored_gamma=True)


#: Both come with the operator: the same releases, probed alike.
_RELEASES = mxversion.Releases(
    probed=(("1.7.0", True), ("1.8.0", True), ("1.9.1", True)),
    why="needs int8 BatchNorm (apache/mxnet#15664) and oneDNN",
    basis="int8 BatchNorm came with apache/mxnet#15664 (1.6.0) and runs only with oneDNN ('mxnet' wheels from "
    "1.7.0): 1.3.1-1.6.0 cannot express it; probed with bnprops.judging.release_probe in each release's "
    "environment",
)


INT8_EPS_APPLIED_TWICE = KnownDeviation(
    id="int8-eps-applied-twice",
    releases=_RELEASES,
    upstream=none_found(
        "searched apache/mxnet issues for 'quantized batch_norm int8 eps fix_gamma' (no report); introduced "
        "with the operator by apache/mxnet#15664 ('add int8 bn mkldnn implementation and test', 1.6.0): it "
        "folds 1/sqrt(moving_var + eps) into the scale and hands oneDNN mean 0, var 1 and eps again"
    ),
    summary="int8 BatchNorm divides the data's scale by sqrt(moving_var + eps) and again by sqrt(1 + eps)",
    quantities=frozenset({"y"}),
    conditions="quantize_net / quantize_model with a BatchNorm replaced by _contrib_quantized_batch_norm "
    "(int8-gluon, int8-sym); eps > 0; visible where eps / 2 outweighs the int8 steps (eps above ~1e-2)",
    model="y = clip(alpha x / sqrt(1 + eps) + beta - alpha moving_mean, +-T) (int8_kernel_output), within the "
    "int8 bound; alpha = gamma / sqrt(moving_var + eps), T the calibrated output range",
    predict=eps_twice,
    evidence="mkldnn_quantized_batch_norm.cc (1.9.1): the scale-shift folds invstd = 1 / sqrt(var + eps) into "
    "the weights and sets mean 0, var 1, but runs the oneDNN BatchNorm made by GetBNForward(param, ...) with "
    "param.eps, which divides by sqrt(1 + eps) again; the shift is not divided. Run: eps = 1, gamma [1.5, 0.5], "
    "x (4, 2, 3, 3): y 0.81 off the oracle (int8 steps 0.02), 0.08 off this model; eps = 1e-3 hides it.",
    reproducer=lambda: fold_reproducer().with_(eps=1.0),
    entries=INT8_ENTRIES,
)

INT8_IGNORES_FIX_GAMMA = KnownDeviation(
    id="int8-ignores-fix-gamma",
    releases=_RELEASES,
    upstream=none_found(
        "searched apache/mxnet issues for 'quantized batch_norm int8 eps fix_gamma' (no report); introduced "
        "with the operator by apache/mxnet#15664 (1.6.0): the scale multiplies gamma_ptr[channel] without "
        "reading fix_gamma"
    ),
    summary="int8 BatchNorm multiplies by the stored gamma under fix_gamma (gluon scale=False)",
    quantities=frozenset({"y"}),
    conditions="quantize_net or quantize_model with a BatchNorm replaced by _contrib_quantized_batch_norm "
    "(int8-gluon, int8-sym); fix_gamma and a stored gamma other than 1",
    model="y = clip(stored gamma's BatchNorm (with eps applied twice), +-T), T calibrated on the float model "
    "(gamma 1): int8_kernel_output(stored_gamma=True), within the int8 bound",
    predict=gamma_as_stored,
    evidence="mkldnn_quantized_batch_norm.cc (1.9.1) reads gamma_ptr[channel] with no fix_gamma test. Probe "
    "int8_batchnorm.py: stored gamma [2, 0.5], scale=False: 1.09 off the float model, 4.7e-02 off the stored "
    "gamma's output clipped to the calibrated +-2.279.",
    reproducer=lambda: fold_reproducer().with_(fix_gamma=True),
    entries=INT8_ENTRIES,
)

DEVIATIONS = (INT8_EPS_APPLIED_TWICE, INT8_IGNORES_FIX_GAMMA)

"""float16: var + eps is rounded to float16; two deviations, out of range and subnormal, one model."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import (
    Context,
    Prediction,
    float16_normaliser,
    gradients,
    model_bounds,
    predict_over,
    zero_variance,
)


def _float16_normaliser_model(ctx: Context, hit: np.ndarray, *, certain: bool) -> list[Prediction]:
    case = ctx.case
    if not hit.any():
        return []
    values = ctx.float16_kernel
    quantities = gradients(case) | ({"moving_var"} if case.uses_batch_stats else set())
    return predict_over(
        ctx, quantities, hit, values, model_bounds(ctx, values), certain=certain, breaks_invariants=True
    )


def float16_normaliser_out_of_range(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native" or ctx.float16_rounding != "to nearest":
        return []  # a build that truncates: float16-truncating-normaliser
    _, rounded = float16_normaliser(ctx)
    guarded = zero_variance(ctx) & (case.eps == 0)  # native-zero-variance-eps0's territory
    hit = (np.isinf(rounded) | (rounded == 0)) & ~ctx.undetermined & ~guarded & ctx.finite_channels
    return _float16_normaliser_model(ctx, hit, certain=True)


def float16_normaliser_subnormal(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native" or ctx.float16_rounding != "to nearest":
        return []  # a build that truncates: float16-truncating-normaliser
    exact, rounded = float16_normaliser(ctx)
    f16 = np.finfo(np.float16)
    with ignoring("invalid"):
        coarse = (rounded > 0) & (rounded < float(f16.tiny)) & (np.abs(rounded - exact) > exact * float(f16.eps) / 2)
    # Whether the error crosses the bound depends on where in the ulp var + eps falls: may, not must.
    return _float16_normaliser_model(ctx, coarse & ~ctx.undetermined & ctx.finite_channels, certain=False)


FLOAT16_NORMALISER_OUT_OF_RANGE = KnownDeviation(
    id="float16-normaliser-out-of-range",
    upstream=none_found(
        "searched apache/mxnet issues for 'BatchNorm float16 overflow gradient CPU' (no report of the "
        "overflow; the nearest, apache/mxnet#8509 (open) and apache/mxnet#9916, are MXNet's own float16 "
        "BatchNorm test failing on CPU, computed in float16); PyTorch fixed the same class "
        "(pytorch/pytorch#126525, #147353)"
    ),
    summary="float16 data: var + eps is rounded to float16, so it overflows above 65504 and vanishes below 2^-25",
    quantities=frozenset({"y", "dx", "dgamma", "invstd", "moving_var"}),
    conditions="float16 data, native kernel, a build that rounds to nearest (F16C); not both var == 0 and eps == 0; "
    "var + eps (batch or moving statistics) "
    ">= 65520 (rounds to inf) or < 2^-25 (rounds to 0)",
    model=(
        "the kernel form with invstd = 1/sqrt(half(var + half(eps))): var + eps rounded to inf gives "
        "invstd=0, y=beta, dx=dgamma=0 and moving_var=inf; rounded to 0 gives invstd=inf, NaN/inf in y, dx "
        "and dgamma, and moving_var = m old - (1 - m) eps"
    ),
    predict=float16_normaliser_out_of_range,
    evidence="Probes with one channel: x=[-255.875, 255.875]*2 (var 65472) passes with eps=40 and fails with "
    "eps=100 (var+eps=65572); a single value passes with eps=2.99e-8 and fails with eps=2.9e-8; "
    "invstd=4096 for eps in [3e-8, 6e-8] (1/sqrt(float16(eps))). gamma, beta and the statistics are float32 "
    "for float16 data precisely so that such values are representable.",
    reproducer=lambda: minimal([-256.0, 256.0, -256.0, 256.0], "float16"),
    releases=PROBED_IN_EVERY_RELEASE,
)

FLOAT16_NORMALISER_SUBNORMAL = KnownDeviation(
    id="float16-normaliser-subnormal",
    upstream=none_found(
        "searched apache/mxnet issues for 'BatchNorm float16 overflow gradient CPU' (no report of the "
        "overflow; the nearest, apache/mxnet#8509 (open) and apache/mxnet#9916, are MXNet's own float16 "
        "BatchNorm test failing on CPU, computed in float16); PyTorch fixed the same class "
        "(pytorch/pytorch#126525, #147353)"
    ),
    summary="float16 data: var + eps below 2^-14 is rounded to a float16 subnormal, up to 50% off",
    quantities=frozenset({"y", "dx", "dgamma", "invstd", "moving_var"}),
    conditions="float16 data, native kernel, a build that rounds to nearest (F16C); 2^-25 <= var + eps < 2^-14 and "
    "its float16 rounding moves it by more "
    "than half a normal ulp (may fail: depends on where in the ulp it falls)",
    model=(
        "the kernel form with invstd = 1/sqrt(half(var + half(eps))), the float16 subnormal var + eps: y, dx, "
        "dgamma, invstd and moving_var follow that invstd, within the error model's bounds around them"
    ),
    predict=float16_normaliser_subnormal,
    evidence="use_global_stats with moving_var=1e-7, eps=0: invstd=2896.3 (1/sqrt(float16(1e-7)) = "
    "1/sqrt(1.19e-7)) against 3162.3; the error in y, dx and dgamma follows.",
    reproducer=lambda: minimal([1.0, 2.0, 3.0, 4.0], "float16", eps=0.0, use_global_stats=True).with_(
        moving_var=np.array([1e-7], dtype=np.float32)
    ),
    releases=PROBED_IN_EVERY_RELEASE,
)

DEVIATIONS = (
    FLOAT16_NORMALISER_OUT_OF_RANGE,
    FLOAT16_NORMALISER_SUBNORMAL,
)

"""float16: the training formula's per-element terms of dx are formed in float16 and overflow."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import Context, Prediction, float16_projection, float16_projection_fits
from bnprops.model.oracle import per_channel


def float16_dx_projection_overflow(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native" or not case.uses_batch_stats or not case.x.size:
        return []
    if "dx" not in ctx.expected or float16_projection_fits(ctx):
        return []
    overflow, dx = float16_projection(ctx)
    where = overflow & ~per_channel(case, ctx.undetermined).astype(bool)
    if "dx" not in ctx.expected or not where.any():
        return []
    prior = case.prior("data")
    values = dx if prior is None else prior.astype(np.float64) + dx
    return [Prediction("dx", where, values, np.zeros(case.shape), certain=True, breaks_invariants=True)]


FLOAT16_DX_PROJECTION_OVERFLOW = KnownDeviation(
    id="float16-dx-projection-overflow",
    upstream=none_found(
        "searched apache/mxnet issues for 'BatchNorm float16 overflow gradient CPU' (no report of the "
        "overflow; the nearest, apache/mxnet#8509 (open) and apache/mxnet#9916, are MXNet's own float16 "
        "BatchNorm test failing on CPU, computed in float16); PyTorch fixed the same class "
        "(pytorch/pytorch#126525, #147353)"
    ),
    summary="float16 data: the training formula for dx forms (x - mean) * dotp invstd^2 / M and dy - mean(dy) "
    "in float16, which overflow although dx is small",
    quantities=frozenset({"dx"}),
    conditions="float16 data, native kernel, the training formula for dx (batch statistics, or "
    "sym-inference-backward-trains); |xhat mean(dy xhat)| or |dy - mean(dy)| reaches 65520 in some "
    "element",
    model="dx emulated in float16 as batch_norm.cc forms it (deviation_models.float16_projection): "
    "t = half(half(x - mean) k), dx = half(half(half(dy - mean(dy)) - t) invstd g), exactly, where one of "
    "those overflows; every other element is the oracle's",
    predict=float16_dx_projection_overflow,
    evidence="Found by the deviation models of issue 9 (pytest -m property): sym, float16[1], inference "
    "forward then backward, x=265, moving_mean 0.807, moving_var 0.26, gamma 0.0144: dx=-inf where the "
    "training formula gives -7502.7 (|t| = 264.2 * 1011.6 = 267,000). With batch statistics: "
    "x=[0]*8+[1], dy=[-40000]*8+[40000], gamma 1e-3: dx = [-0.304]*8 + [nan] against the oracle's "
    "[-0.282]*8 + [2.257] (half(40000 - (-26667)) and t = 71,000 are both inf). mshadow's half_t "
    "operators round every intermediate to float16; the kernel's accumulators are float32 but these "
    "per-element terms are not.",
    reproducer=lambda: minimal([0.0] * 8 + [1.0], "float16").with_(
        dy=np.array([[-40000.0]] * 8 + [[40000.0]], dtype=np.float16), gamma=np.array([1e-3], dtype=np.float32)
    ),
    releases=PROBED_IN_EVERY_RELEASE,
)

DEVIATIONS = (FLOAT16_DX_PROJECTION_OVERFLOW,)

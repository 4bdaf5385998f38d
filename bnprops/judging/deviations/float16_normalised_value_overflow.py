"""float16: xhat (or gamma xhat) is formed in float16 and overflows, though y would fit."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import (
    Context,
    Prediction,
    float16_normalised_fits,
    float16_normaliser,
    invstd_of,
)
from bnprops.model.oracle import per_channel


def float16_normalised_value_overflow(ctx: Context) -> list[Prediction]:
    """y = half(half(half(x - mean) invstd) g) + beta: where a float16 intermediate overflows, y is +-inf (NaN
    where g is 0) although the exact y may fit. The backward does not form xhat (batch_norm.cc)."""
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native":
        return []
    invstd = invstd_of(float16_normaliser(ctx)[1]).astype(np.float32)
    g = np.ones(case.channels, np.float32) if case.fix_gamma else case.gamma.astype(np.float32)
    if float16_normalised_fits(ctx, invstd, g):
        return []
    with ignoring("over", "invalid"):
        xhat = (ctx.centred_half.astype(np.float32) * per_channel(case, invstd).astype(np.float32)).astype(np.float16)
        scaled = (xhat.astype(np.float32) * per_channel(case, g).astype(np.float32)).astype(np.float16)
        y = (scaled.astype(np.float32) + per_channel(case, case.beta).astype(np.float32)).astype(np.float16)
        overflow = (np.isinf(xhat) | np.isinf(scaled)) & np.isfinite(case.x)
    keep = ~per_channel(case, ctx.undetermined).astype(bool)
    where = overflow & keep
    if not where.any():
        return []
    return [Prediction("y", where, y.astype(np.float64), np.zeros(case.shape), certain=True, breaks_invariants=True)]


FLOAT16_NORMALISED_VALUE_OVERFLOW = KnownDeviation(
    id="float16-normalised-value-overflow",
    upstream=none_found(
        "searched apache/mxnet issues for 'BatchNorm float16 overflow gradient CPU' (no report of the "
        "overflow; the nearest, apache/mxnet#8509 (open) and apache/mxnet#9916, are MXNet's own float16 "
        "BatchNorm test failing on CPU, computed in float16); PyTorch fixed the same class "
        "(pytorch/pytorch#126525, #147353)"
    ),
    summary="float16 data: xhat = (x - mean) * invstd is rounded to float16 and overflows, though y fits",
    quantities=frozenset({"y"}),
    conditions="float16 data, native kernel; |(x - mean) invstd| or its product with gamma reaches 65520 in some "
    "element (a small moving_var under use_global_stats, or eps = 0); the backward never forms xhat, so "
    "the gradients are right",
    model=(
        "y = half(half(half(half(x - mean) invstd) g) + beta) emulated in float16, +-inf (NaN where g = 0) "
        "where half(x - mean) invstd or its product with g overflows; every other element is the oracle's"
    ),
    predict=float16_normalised_value_overflow,
    evidence="Found by `bnprops fuzz --time 600` on gluon-hybrid and npx: y = 15792.0 expected, inf returned. "
    "Probe (sym, nd, npx alike): use_global_stats, eps=0, moving_var=1e-4, gamma=0.1, x=[1000, -1000, 500, "
    "-500]: y = [inf, -inf, 5000, -5000] where the oracle has [10000.25, -9999.75, 5000.1, -4999.9] (xhat of "
    "1e5 overflows; 5e4 does not). The product with gamma too: moving_var=1e-4, x=300, gamma=4, "
    "beta=-100000: y = inf where the exact y is 20000 (xhat = 30000 fits, 4 xhat does not).",
    reproducer=lambda: minimal([1000.0, -1000.0, 500.0, -500.0], "float16", use_global_stats=True, eps=0.0).with_(
        moving_var=np.array([1e-4], dtype=np.float32), gamma=np.array([0.1], dtype=np.float32)
    ),
    releases=PROBED_IN_EVERY_RELEASE,
)

DEVIATIONS = (FLOAT16_NORMALISED_VALUE_OVERFLOW,)

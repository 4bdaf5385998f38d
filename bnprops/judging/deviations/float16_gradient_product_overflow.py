"""float16: the products (x - mean) dy of dgamma's sum are formed in float16 and overflow."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import (
    Context,
    Prediction,
    float16_products_fit,
    predict_over,
)


def float16_gradient_product_overflow(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native" or float16_products_fit(ctx):
        return []
    with ignoring("over", "invalid"):
        overflow = ~np.isfinite(ctx.centred_half * case.dy).all(axis=case.reduce_axes)
    hit = overflow & ~ctx.undetermined & ctx.finite_channels
    if not hit.any():
        return []
    values = ctx.float16_kernel
    quantities = (set() if case.fix_gamma else {"dgamma"}) | ({"dx"} if case.uses_batch_stats else set())
    return predict_over(ctx, quantities, hit, values, certain=True, breaks_invariants=True)


FLOAT16_GRADIENT_PRODUCT_OVERFLOW = KnownDeviation(
    id="float16-gradient-product-overflow",
    upstream=none_found(
        "searched apache/mxnet issues for 'BatchNorm float16 overflow gradient CPU' (no report of the "
        "overflow; the nearest, apache/mxnet#8509 (open) and apache/mxnet#9916, are MXNet's own float16 "
        "BatchNorm test failing on CPU, computed in float16); PyTorch fixed the same class "
        "(pytorch/pytorch#126525, #147353)"
    ),
    summary="float16 data: the products (x - mean) * dy of the gradient sums are formed in float16 and overflow",
    quantities=frozenset({"dgamma", "dx"}),
    conditions="float16 data, native kernel; some |half(x - mean) * dy| >= 65520 (inf in float16) although dgamma is "
    "a float32 output and the exact sum may be finite",
    model=(
        "the kernel form with dotp = the sum of the float16 products, +-inf (NaN where both signs overflow): "
        "dgamma = dotp invstd and dx = (dy - dbeta/M - (x - mean) dotp invstd^2/M) invstd g, NaN or +-inf"
    ),
    predict=float16_gradient_product_overflow,
    evidence="use_global_stats, mean 0, x=[a,-a,a,-a], dy=[b,b,-b,-b]: a=200, b=320 (product 64000) matches "
    "the oracle (dgamma 0); a=200, b=330 (66000) gives dgamma=NaN, and with batch statistics dx=NaN too. "
    "The oracle's dgamma there is finite (0), and float32 holds every term.",
    reproducer=lambda: minimal([200.0, -200.0, 200.0, -200.0], "float16").with_(
        dy=np.array([[330.0], [330.0], [-330.0], [-330.0]], dtype=np.float16)
    ),
    releases=PROBED_IN_EVERY_RELEASE,
)

DEVIATIONS = (FLOAT16_GRADIENT_PRODUCT_OVERFLOW,)

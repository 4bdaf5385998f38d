"""A build without F16C truncates every float32 -> float16 conversion: var + eps vanishes, overflows or is coarse."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import KnownDeviation, minimal
from bnprops.judging.deviation_models import (
    Context,
    Prediction,
    float16_normaliser,
    gradients,
    invstd_of,
    kernel_form,
    model_bounds,
    predict_over,
    zero_variance,
)
from bnprops.model.case import Outputs
from bnprops.mx import mxversion


def _truncation_tolerance(ctx: Context, values: Outputs) -> Outputs:
    """Every float16 rounding of the kernel truncates: its error is below one unit in the last place instead of
    half of one, so twice the error model's bounds around the model's values, plus one float16 spacing of the
    float16 outputs (y and dx: their own last conversion)."""
    bounds = model_bounds(ctx, values)
    with ignoring("invalid", "over"):
        return {
            q: 2 * b
            + (
                np.nan_to_num(np.spacing(np.abs(values[q]).astype(np.float16)).astype(np.float64))
                if q in ("y", "dx")
                else 0
            )
            for q, b in bounds.items()
        }


def float16_truncating_normaliser(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native":
        return []
    _, truncated = float16_normaliser(ctx, truncating=True)
    guarded = zero_variance(ctx) & (case.eps == 0)  # the kernel's guard: invstd = 0 whatever the conversion
    judged = ~ctx.undetermined & ~guarded & ctx.finite_channels
    out_of_range = (np.isinf(truncated) | (truncated == 0)) & judged
    with ignoring("invalid"):
        subnormal = (truncated > 0) & (truncated < float(np.finfo(np.float16).tiny)) & judged
    if not (out_of_range | subnormal).any():
        return []
    values = kernel_form(ctx, invstd_of(truncated), dotp=ctx.float16_dotp)
    tolerance = _truncation_tolerance(ctx, values)
    quantities = gradients(case) | ({"moving_var"} if case.uses_batch_stats else set())
    return predict_over(
        ctx, quantities, out_of_range, values, tolerance, certain=True, breaks_invariants=True
    ) + predict_over(ctx, quantities, subnormal, values, tolerance, certain=False, breaks_invariants=True)


FLOAT16_TRUNCATING_NORMALISER = KnownDeviation(
    id="float16-truncating-normaliser",
    upstream="apache/mxnet#10760 ('[MXNET-372] Add build flag for USE_F16C in CMake and clarify flag in make', in "
    "1.3.0): the Makefile turns F16C on only when the build host's /proc/cpuinfo lists it, and without it mshadow's "
    "half_t converts float32 to float16 in software, truncating; apache/mxnet#12331 (1.4.0) moved the detection to "
    "a cmake module. No issue reports the mxnet-mkl 1.3.1 wheel's truncation (searched apache/mxnet issues for "
    "'mxnet-mkl float16 F16C', 'float16 conversion truncate round CPU')",
    summary="a build without F16C (mxnet-mkl 1.3.1) truncates float32 -> float16: var + eps below 2^-24 becomes 0, "
    "above 65504 inf, subnormal coarser",
    quantities=frozenset({"y", "dx", "dgamma", "invstd", "moving_var"}),
    conditions="float16 data, native kernel, a build whose float32 -> float16 conversion truncates (measured: "
    "mxversion.float16_conversion); not both var == 0 and eps == 0; var + eps (batch or moving statistics) "
    "truncated to float16 is 0 (below 2^-24), inf (above 65504: from 65504 to 65520 it rounds to 65504 elsewhere), "
    "or subnormal (below 2^-14: may fail, depending on where in the ulp it falls)",
    model=(
        "the kernel form with invstd = 1/sqrt(trunc16(var + trunc16(eps))) and dotp from float16 products: 0 gives "
        "invstd=inf and NaN/inf in y, dx and dgamma; inf gives invstd=0, y=beta, dx=dgamma=0; a subnormal gives "
        "invstd up to 2x off; within twice the error model's bounds (every float16 rounding truncates) plus one "
        "float16 spacing of y and dx"
    ),
    predict=float16_truncating_normaliser,
    evidence="mxnet-mkl 1.3.1's float32 -> float16 conversion (mx.nd astype, and half_t inside BatchNorm): "
    "1e-6 -> 9.5367e-07 (numpy 1.0133e-06), 1e-4 -> 9.9957e-05, 4.6e-8 -> 0, 65519 -> inf (numpy 65504); the "
    "emulation float16_toward_zero matches it bit for bit on 20,000 values; every other build (1.3.1 to 1.9.1, "
    "mxnet-mkl 1.4.1 to 1.6.0, mxnet-native 1.8.0) rounds to nearest. objdump of libmxnet.so: 0 F16C instructions "
    "(vcvtps2ph/vcvtph2ps) in mxnet-mkl 1.3.1, 62001 in mxnet 1.3.1, 62863 in mxnet-mkl 1.4.1. On BatchNorm, "
    "every entry point and shape: x=[0.5, 0.5, 0.5, 0.50049] float16, eps=0 (var 4.5e-8): y, dx and dgamma "
    "are inf/NaN where the other builds round var to 2^-24; "
    "float16[5, 4, 4] in the large regime with var + eps in (65504, 65520): y = beta (0.887 where the oracle "
    "says 0.110). MKL-DNN plays no part: float16 always takes the native kernel.",
    # var + eps = 65504.009: 65504 rounded to nearest (in range, the oracle's values), inf truncated (y = beta).
    reproducer=lambda: minimal([-255.875, 255.875, -256.0, 256.0], "float16"),
    releases=mxversion.Releases(
        since="1.3.0",
        fixed="1.4.0",
        probed=(("1.3.1", True), ("1.4.1", False)),
        why="mxnet-mkl 1.3.1 was built without F16C (apache/mxnet#10760); mxnet-mkl 1.4.1 and the plain 1.3.1 wheel "
        "have it",
        trait=mxversion.FLOAT16_TRUNCATES,
    ),
)

DEVIATIONS = (FLOAT16_TRUNCATING_NORMALISER,)

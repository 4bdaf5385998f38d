"""AMP's bfloat16 BatchNorm saves var + eps with eps truncated to bfloat16: the backward and moving_var see it."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation, none_found
from bnprops.judging.deviation_models import Context, Prediction, invstd_of, kernel_form, model_bounds, predict_over
from bnprops.model.case import Case
from bnprops.model.oracle import eps_as_applied
from bnprops.mx import mxversion

ENTRIES = frozenset({"amp-sym", "amp-gluon"})


def truncated_to_bfloat16(value: float) -> float:
    """float32(value) with its low 16 bits cleared: bfloat16 by truncation (toward zero)."""
    bits = np.array([value], np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return float(bits.view(np.float32)[0])


def amp_bfloat16_eps_truncated(ctx: Context) -> list[Prediction]:
    case = ctx.case
    eps = eps_as_applied(case)
    truncated = truncated_to_bfloat16(eps)
    if truncated == float(np.float32(eps)) or not case.uses_batch_stats:
        return []  # (with the moving statistics eps is added whole: the property's runs)
    values = kernel_form(ctx, invstd_of(ctx.statistics[1] + truncated))
    # y is oneDNN's forward, with eps itself; the backward and the moving variance read the saved invstd.
    quantities = {"dx", "moving_var"} | (set() if case.fix_gamma else {"dgamma"})
    channels = ~ctx.undetermined & ctx.finite_channels
    bounds = model_bounds(ctx, values)
    # (var + trunc(eps) - eps < 0 for a zero-variance channel: the negative moving variance is the model's)
    return predict_over(ctx, sorted(quantities), channels, values, bounds, certain=True, breaks_invariants=True)


def _reproducer() -> Case:
    x = np.array([[0.0], [2.0]], np.float32)
    return Case(
        x=x,
        dy=np.array([[1.0], [0.5]], np.float32),
        gamma=np.ones(1, np.float32),
        beta=np.zeros(1, np.float32),
        moving_mean=np.zeros(1, np.float32),
        moving_var=np.zeros(1, np.float32),
        axis=-1,
        eps=0.3,
        momentum=0.0,
        fix_gamma=False,
        regime="reproducer",
    )


AMP_BFLOAT16_EPS_TRUNCATED = KnownDeviation(
    id="amp-bfloat16-eps-truncated",
    releases=mxversion.Releases(
        since="1.8.0",
        probed=(("1.7.0", False), ("1.8.0", True), ("1.9.1", True)),
        why="AMP's bfloat16 graph feeds BatchNorm its channels on the last axis, which oneDNN takes from 1.8.0 "
        "(apache/mxnet#18504, v1.x backport #18890); before, BatchNorm there runs as in float32",
        basis="bfloat16 AMP exists from 1.7.0 (apache/mxnet#17265) with oneDNN, which the 'mxnet' wheels have "
        "from 1.7.0: 1.3.1-1.6.0 cannot express it. On 1.7.0 the reproducer, 2-D and 4-D with the last axis, "
        "gives the oracle's values on amp-sym and amp-gluon (bnprops versions' pytest step found it stale there)",
    ),
    upstream=none_found(
        "searched apache/mxnet issues for 'bfloat16 BatchNorm eps' and 'AMP bfloat16 BatchNorm' (no report); "
        "the path came with bfloat16 AMP, apache/mxnet#17265 ('Add bfloat16 floating-point format support "
        "based on AMP', first released in 1.7.0); reached by the last axis's oneDNN BatchNorm from "
        "apache/mxnet#18504 (1.8.0)"
    ),
    summary="AMP bfloat16: BatchNorm's backward and moving_var use var + eps with eps truncated to bfloat16",
    quantities=frozenset({"dx", "dgamma", "moving_var"}),
    conditions="the amp-sym and amp-gluon entries (BatchNorm with bfloat16 data after AMP's convert_model or "
    "convert_hybrid_block, oneDNN); batch statistics (training without use_global_stats: with the moving "
    "statistics eps is added whole); an eps that is not a bfloat16 value",
    model="dx, dgamma: the kernel form with invstd = 1/sqrt(var + trunc_bf16(eps)), trunc_bf16 clearing eps's low "
    "16 bits; moving_var = m old + (1 - m)(var + trunc_bf16(eps) - eps); y is the oracle's (eps whole); within the "
    "bfloat16 output bounds",
    predict=amp_bfloat16_eps_truncated,
    evidence="Runs (mxnet 1.9.1, oneDNN, momentum 0, so moving_var = 1/invstd^2 - eps): x = [0, 2] (var 1): eps "
    "0.3 gives var + eps = 1.2988282 = 1 + 0.29882812 (0.3 truncated to bfloat16; rounded it is 0.30078125); eps "
    "1e-3, 1e-5, 2e-5 on a zero-variance channel give 9.9945e-4, 9.9540e-6, 1.9908e-5: eps truncated each time, "
    "and moving_var goes negative. y keeps eps whole: x = [-0.921875, -0.91796875], eps 1e-5 (var 3.8e-6), y = "
    "[-0.83984375, 0.20898438] + ..., the bfloat16 rounding of the eps32 result, not of the truncated one "
    "[-0.84375, 0.20996094]. Consistent with MXNet saving invstd = 1/sqrt(var + DType(eps)) with DType bfloat16 "
    "(a truncating conversion) and recovering var = 1/invstd^2 - eps for the moving update and oneDNN's backward. "
    "The property holds dx and dgamma to this model.",
    reproducer=_reproducer,
    entries=ENTRIES,
)

DEVIATIONS = (AMP_BFLOAT16_EPS_TRUNCATED,)

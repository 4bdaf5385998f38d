"""The CPU kernels' sequential sums drift on offset or constant channels at large M."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import Context, Prediction, gradients, predict_over
from bnprops.model.error_model import accumulation_dtype, sequential_sum_factor
from bnprops.model.evaluation import FusedEvaluation
from bnprops.model.exactness import rows as channel_rows
from bnprops.model.oracle import per_channel
from bnprops.mx import mxversion


def _drifting(rows: np.ndarray, acc: str, channels: int | np.ndarray) -> np.ndarray:
    """Per row: does the sequential sum in ``acc`` drift from the exact sum beyond the probabilistic bound?"""
    with ignoring("over", "invalid"):
        # Against the sum in extended precision: a float64 sum of float64 data errs as much as the drift.
        sequential = np.cumsum(rows.astype(acc), axis=1, dtype=acc)[:, -1].astype(np.longdouble)
        drift = np.abs(sequential - rows.astype(np.longdouble).sum(axis=1)).astype(np.float64)
        allowed = sequential_sum_factor(rows, acc, channels=channels) * np.abs(rows).sum(axis=1)
        return np.asarray(drift > allowed)


def sequential_sum_drift(ctx: Context) -> list[Prediction]:
    """Each sum that drifts (batch_norm.cc: ``mean += x``, ``var += (x - mean)^2``, ``sumGradOut += dy``,
    ``dotp += (x - mean) * dy``, in AccReal, element after element), in the channels where it does, reaches
    the quantities downstream of it; there MXNet is held to the deterministic bound only."""
    case = ctx.case
    m = case.reduction_length
    if ctx.kernel not in ("native", "onednn") or m < 2 or not case.x.size:
        return []
    acc = accumulation_dtype(case.dtype)
    finite = ctx.finite_channels

    def rows(values: np.ndarray) -> np.ndarray:
        return channel_rows(values.astype(np.float64), case.channel_axis)

    def drifts(terms: np.ndarray) -> np.ndarray:
        return np.asarray(_drifting(terms, acc, ctx.evaluation.case_channels) & finite)

    def terms() -> dict[str, np.ndarray]:
        if isinstance(ctx.evaluation, FusedEvaluation):  # the same tests from the fused engine's sums
            return {name: np.asarray(d & finite) for name, d in ctx.evaluation.drifts.items()}
        mean = ctx.statistics[0]
        with ignoring("over", "invalid"):
            centred = rows(case.x.astype(np.float64) - per_channel(case, mean))
            dot = rows((case.x.astype(np.float64) - per_channel(case, mean)) * case.dy.astype(np.float64))
        found = {"dy": drifts(rows(case.dy)), "dot": drifts(dot)}
        if case.uses_batch_stats:
            found.update(x=drifts(rows(case.x)), c2=drifts(centred * centred))
        return found

    drifting = terms()
    downstream = {"dy": {"dbeta", "dx"}, "dot": {"dx"} | (set() if case.fix_gamma else {"dgamma"})}
    return _predict_downstream(ctx, drifting, downstream)


def _predict_downstream(
    ctx: Context, drifting: dict[str, np.ndarray], downstream: dict[str, set[str]]
) -> list[Prediction]:
    """Predictions for the quantities downstream of each drifting sum: the statistics' sums (``x``, ``c2``)
    reach everything normalised with them; each other sum reaches ``downstream[name]``."""
    case = ctx.case
    reach: dict[str, np.ndarray] = {}

    def spoil(quantities: Iterable[str], channels: np.ndarray) -> None:
        for q in quantities:
            reach[q] = reach.get(q, np.zeros(case.channels, dtype=bool)) | channels

    if case.uses_batch_stats:
        spoil(gradients(case) | {"mean", "invstd", "moving_mean", "moving_var"}, drifting["x"])
        # var += (x - mean)^2: at large M the small squares are lost whole (stagnation), always downward.
        spoil(gradients(case) | {"invstd", "moving_var"}, drifting["c2"])
    for name, quantities in downstream.items():
        if name in drifting:
            spoil(quantities, drifting[name])
    return [p for q, channels in reach.items() for p in predict_over(ctx, [q], channels, ctx.expected, certain=False)]


def v1_sequential_sum_drift(ctx: Context) -> list[Prediction]:
    """The sums BatchNorm_v1 forms (batch_norm_v1-inl.h, mshadow's sumall_except_dim in float32), each tested
    for drift as the kernel forms its terms: ``mean`` of x and ``var`` of (x - mean)^2 (batch statistics);
    dgamma of dy (x - mean) / sqrt(var + eps), scaled per element, not (x - mean) dy; dbeta of dy; in
    training dx's gvar of dy gamma (x - mean) (-0.5) (var + eps)^-1.5, gmean of dy gamma and tmp of
    -2 (x - mean). Under global statistics dx is formed without a sum."""
    case = ctx.case
    if ctx.kernel not in ("native", "onednn") or case.reduction_length < 2 or not case.x.size:
        return []
    drifting = {name: np.asarray(d & ctx.finite_channels) for name, d in v1_drifting_sums(ctx).items()}
    downstream = {"dy": {"dbeta"}, "dgamma": set() if case.fix_gamma else {"dgamma"}}
    downstream.update(gvar={"dx"}, gmean={"dx"}, tmp={"dx"})
    return _predict_downstream(ctx, drifting, downstream)


def v1_drifting_sums(ctx: Context) -> dict[str, np.ndarray]:
    """Per sum BatchNorm_v1 forms for this case (v1_sequential_sum_drift), per channel: does it drift?"""
    case = ctx.case
    acc = accumulation_dtype(case.dtype)
    mean, var = ctx.statistics
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    gamma = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    eps = float(np.float32(case.eps))

    def drifts(values: np.ndarray) -> np.ndarray:
        return _drifting(channel_rows(values, case.channel_axis), acc, ctx.evaluation.case_channels)

    with ignoring("over", "invalid", "divide"):
        centred = x - per_channel(case, mean)
        found = {"dy": drifts(dy), "dgamma": drifts(dy * centred / per_channel(case, np.sqrt(var + eps)))}
        if case.uses_batch_stats:
            dyg = dy * per_channel(case, gamma)
            found.update(x=drifts(x), c2=drifts(centred * centred), gmean=drifts(dyg), tmp=drifts(-2.0 * centred))
            found["gvar"] = drifts(dyg * centred * -0.5 * per_channel(case, (var + eps) ** -1.5))
    return found


SEQUENTIAL_SUM_DRIFT = KnownDeviation(
    id="sequential-sum-drift",
    upstream=none_found(
        "searched apache/mxnet issues for 'batchnorm mean inaccurate float32 accumulation large batch "
        "precision sum' (no report of the drift; apache/mxnet#9216 and apache/mxnet#9916 are other precision "
        "questions); PyTorch PR #13431 and TensorFlow XLA PR #25115 fixed the same class"
    ),
    summary="The CPU kernels sum each channel element after element in AccReal: on offset or constant "
    "channels at large M the roundings lean one way and the mean drifts beyond what random rounding allows",
    quantities=frozenset({"y", "dx", "dgamma", "dbeta", "mean", "invstd", "moving_mean", "moving_var"}),
    conditions="both CPU kernels; a channel whose sequential AccReal sum of x or (x - mean)^2 (batch statistics), of "
    "dy or of (x - mean) dy drifts beyond the probabilistic bound, and the quantities downstream of that "
    "sum",
    model=(
        "no value model: which way and how far a sequential sum drifts depends on every rounding, and "
        "predicting it means emulating the kernel's order, which the oneDNN backend does not promise. The "
        "model is the oracle within the deterministic bound, in the channels whose sums drift and the "
        "quantities downstream of those sums (accuracy findings there, never value mismatches)"
    ),
    predict=sequential_sum_drift,
    evidence="Found by test_reductions_the_size_of_real_layers_match_the_oracle: float16[100000, 1], a "
    "constant channel (regime constant): y -0.152099609375 where the oracle has -0.15432801842689514, "
    "|error| 2.2e-3 beyond the probabilistic bound 5.5e-4, within the deterministic 2.1e-2; dgamma -1041.7 "
    "against 0. The sequential float32 sum of 10^5 copies of one float16 value rounds the same way within "
    "each binade (np.cumsum, which is sequential, reproduces it). The same class of bug was fixed in "
    "PyTorch (PR #13431) and TensorFlow XLA (PR #25115) by pairwise/Welford accumulation. float32[10000, 2] "
    "and [100, 8, 10, 10] constant 1.1597745547961047: moving_mean (momentum 0) is 1.1598319 on both "
    "backends, exactly np.cumsum(x, dtype=float32)[-1] / M. bnprops tightness: ordinary float32 data at "
    "M ~ 10^6 (e.g. float32[24890, 1, 8, 8]): moving_var, y and dx 1.1-2x beyond the probabilistic bound; "
    "the variance MXNet recovers from invstd is the sequential float32 sum of (x - mean)^2, 1.04e-3 too "
    "low (a pairwise float32 sum is right): the small squares are lost whole once the partial sum is large.",
    reproducer=lambda: minimal([0.3] * 100_000, "float16", eps=1e-3),
    releases=PROBED_IN_EVERY_RELEASE,
)

V1_SEQUENTIAL_SUM_DRIFT = KnownDeviation(
    id="v1-sequential-sum-drift",
    releases=mxversion.Releases(
        probed=(
            ("1.3.1", True),
            ("1.9.1", True),
        ),
        basis="batch_norm_v1-inl.h is the same from 1.3.1 to 1.9.1 (changed only by refactors)",
    ),
    summary="BatchNorm_v1 sums each channel in float32 element after element (in each sample's plane, then "
    "across planes): on offset or constant channels at large M the mean drifts beyond what random rounding allows",
    quantities=SEQUENTIAL_SUM_DRIFT.quantities,
    conditions="mx.sym.BatchNorm_v1 (sym-v1); a channel whose sequential float32 sum, of the terms v1 forms, "
    "drifts beyond the probabilistic bound, and the quantities downstream of that sum: x and (x - mean)^2 "
    "(batch statistics), dy (dbeta), dy (x - mean) / sqrt(var + eps) (dgamma), and in training dx's gvar "
    "dy gamma (x - mean) (-0.5) (var + eps)^-1.5, gmean dy gamma and tmp -2 (x - mean)",
    model=SEQUENTIAL_SUM_DRIFT.model,
    predict=v1_sequential_sum_drift,
    evidence="v1's sums are mshadow's sumall_except_dim<1>: each sample's H x W plane summed in float32, then the "
    "planes in order (tests.emulated.emulate_v1 in that order is MXNet's v1 kernel bit for bit); for 2-D input "
    "that is one sequential sum. Run (1.9.1): float32[10000, 1], constant 1.1597745547961047, momentum 0: "
    "moving_mean and y beyond the probabilistic bound of v1's own error model (det ratio 0.041); found by "
    "test_batchnorm_v1_matches_the_oracle at real sizes (float32[10000, 4], offset regime, moving_mean 0.00215 "
    "off, probabilistic bound 0.00192, deterministic 0.0822). The same drift as BatchNorm's CPU kernels. v1's "
    "dgamma sums dy (x - mean) / sqrt(var + eps), scaled per element, which drifts where (x - mean) dy does not: "
    "float32[1000, 1] all 3.0, dy 1, moving_var 2, use_global_stats: dgamma 2120.8201 (np.cumsum of the float32 "
    "terms, bit for bit) against 2120.7902, probabilistic bound 0.0194; found as float32[100000, 3] offset "
    "(-17714090.0 against -17720525.3, bound 1.53e3).",
    reproducer=lambda: minimal([1.1597745547961047] * 10_000, "float32", momentum=0.0),
    entries=frozenset({"sym-v1"}),
    upstream=SEQUENTIAL_SUM_DRIFT.upstream,
)

DEVIATIONS = (SEQUENTIAL_SUM_DRIFT, V1_SEQUENTIAL_SUM_DRIFT)

"""SyncBatchNorm's per-device float32 sums drift on offset channels at large M, as BatchNorm's CPU sums do."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import KnownDeviation, none_found
from bnprops.judging.deviation_models import Context, Prediction, gradients, predict_over
from bnprops.judging.deviations.sequential_sum_drift import _drifting
from bnprops.model.case import Case
from bnprops.model.exactness import rows as channel_rows
from bnprops.model.oracle import per_channel
from bnprops.model.sync import device_split, offsets, with_split
from bnprops.mx import mxversion
from bnprops.mx.sync import ENTRIES


def sync_sum_drift(ctx: Context) -> list[Prediction]:
    """Each device's sums (sync_batch_norm-inl.h: sumall_except_dim of x, x^2, dy and dy (x - mean), in float32,
    element after element within a sample, then sample after sample) that drift beyond the probabilistic bound
    reach the quantities downstream; there MXNet is held to the deterministic bound only."""
    case = ctx.case
    if not case.uses_batch_stats or case.reduction_length < 2:
        return []
    mean = ctx.statistics[0]
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    with ignoring("over", "invalid"):
        terms = {"x": x, "x2": x * x, "dy": dy, "dot": (x - per_channel(case, mean)) * dy}
    drifting = {}
    for name, values in terms.items():
        found = np.zeros(case.channels, dtype=bool)
        for rows in offsets(device_split(case)):
            found |= _drifting(channel_rows(values[rows], case.channel_axis), "float32", case.channels)
        drifting[name] = found & ctx.finite_channels
    statistics = drifting["x"] | drifting["x2"]
    reach = {q: statistics.copy() for q in gradients(case) | {"y", "moving_mean", "moving_var"}}
    reach["dbeta"] = reach.get("dbeta", np.zeros(case.channels, dtype=bool)) | drifting["dy"]
    reach["dx"] = reach["dx"] | drifting["dy"] | drifting["dot"]
    if not case.fix_gamma:
        reach["dgamma"] = reach["dgamma"] | drifting["dot"]
    return [p for q, channels in reach.items() for p in predict_over(ctx, [q], channels, ctx.expected, certain=False)]


def reproducer() -> Case:
    rng = np.random.default_rng(3)
    x = (0.2739234 + 2.2e-6 * rng.standard_normal((100_000, 1))).astype(np.float32)
    case = Case(
        x=x,
        dy=np.ones_like(x),
        gamma=np.full(1, 1.5, np.float32),
        beta=np.full(1, 0.25, np.float32),
        moving_mean=np.zeros(1, np.float32),
        moving_var=np.ones(1, np.float32),
        fix_gamma=False,
        regime="reproducer",
    )
    return with_split(case, (50_000, 50_000))


SYNC_SUM_DRIFT = KnownDeviation(
    id="sync-sum-drift",
    upstream=none_found(
        "searched apache/mxnet issues for 'SyncBatchNorm different batch size per device mean' and "
        "'SyncBatchNorm variance' (no report); introduced with the operator, apache/mxnet#11502 ('[MXNET-614] "
        "Adding Synchronized Batch Normalization', 1.3.0); the plain operator's sequential-sum-drift names "
        "the fixes elsewhere"
    ),
    releases=mxversion.Releases(
        probed=(
            ("1.3.1", True),
            ("1.9.1", True),
        ),
        basis="sync_batch_norm-inl.h's forward, merge and backward are the same from 1.3.1 to 1.9.1 (changed only "
        "by refactors: mxnet::Tuple, nullptr, 5-D support apache/mxnet#14542, licence headers)",
    ),
    summary="SyncBatchNorm sums x, x^2, dy and dy (x - mean) per device in float32, element after element: on "
    "offset channels at large M the roundings lean one way, beyond what random rounding allows",
    quantities=frozenset({"y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var"}),
    conditions="SyncBatchNorm (sync-nd, sync-sym, sync-gluon), training; a channel whose sequential float32 "
    "sum of x, x^2, dy or dy (x - mean) over some device's slice drifts beyond the probabilistic bound, and "
    "the quantities downstream of that sum",
    model="no value model (as BatchNorm's sequential-sum-drift): the oracle within the deterministic bound, in "
    "the channels whose sums drift and the quantities downstream (accuracy findings there, never value "
    "mismatches)",
    predict=sync_sum_drift,
    evidence="Found by the sync property at large sizes: float32[3980, 3], tiny_spread regime (an offset), 2 devices "
    "of 1990 rows (L = 1: one sequential sum per device): y 7.59e-05 from the oracle, beyond the probabilistic "
    "bound 7.44e-05, within the deterministic 1.17e-03; dgamma 2.07 against a probabilistic 2.02. Shrunk: "
    "float32[100000, 1], x = 0.2739234 + 2.2e-6 N(0, 1), dy = 1, 2 devices (the reproducer). x^2 has "
    "terms of one sign always, so its sum leans whenever the terms share a binade. mshadow's "
    "MapReduceKeepHighDim (1.9.1) adds within a sample, then sample after sample, in float32.",
    reproducer=reproducer,
    entries=frozenset(ENTRIES),
)

DEVIATIONS = (SYNC_SUM_DRIFT,)

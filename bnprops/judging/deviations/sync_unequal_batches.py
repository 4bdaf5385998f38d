"""SyncBatchNorm averages the devices' means: with unequal per-device batches its statistics are not the batch's."""

from __future__ import annotations

from bnprops.judging.declarations import KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.model.case import Case
from bnprops.model.sync import SyncEvaluation, device_split, equal_split, kernel_outputs, merged_statistics, with_split
from bnprops.mx import mxversion
from bnprops.mx.sync import ENTRIES

#: What the merged statistics reach (dbeta is a sum of dy alone).
REACHED = ("y", "dx", "dgamma", "moving_mean", "moving_var")


def unequal_batches(ctx: Context) -> list[Prediction]:
    """MXNet's formulas from the mean over devices of E_d[x] and E_d[x^2] (kernel_outputs), within the
    error model's bounds of those values; every channel of a batch split unequally."""
    case = ctx.case
    if not case.uses_batch_stats or not case.x.size or equal_split(device_split(case)):
        return []
    stats = merged_statistics(case)
    values = kernel_outputs(case, stats)
    # (bounds propagated around the merged statistics by the one-pass model, whoever evaluated the case)
    evaluation = ctx.evaluation if isinstance(ctx.evaluation, SyncEvaluation) else SyncEvaluation(case)
    tolerance = evaluation.bounds_around(values, stats)
    return predict_over(ctx, REACHED, ctx.finite_channels, values, tolerance, certain=True)


def reproducer() -> Case:
    case = minimal([5.0, -1.0, 0.0, 1.0], "float32")
    return with_split(case, (1, 3))


SYNC_UNEQUAL_BATCHES = KnownDeviation(
    id="sync-unequal-batches",
    upstream=none_found(
        "searched apache/mxnet issues for 'SyncBatchNorm different batch size per device mean' and "
        "'SyncBatchNorm variance' (no report); introduced with the operator, apache/mxnet#11502 ('[MXNET-614] "
        "Adding Synchronized Batch Normalization', 1.3.0); the same merge was fixed in PyTorch "
        "(https://github.com/pytorch/pytorch/issues/22192) and reported in Paddle "
        "(https://github.com/PaddlePaddle/Paddle/issues/32464)"
    ),
    releases=mxversion.Releases(
        probed=(
            ("1.3.1", True),
            ("1.9.1", True),
        ),
        basis="sync_batch_norm-inl.h's forward, merge and backward are the same from 1.3.1 to 1.9.1 (changed only "
        "by refactors: mxnet::Tuple, nullptr, 5-D support apache/mxnet#14542, licence headers)",
    ),
    summary="SyncBatchNorm with unequal per-device batches normalises with the mean of the devices' means "
    "(and E[x^2] likewise), not the batch's statistics; dx divides by each device's own count",
    quantities=frozenset(REACHED),
    conditions="SyncBatchNorm (sync-nd, sync-sym, sync-gluon), training with batch statistics, a batch split over the "
    "devices into unequal parts (the last batch of an epoch, split_and_load with even_split=False)",
    model="SyncBatchNorm's formulas in float64 from mean' = avg_d E_d[x], var' = avg_d E_d[x^2] - mean'^2; "
    "dx of device d from the averages over devices of sum dy and sum dy (x - mean'), divided by m_d; each "
    "device's dgamma its slice's sum of dy (x - mean')/sqrt(var' + eps); within the error model's bounds",
    predict=unequal_batches,
    evidence="sync_batch_norm-inl.h (1.9.1): SharedND::MeanReady sums the devices' vectors and multiplies by "
    "1.0f/num_devices_; scale = C/size is the device's own. Probe docs/probes/sync_batchnorm.py: 2 + 6 rows, "
    "the mean used 2.891937 = the mean of the two device means, global mean 1.164925, dx rel err 1.29e-01. "
    "Reproducer (x = [5, -1, 0, 1], rows 1 + 3): mean used 2.5 (the mean of 5 and 0), the batch's 1.25.",
    reproducer=reproducer,
    entries=frozenset(ENTRIES),
)

DEVIATIONS = (SYNC_UNEQUAL_BATCHES,)

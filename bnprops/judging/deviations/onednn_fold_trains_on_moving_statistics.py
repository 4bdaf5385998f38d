"""Training through a graph the oneDNN backend folded normalises with the moving statistics, and updates none."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.judging.deviations.onednn_fold_gradients_zero import FOLD_ENTRIES, FOLD_RELEASES, fold_reproducer
from bnprops.model.folding import identity_fold_bound
from bnprops.model.oracle import reference


def trains_on_moving_statistics(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if not case.uses_batch_stats:
        return []
    everything = np.ones(case.channels, dtype=bool)
    values = {
        "y": reference(case.with_(is_train=False))["y"],
        "moving_mean": case.moving_mean.astype(np.float64),
        "moving_var": case.moving_var.astype(np.float64),
    }
    tolerance = {"y": identity_fold_bound(case), "moving_mean": np.zeros(case.channels)}
    tolerance["moving_var"] = tolerance["moving_mean"]
    return predict_over(ctx, ["y", "moving_mean", "moving_var"], everything, values, tolerance, certain=True)


ONEDNN_FOLD_TRAINS_ON_MOVING_STATISTICS = KnownDeviation(
    id="onednn-fold-trains-on-moving-statistics",
    releases=FOLD_RELEASES,
    upstream=none_found(
        "searched apache/mxnet issues for 'mkldnn conv batchnorm fuse optimize_for gradients training' and "
        "'MKLDNN subgraph conv bn fusion' (no report); introduced with the fold, apache/mxnet#12530 (1.4.0): "
        "the fold is built from the moving statistics and the fused operator has no training path"
    ),
    summary="A folded Convolution + BatchNorm in training mode uses the moving statistics and updates none",
    quantities=frozenset({"y", "moving_mean", "moving_var"}),
    conditions="sym.optimize_for('MKLDNN') (fold-sym) or hybridize(backend='MKLDNN') (fold-gluon) on a "
    "Convolution -> BatchNorm graph, forward(is_train=True) or autograd.record(); use_global_stats=False",
    model="y = the inference output (moving statistics) within the fold's bound (identity_fold_bound); "
    "moving_mean and moving_var keep their values exactly",
    predict=trains_on_moving_statistics,
    evidence="mkldnn_conv.cc (1.9.1): UpdateConvWeightBias folds gamma, beta and the moving statistics into the "
    "weights whatever ctx.is_train is; the folded operator has no batch statistics and no auxiliary state to "
    "update. Run: the reproducer's training y equals its inference y bit for bit on both entries, 0.53 away "
    "from the batch-statistics y; the moving statistics come back unchanged; no error or warning.",
    reproducer=lambda: fold_reproducer(is_train=True),
    entries=FOLD_ENTRIES,
)

DEVIATIONS = (ONEDNN_FOLD_TRAINS_ON_MOVING_STATISTICS,)

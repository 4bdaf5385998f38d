"""Under fix_gamma the folded graph leaves the gamma array as stored: BatchNorm writes 1 into it, the fold does not."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.judging.deviations.onednn_fold_gradients_zero import FOLD_ENTRIES, FOLD_RELEASES, fold_reproducer


def keeps_gamma(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if not case.fix_gamma:
        return []
    values = {"gamma": case.gamma.astype(np.float64)}
    tolerance = {"gamma": np.zeros(case.channels)}
    return predict_over(ctx, ["gamma"], np.ones(case.channels, dtype=bool), values, tolerance, certain=True)


ONEDNN_FOLD_KEEPS_GAMMA = KnownDeviation(
    id="onednn-fold-keeps-gamma",
    releases=FOLD_RELEASES,
    upstream=none_found(
        "searched apache/mxnet issues for 'mkldnn conv batchnorm fuse optimize_for gradients training' and "
        "'MKLDNN subgraph conv bn fusion' (no report); introduced with the fold, apache/mxnet#12530 (1.4.0): "
        "UpdateConvWeightBias uses 1 for gamma under fix_gamma but never writes the gamma array"
    ),
    summary="A folded Convolution + BatchNorm with fix_gamma leaves the gamma array as stored (y uses 1)",
    quantities=frozenset({"gamma"}),
    conditions="fix_gamma=True (gluon scale=False); Convolution -> BatchNorm folded by the MKLDNN backend "
    "(fold-sym, fold-gluon), either mode",
    model="gamma = its stored value exactly; y is computed with gamma = 1, as BatchNorm's",
    predict=keeps_gamma,
    evidence="mkldnn_conv.cc (1.9.1), UpdateConvWeightBias: alpha = (fix_gamma ? 1.0f : gamma[c]) / sqrt(var "
    "+ eps), gamma is only read; BatchNorm's own forward writes 1 into it (batch_norm.cc). Run: the reproducer's "
    "gamma [1.5, 0.5] reads back [1.5, 0.5] on both entries. A model exported from the folded graph keeps a "
    "gamma that an exporter dropping fix_gamma (ONNX) then applies.",
    reproducer=lambda: fold_reproducer().with_(fix_gamma=True),
    entries=FOLD_ENTRIES,
)

DEVIATIONS = (ONEDNN_FOLD_KEEPS_GAMMA,)

"""The oneDNN fold of BatchNorm into a Convolution ignores BatchNorm's axis: it normalises the filters' axis."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.judging.deviations.onednn_fold_gradients_zero import FOLD_ENTRIES, FOLD_RELEASES, fold_reproducer
from bnprops.model.case import Case
from bnprops.model.folding import identity_fold_bound
from bnprops.model.oracle import reference


def on_axis_one(case: Case) -> Case:
    """The inference call with the same parameter vectors laid along axis 1 (the convolution's filters)."""
    return case.with_(axis=1, is_train=False)


def folded_along_axis_one(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.channel_axis == 1 or case.shape[1] != case.channels:
        return []
    moved = on_axis_one(case)
    values = {"y": reference(moved)["y"]}
    tolerance = {"y": identity_fold_bound(moved)}
    return predict_over(ctx, ["y"], np.ones(case.channels, dtype=bool), values, tolerance, certain=True)


ONEDNN_FOLD_IGNORES_AXIS = KnownDeviation(
    id="onednn-fold-ignores-axis",
    releases=FOLD_RELEASES,
    upstream=none_found(
        "searched apache/mxnet issues for 'mkldnn conv batchnorm fuse optimize_for gradients training' and "
        "'MKLDNN subgraph conv bn fusion' (no report); introduced with the fold, apache/mxnet#12530 "
        "('Implement mkldnn convolution fusion and quantization', 1.4.0): UpdateConvWeightBias scales the "
        "filters along the weight's output channels whatever BatchNorm's axis"
    ),
    summary="The oneDNN fold applies BatchNorm's gamma, beta and moving statistics along axis 1 whatever its axis",
    quantities=frozenset({"y"}),
    conditions="Convolution -> BatchNorm(axis != 1) folded by the MKLDNN backend (fold-sym, fold-gluon, and "
    "fold-bind: a plain bind with every grad_req 'null'), where BatchNorm's axis has as many entries as the "
    "convolution has filters (otherwise the folded graph fails to create its oneDNN primitive)",
    model="y = the inference BatchNorm of the same data with the parameter vectors laid along axis 1 "
    "(on_axis_one), within the fold's bound",
    predict=folded_along_axis_one,
    evidence="mkldnn_conv_property.h (1.9.1): the selector matches any BatchNorm after a Convolution without "
    "reading its axis; UpdateConvWeightBias (mkldnn_conv.cc) scales filter c by gamma[c] / sqrt(var[c] + eps). "
    "Run: x (2, 3, 3, 3), BatchNorm(axis=3), gamma [1, 2, 3]: the folded y is 4.5 off the oracle, the unfolded "
    "graph (a bind with gradients) 4.7e-07; bind and simple_bind with grad_req 'null' (Module's inference) fold "
    "and give the same 4.5; gluon hybridize() without a backend does not fold (1.3e-07). With 5 entries on "
    "axis 3 the forward raises 'could not create a descriptor for a dilated convolution forward propagation "
    "primitive'.",
    reproducer=lambda: fold_reproducer(axis=3),
    entries=FOLD_ENTRIES,
)

DEVIATIONS = (ONEDNN_FOLD_IGNORES_AXIS,)

"""Through a graph the oneDNN backend folded, BatchNorm trains on nothing: its gradients are 0."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, Case
from bnprops.mx import mxversion

#: The entries that run BatchNorm through the fold (bnprops.mx.folding).
FOLD_ENTRIES = frozenset({"fold-sym", "fold-gluon", "fold-bind", "fold-relu-sym"})
#: The entries that take gradients through the folded graph.
FOLD_GRADIENT_ENTRIES = frozenset({"fold-sym", "fold-gluon", "fold-relu-sym"})
#: The scope of the fold's deviations that show through fold-bind too (probed in each release's environment).
FOLD_RELEASES = mxversion.Releases(
    probed=(("1.7.0", True), ("1.8.0", True), ("1.9.1", True)),
    why="needs the oneDNN fold (apache/mxnet#12530) and oneDNN",
    basis="the fold came with apache/mxnet#12530 (1.4.0) and runs only with oneDNN ('mxnet' wheels from 1.7.0): "
    "1.3.1-1.6.0 cannot express it. On 1.7.0 and 1.8.0 only fold-bind shows it: the optimize_for entries "
    "(fold-sym, fold-gluon, fold-relu-sym) raise 'Check failed: input_nid < simple_nodes->size() (6 vs. "
    "6)' in those releases; probed with bnprops.judging.release_probe in each release's environment",
)


def fold_reproducer(*, is_train: bool = False, axis: int = 1) -> Case:
    """A small 4-D case the fold runs: 2 channels, a ramp for x and dy."""
    x = (np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2) - 7.5) / 4
    return Case(
        x=x,
        dy=np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape),
        gamma=np.array([1.5, 0.5], np.float32),
        beta=np.array([0.25, -0.5], np.float32),
        moving_mean=np.array([0.5, -0.25], np.float32),
        moving_var=np.array([2.0, 0.5], np.float32),
        fix_gamma=False,
        is_train=is_train,
        axis=axis,
        regime="reproducer",
    )


def zero_gradients(ctx: Context) -> list[Prediction]:
    case = ctx.case
    values = {}
    for target in GRAD_TARGETS:
        quantity = GRADIENT_OF[target]
        if quantity in ctx.expected:
            prior = case.prior(target)
            values[quantity] = np.zeros(ctx.expected[quantity].shape) if prior is None else prior.astype(np.float64)
    tolerance = {q: np.zeros(v.shape) for q, v in values.items()}
    return predict_over(ctx, list(values), np.ones(case.channels, dtype=bool), values, tolerance, certain=True)


ONEDNN_FOLD_GRADIENTS_ZERO = KnownDeviation(
    id="onednn-fold-gradients-zero",
    releases=mxversion.Releases(
        probed=(("1.9.1", True),),
        why="needs the oneDNN fold (apache/mxnet#12530) and oneDNN",
        basis="the zero gradients came with apache/mxnet#14275 (1.5.0); the fold runs only with oneDNN ('mxnet' "
        "wheels from 1.7.0). Not probed on 1.7.0 and 1.8.0: its entries all go through optimize_for, which "
        "raises 'Check failed: input_nid < simple_nodes->size() (6 vs. 6)' there; probed with "
        "bnprops.judging.release_probe in each release's environment",
    ),
    upstream=none_found(
        "searched apache/mxnet issues for 'mkldnn conv batchnorm fuse optimize_for gradients training' and "
        "'MKLDNN subgraph conv bn fusion' (no report); introduced by apache/mxnet#14275 ('Register fake grad "
        "to subgraph and quantized operators', 1.5.0): the fused node's gradient is MakeZeroGradNodes"
    ),
    summary="A Convolution + BatchNorm folded by the oneDNN backend returns gradients of 0, silently",
    quantities=frozenset({"dx", "dgamma", "dbeta"}),
    conditions="sym.optimize_for('MKLDNN') (fold-sym) or hybridize(backend='MKLDNN') (fold-gluon) on a "
    "Convolution -> BatchNorm graph, then backward, in training or inference mode; any case the fold runs",
    model="dx, dgamma and dbeta = 0 exactly (a request 'add' keeps its prior): the folded operator's gradient is "
    "MakeZeroGradNodes",
    predict=zero_gradients,
    evidence="mkldnn_conv.cc (1.9.1): _sg_mkldnn_conv sets FGradient = MakeZeroGradNodes; the property is "
    "inference_only, but optimize_for and hybridize(backend=) do not check for gradients (only a bind through the "
    "default backend does, graph_executor.cc SubgraphPropertyCheck). Run: every gradient of the reproducer is 0 "
    "in both modes, with no error or warning.",
    reproducer=lambda: fold_reproducer(is_train=True),
    entries=FOLD_GRADIENT_ENTRIES,
)

DEVIATIONS = (ONEDNN_FOLD_GRADIENTS_ZERO,)

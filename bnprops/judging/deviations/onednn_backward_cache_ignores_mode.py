"""Before MXNet 1.8 oneDNN's cached BatchNorm backward ignores the mode: the first backward's formula is reused."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import SequenceDeviation
from bnprops.judging.deviation_models import Context, training_formula_dx
from bnprops.judging.deviations.sym_inference_backward_trains import sym_inference_dx
from bnprops.model.case import Case
from bnprops.model.evaluation import Evaluation, evaluate
from bnprops.model.oracle import eps_as_applied, per_channel, writing
from bnprops.mx import mxversion

#: The entry whose backward always runs in training mode, whatever its forward's mode (sym-inference-backward-trains).
TRAINING_BACKWARD_ENTRY = "sym"
#: Before this release oneDNN's BatchNorm backward writes a gradient requested with 'add' (apache/mxnet#18517, the
#: v1.7.x backport of #18500, made it add): measured on mxnet-mkl 1.6.0, dx with a prior of 7 is this call's alone.
ADD_HONOURED_SINCE = "1.7.0"


def global_stats_dx(case: Case, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """What oneDNN's global-statistics backward gives for dx: ``g invstd dy`` on the statistics ``stats`` the
    forward normalised with (plus the prior under 'add')."""
    var = stats[1]
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    with ignoring("divide", "invalid", "over"):
        dx = per_channel(case, g / np.sqrt(var + eps_as_applied(case))) * case.dy.astype(np.float64)
    prior = case.prior("data")
    return np.asarray(dx if prior is None else prior.astype(np.float64) + dx)


def other_mode_dx(case: Case, evaluation: Evaluation, *, entry: str, version: str) -> tuple[np.ndarray, np.ndarray]:
    """dx from the cached primitive of the other mode than the backward's own, and its bound (the training
    formula's, for the call's gradients alone: deviation_models.training_formula_dx), in MXNet ``version``.

    The backward trains where the call does, and on sym always; the statistics are those the forward normalised
    with (the batch's in training, the moving ones in inference). Before ADD_HONOURED_SINCE an 'add' is written."""
    trains = case.is_train or entry == TRAINING_BACKWARD_ENTRY
    if case.prior("data") is not None and mxversion.parse(version) < mxversion.parse(ADD_HONOURED_SINCE):
        case = writing(case)
        evaluation = evaluate(case)
    ctx = Context(case, "onednn", evaluation)
    return training_formula_dx(ctx, global_stats_dx if trains else sym_inference_dx)


ONEDNN_BACKWARD_CACHE_IGNORES_MODE = SequenceDeviation(
    id="onednn-backward-cache-ignores-mode",
    summary="Before MXNet 1.8, oneDNN's BatchNorm backward reuses the primitive of an earlier backward with the same "
    "parameters and shapes whatever its mode: an inference backward after a training one gets the training "
    "formula for dx, a training backward after an inference one the inference formula",
    conditions="the oneDNN kernel (float32, 4-D input with channels on axis 1; in 1.4/1.5 only input already in "
    "oneDNN's layout with channels a multiple of 8, as after a Convolution, which no BatchNorm entry point "
    "gives it); use_global_stats=False; a backward in one mode (autograd train_mode, or the sym executor's, "
    "always training) after a backward in the other mode in the same thread with equal BatchNorm parameters and "
    "equal data and head shapes (any layer: the cache is per thread); every entry point",
    model=(
        "dx = the other mode's formula on the statistics the forward normalised with, within the training "
        "formula's bound: after a cached training backward, g invstd (dy - mean(dy) - xhat mean(dy xhat)) on the "
        "moving statistics (sym_inference_dx); after a cached inference backward, g invstd dy on the batch "
        "statistics (global_stats_dx); plus the prior under 'add' from 1.7.0 (before, oneDNN writes it). y, "
        "dgamma, dbeta and the moving statistics are the contract's (both primitives form dgamma and dbeta alike;"
        " MXNet, not the primitive, updates the moving statistics). Not certain: with no such earlier backward, "
        "MXNet gives the contract"
    ),
    evidence=(
        "x float32 (3, 2, 1, 1), gamma (1.5, 0.5), moving (0.5, -0.5) and (2, 0.5), eps 1e-3, under autograd: a "
        "training step, then an inference forward and backward gives dx [-0.848, 0.639, 0, -1.204, 0.848, 0.926] "
        "= the training formula on the moving statistics, where the contract (and the same call in a fresh "
        "process) is [-0.742, -0.212, 0.106, 0.353, 0.954, 0.918]; the other order gives the inference formula on"
        " the batch statistics [-0.679, -0.072, 0.097, 0.121, 0.873, 0.314] for the contract's [-0.821, -0.134, "
        "0.117, -0.072, 0.704, 0.206]; dgamma and dbeta right in both; with data 'add' and a prior of 7 the "
        "inference step's dx is the same on mxnet-mkl 1.6.0 (written) and 7 more on 1.7.0. Seen on mxnet-mkl "
        "1.6.0 (MKL-DNN 1.0.4) and mxnet 1.7.0 (DNNL 1.3); not on mxnet-mkl 1.3.1/1.4.1/1.5.1 (native kernel "
        "there), the 1.6.0 'mxnet' wheel (no oneDNN), 1.7.0 with MXNET_MKLDNN_ENABLED=0, 1.8.0 or 1.9.1. With a "
        "1x1 Convolution of 8 filters in front, 1.4.1 and 1.5.1 show it too (the data gradient after a training "
        "step differs from a fresh process's) and 1.3.1 does not. In the source: GetBNBackward's key is the "
        "parameters and the two arrays' shapes and layouts (mkldnn_batch_norm-inl.h, 1.4.1 to 1.7.0), not the "
        "normalization flags that use_global_stats sets for an inference backward; 1.3.1 made the primitive on "
        "every call. Found by the fuzz job's sequences on 1.7.0 (`bnprops versions`: gluon-hybrid float32[1, 1, "
        "1, 1] inference_step, dx -0.316 for 0.640, after earlier training steps of that shape in the worker)."
    ),
    sequence=("train_step", "inference_step"),
    affects="dx",
    upstream="introduced by apache/mxnet#11301 ('MKLDNN Backward op cache', 1.4.0), which cached the backward "
    "primitive by parameters and shapes; fixed by the 'cache flags' change of apache/mxnet#17679 (BatchNormRelu "
    "fusion, master), in 1.8.0 through its v1.x backport apache/mxnet#18160, which adds the flags to the key; no "
    "MXNet issue reports it (searched 'mkldnn batchnorm backward cache train_mode=False')",
    releases=mxversion.Releases(
        since="1.4.0",
        fixed="1.8.0",
        probed=(("1.6.0", True), ("1.7.0", True), ("1.8.0", False), ("1.9.1", False)),
        why="apache/mxnet#11301 (1.4.0) cached the backward without the mode; apache/mxnet#18160 (1.8.0) keys it",
        basis="1.4.1 and 1.5.1 run oneDNN's BatchNorm only on input in oneDNN's layout with channels a multiple "
        "of 8 (batch_norm.cc, SupportMKLDNNBN; apache/mxnet#15870 relaxed it in 1.6.0), which no BatchNorm entry "
        "point gives (the probe's plain sequence shows it absent there): measured present after a Convolution; "
        "1.3.1 has no backward cache",
    ),
    shortest_on=("nd", {"x_shape": (3, 2, 1, 1)}),
    needs_backend="onednn",
)

DEVIATIONS = (ONEDNN_BACKWARD_CACHE_IGNORES_MODE,)

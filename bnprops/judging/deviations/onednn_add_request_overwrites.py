"""MXNet 1.6's oneDNN backward writes every gradient whatever its request: 'add' loses the prior."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation, lifted, minimal
from bnprops.judging.deviation_models import Context, Prediction, added_gradients
from bnprops.mx import mxversion


def onednn_add_request_overwrites(ctx: Context) -> list[Prediction]:
    """Each gradient requested with 'add' holds this call's gradient alone, as 'write' would leave it."""
    case = ctx.case
    if ctx.kernel != "onednn":
        return []
    found: list[Prediction] = []
    for target, quantity, prior in added_gradients(ctx):
        if target == "gamma" and case.fix_gamma:
            continue  # the fix_gamma branch writes 0: onednn-fix-gamma-add-wipes-dgamma, in 1.6 to 1.9.1 alike
        written: np.ndarray = ctx.expected[quantity] - prior
        # The bound of prior + gradient holds the gradient's own, plus one rounding of the sum.
        where = np.ones(written.shape, dtype=bool)
        found.append(Prediction(quantity, where, written, ctx.bound[quantity], certain=True))
    return found


ONEDNN_ADD_REQUEST_OVERWRITES = KnownDeviation(
    id="onednn-add-request-overwrites",
    summary="MXNet 1.6 on oneDNN: a gradient requested with grad_req='add' is overwritten with this call's "
    "gradient (the prior is lost; dx, dbeta, and dgamma without fix_gamma)",
    quantities=frozenset({"dx", "dgamma", "dbeta"}),
    conditions="MXNet 1.6 (mxnet-mkl 1.6.0); float32 4-D input with axis=1 (oneDNN's kernel there); grad_req "
    "'add' for data, beta, or gamma without fix_gamma (gamma under fix_gamma: onednn-fix-gamma-add-wipes-dgamma); "
    "every entry point; training or inference. Before 1.6 a plain call does not reach MKL-DNN "
    "(add-request-ignored holds there); the native kernel of 1.6 ignores 'add' (add-request-ignored)",
    model="each gradient requested with 'add' = the gradient 'write' gives (the oracle's prior + gradient less "
    "the prior), within the oracle's bound; the gradients requested with 'write' are right",
    predict=onednn_add_request_overwrites,
    evidence="mxnet-mkl 1.6.0 (MKL-DNN v1.0.4), direct runs on nd, sym, gluon, gluon-hybrid and npx, float32 "
    "(20, 1, 7, 7) and (4, 8, 3, 3), fix_gamma True and False, training and inference, each of data, gamma, beta "
    "requested with 'add' on a prior of 7: every one returns the gradient a 'write' call returns, the prior gone "
    "(gamma under fix_gamma: 0); float16, float64, 2-D and 3-D input (the native kernel) keep the prior "
    "(add-request-ignored). The property's case float32[20, 1, 7, 7], dy = 1, beta 'add' on a prior of -0.0892: "
    "dbeta = 980.0 where the oracle gives 979.91. mkldnn_batch_norm-inl.h at 1.6.0 writes diff_src into the "
    "data gradient and copies diff_scale_shift into gamma's and beta's without reading req; mxnet-mkl 1.3.1, "
    "1.4.1, 1.5.1 run no MKL-DNN primitive for a plain call (MKLDNN_VERBOSE) and keep the prior.",
    # dy shifted so that dbeta (sum dy = 2) shows beside the prior; 4-D: oneDNN's path in 1.6.
    reproducer=lambda: lifted(
        minimal([1.0, 2.0, 4.0, -3.0], "float32").with_(
            dy=np.array([[-0.5], [0.1666667], [0.8333333], [1.5]], dtype=np.float32),
            grad_req=("add", "write", "add"),
            prior_dx=np.full((4, 1), 5.0, dtype=np.float32),
            prior_dbeta=np.array([7.0], dtype=np.float32),
        )
    ),
    upstream="apache/mxnet#15870 (in 1.6.0) sent a plain call to MKL-DNN's backward, which wrote every gradient "
    "whatever its request; apache/mxnet#18499 (the report), fixed by apache/mxnet#18500 and its backport #18517 "
    "(v1.7.x, in 1.7.0: CreateMKLDNNMem with req for the data gradient, += under kAddTo for gamma and beta)",
    releases=mxversion.Releases(
        since="1.6.0",
        fixed="1.7.0",
        probed=(("1.3.1", False), ("1.4.1", False), ("1.5.1", False), ("1.6.0", True), ("1.7.0", False)),
        why="reached by apache/mxnet#15870 (1.6.0), fixed by apache/mxnet#18500 (backport #18517 in 1.7.0)",
    ),
    needs_backend="onednn",
    every_entry=True,
)

DEVIATIONS = (ONEDNN_ADD_REQUEST_OVERWRITES,)

"""oneDNN under fix_gamma overwrites an accumulated gamma gradient with 0."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation, lifted, minimal
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.mx import mxversion


def onednn_fix_gamma_add_wipes_dgamma(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if ctx.kernel != "onednn" or not case.fix_gamma or case.request("gamma") != "add":
        return []
    # The whole gradient buffer is overwritten with 0; visible where the prior was not 0.
    channels = ~ctx.undetermined
    zero = {"dgamma": np.zeros(case.channels)}
    return predict_over(ctx, ["dgamma"], channels, zero, zero, certain=True)


ONEDNN_FIX_GAMMA_ADD_WIPES_DGAMMA = KnownDeviation(
    id="onednn-fix-gamma-add-wipes-dgamma",
    upstream="apache/mxnet#15870 (in 1.6.0) first sent a plain call to MKL-DNN's backward, whose fix_gamma branch "
    "writes 0 into the gamma gradient without reading req; apache/mxnet#18500 (backports #18517 in 1.7.0, #18518) "
    "taught the rest of that backward grad_req='add' but left the branch as it was (mkldnn_batch_norm-inl.h, 1.6.0 "
    "to 1.9.1). No report found: searched apache/mxnet issues for 'mkldnn batchnorm fix_gamma grad_req add gamma "
    "gradient zero'",
    summary="oneDNN, fix_gamma and grad_req='add' for gamma: the accumulated gamma gradient is overwritten with 0",
    quantities=frozenset({"dgamma"}),
    conditions="MXNet 1.6 or later (mxnet-mkl 1.6.0, the 1.7+ wheels); float32 through oneDNN; fix_gamma=True; "
    "gamma's grad_req 'add' with a non-zero prior (training or inference); gluon cannot reach it (with scale=False "
    "gamma takes no gradient). Before 1.6 a plain call does not reach MKL-DNN (add-request-ignored holds there)",
    model=("dgamma = 0 exactly in every channel, whatever the prior held"),
    predict=onednn_fix_gamma_add_wipes_dgamma,
    evidence="sym, x (4, 3) float32, gamma buffer pre-filled with 7: oneDNN returns dgamma=[0, 0, 0], the native "
    "kernel (MXNET_MKLDNN_ENABLED=0) and float64 return [7, 7, 7], which is prior + 0 as 'add' requires. "
    "mkldnn_batch_norm-inl.h writes zeros into the gamma gradient under fix_gamma without looking at req. mxnet-mkl "
    "1.6.0: the same (nd, sym, npx; float32 (20, 1, 7, 7) and (4, 8, 3, 3), prior 7: dgamma = 0); mxnet-mkl 1.3.1, "
    "1.4.1, 1.5.1 keep the prior, as their native kernel does (a plain call runs no MKL-DNN primitive there).",
    # 4-D with axis=1: oneDNN's path in every release from 1.6 (2-D input reaches it from 1.8).
    reproducer=lambda: lifted(minimal([1.0, 2.0, 4.0], "float32")).with_(
        fix_gamma=True, grad_req=("write", "add", "write"), prior_dgamma=np.array([7.0], dtype=np.float32)
    ),
    releases=mxversion.Releases(
        since="1.6.0",
        probed=(
            ("1.3.1", False),
            ("1.4.1", False),
            ("1.5.1", False),
            ("1.6.0", True),
            ("1.7.0", True),
            ("1.8.0", True),
            ("1.9.1", True),
        ),
        why="reached by a plain call from apache/mxnet#15870 (1.6.0); the 'add' fix apache/mxnet#18500 left it",
    ),
    needs_backend="onednn",
    every_entry=True,
)

DEVIATIONS = (ONEDNN_FIX_GAMMA_ADD_WIPES_DGAMMA,)

"""oneDNN under fix_gamma overwrites an accumulated gamma gradient with 0."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import PROBED_WITH_ONEDNN, KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over


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
    upstream=none_found(
        "searched apache/mxnet issues for 'mkldnn batchnorm fix_gamma grad_req add gamma gradient zero' (no "
        "report); apache/mxnet#18500 (backports #18517 in 1.7.0, #18518) taught oneDNN's backward "
        "grad_req='add' for gamma and beta but left its fix_gamma branch writing 0 whatever the request "
        "(mkldnn_batch_norm-inl.h, 1.9.1)"
    ),
    summary="oneDNN, fix_gamma and grad_req='add' for gamma: the accumulated gamma gradient is overwritten with 0",
    quantities=frozenset({"dgamma"}),
    conditions="float32 through oneDNN; fix_gamma=True; gamma's grad_req 'add' with a non-zero prior (training or "
    "inference); gluon cannot reach it (with scale=False gamma takes no gradient)",
    model=("dgamma = 0 exactly in every channel, whatever the prior held"),
    predict=onednn_fix_gamma_add_wipes_dgamma,
    evidence="sym, x (4, 3) float32, gamma buffer pre-filled with 7: oneDNN returns dgamma=[0, 0, 0], the native "
    "kernel (MXNET_MKLDNN_ENABLED=0) and float64 return [7, 7, 7], which is prior + 0 as 'add' requires. "
    "mkldnn_batch_norm-inl.h writes zeros into the gamma gradient under fix_gamma without looking at req.",
    reproducer=lambda: minimal([1.0, 2.0, 4.0], "float32").with_(
        fix_gamma=True, grad_req=("write", "add", "write"), prior_dgamma=np.array([7.0], dtype=np.float32)
    ),
    releases=PROBED_WITH_ONEDNN,
    needs_backend="onednn",
    every_entry=True,
)

DEVIATIONS = (ONEDNN_FIX_GAMMA_ADD_WIPES_DGAMMA,)

"""Before MXNet 1.7 (apache/mxnet#18499) a gradient requested with 'add' is neither accumulated nor written."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation, minimal
from bnprops.judging.deviation_models import Context, Prediction, added_gradients
from bnprops.mx import mxversion


def add_request_ignored(ctx: Context) -> list[Prediction]:
    """MXNet before 1.7 (#18499): a gradient requested with 'add' is neither accumulated nor written."""
    if ctx.kernel == "onednn":
        return []  # 1.6's oneDNN backward writes instead (onednn-add-request-overwrites); before 1.6 none ran
    found: list[Prediction] = []
    for _, quantity, kept in added_gradients(ctx):
        where = np.ones(kept.shape, dtype=bool)
        # The buffer is left as it was, bit for bit: visible wherever this call's gradient is not 0.
        found.append(Prediction(quantity, where, kept, np.zeros(kept.shape), certain=True))
    return found


ADD_REQUEST_IGNORED = KnownDeviation(
    id="add-request-ignored",
    summary="Before MXNet 1.7, a gradient requested with grad_req='add' is not accumulated: the buffer keeps "
    "its prior and this call's gradient is lost (dx, dgamma and dbeta alike)",
    quantities=frozenset({"dx", "dgamma", "dbeta"}),
    conditions="MXNet < 1.7.0 (probed: 1.3.1 to 1.6.0); grad_req 'add' for data, gamma or beta; every entry point "
    "and dtype on the native kernel (the 1.3-1.6 'mxnet' wheels have no oneDNN; mxnet-mkl 1.3-1.5 send a plain "
    "call there too); training or inference. Not on 1.6's oneDNN kernel (onednn-add-request-overwrites)",
    model="each gradient requested with 'add' = its prior, bit for bit (the backward neither adds to the "
    "buffer nor writes it); the gradients requested with 'write' are right",
    predict=add_request_ignored,
    evidence="mxnet 1.6.0 and 1.5.1, nd under autograd, x=[1, 2, 4, -3] float32, dy=linspace(-1, 1)+0.5, "
    "priors 5 (dx) and 7 (dgamma, dbeta): with beta 'add', dbeta = [7] where 7 + sum(dy) = 9 is right; "
    "gamma 'add': dgamma = [7]; data 'add': dx = [5, 5, 5, 5]; float16/32/64 alike. 1.7.0 and later give "
    "9, 5.69 and 5 + dx. Not 'dbeta = the write value': the buffer is not touched at all. mxnet-mkl 1.3.1, "
    "1.4.1, 1.5.1: the same on every call, float32 4-D with axis=1 too (nd, sym, gluon, gluon-hybrid; (20, 1, 7, "
    "7) and (4, 8, 3, 3), fix_gamma True and False, training and inference), which MKL-DNN does not run there "
    "(runners.ONEDNN_PLAIN_INPUT_SINCE). Upstream: issue #18499 says the same ('the gradient of gamma and beta "
    "are not assigned to any value').",
    # dy's ramp sums to 0: shifted, so that this call's dbeta (sum(dy) = 2) shows beside the prior.
    reproducer=lambda: minimal([1.0, 2.0, 4.0, -3.0], "float32").with_(
        dy=np.array([[-0.5], [0.1666667], [0.8333333], [1.5]], dtype=np.float32),
        grad_req=("write", "write", "add"),
        prior_dbeta=np.array([7.0], dtype=np.float32),
    ),
    upstream="apache/mxnet#18499 (the bug), fixed by apache/mxnet#18500 on master and its backports "
    "#18517 (v1.7.x, in 1.7.0), #18518 (v1.x) and #18714 (v1.6.x, after 1.6.0: no release on PyPI has it)",
    releases=mxversion.Releases(
        fixed="1.7.0",
        probed=(
            ("1.3.1", True),
            ("1.4.1", True),
            ("1.5.1", True),
            ("1.6.0", True),
            ("1.7.0", False),
            ("1.8.0", False),
            ("1.9.1", False),
        ),
        why="apache/mxnet#18499, fixed by #18500 (backport #18517 in 1.7.0)",
    ),
    needs_backend="native",
)

DEVIATIONS = (ADD_REQUEST_IGNORED,)

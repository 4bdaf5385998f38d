"""npx's empty batch: dgamma and the moving statistics come out NaN."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import PROBED_WITH_NPX, KnownDeviation, empty_batch, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over


def empty_batch_nan(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.x.size or not case.uses_batch_stats:
        return []
    learnable = not case.fix_gamma and case.request("gamma") != "null"
    quantities = {"moving_mean", "moving_var"} | ({"dgamma"} if learnable else set())
    nan = {q: np.full(case.channels, np.nan) for q in quantities}
    zero = {q: np.zeros(case.channels) for q in quantities}
    everything = np.ones(case.channels, dtype=bool)
    return predict_over(ctx, quantities, everything, nan, zero, certain=True, breaks_invariants=True)


EMPTY_BATCH_NAN = KnownDeviation(
    id="empty-batch-nan",
    upstream=none_found(
        "searched apache/mxnet issues for 'npx batch_norm empty zero-size input nan moving mean' (no report); "
        "zero-size input reaches BatchNorm through the numpy shape semantics of apache/mxnet#14661 ('Support "
        "zero-dim and zero-size tensors in MXNet')"
    ),
    summary="An empty batch (numpy shape semantics) gives dgamma = NaN instead of the empty sum 0, and turns "
    "the moving statistics into NaN instead of leaving them alone",
    quantities=frozenset({"dgamma", "moving_mean", "moving_var"}),
    conditions="x with no elements, which only npx's numpy shape semantics accept (in legacy shapes 0 means "
    "unknown); batch statistics; either kernel, every dtype",
    model=("dgamma (learnable gamma), moving_mean and moving_var all NaN"),
    predict=empty_batch_nan,
    evidence="npx.batch_norm on x of shape (0, 3) under np_shape: y and dx are empty, dbeta = [0 0 0] (the "
    "empty sum), dgamma = [nan nan nan] on oneDNN and native, float16/32/64; with fix_gamma dgamma is 0. "
    "dgamma = sum(dy * xhat) over no elements is 0 whatever xhat is. The moving statistics become NaN (the "
    "update formula with a batch mean of 0/0); bnprops's contract (bnprops/judging/invariants.py) is that an "
    "empty batch leaves them as they were, or the call is rejected.",
    reproducer=lambda: empty_batch("float32", fix_gamma=False),
    entries=frozenset({"npx"}),
    releases=PROBED_WITH_NPX,
    every_entry=True,
)

DEVIATIONS = (EMPTY_BATCH_NAN,)

"""SyncBatchNorm's one-pass variance E[x^2] - E[x]^2 can come out negative: NaN outputs, a negative moving_var."""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import KnownDeviation, minimal, none_found
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.model.case import Case
from bnprops.model.oracle import momentum_as_applied
from bnprops.model.sync import SyncEvaluation, with_split
from bnprops.mx import mxversion
from bnprops.mx.sync import ENTRIES


def one_pass_variance_negative(ctx: Context) -> list[Prediction]:
    """Where the one-pass variance's error bound reaches below 0 and ``m old`` is no larger than the part of it
    that can be negative: the moving variance may be negative. The value stays within its bound (the oracle's
    within the model): only the invariant 'never negative' breaks. (y, dx and dgamma are NaN where var + eps
    comes out negative: those channels are indeterminate under the model, never judged.)"""
    case = ctx.case
    if not case.uses_batch_stats or not case.x.size:
        return []
    evaluation = ctx.evaluation if isinstance(ctx.evaluation, SyncEvaluation) else SyncEvaluation(case)
    st = evaluation.propagated("deterministic")
    mom, rest = momentum_as_applied(case)
    with ignoring("invalid", "over"):
        possible = (st.var < st.e_var) & (mom * case.moving_var.astype(np.float64) <= rest * st.e_var)
    return predict_over(
        ctx, ["moving_var"], possible & ctx.finite_channels, ctx.expected, certain=False, breaks_invariants=True
    )


def reproducer() -> Case:
    rng = np.random.default_rng(3)
    values = (300.0 + 0.01 * rng.standard_normal(64)).astype(np.float32).tolist()
    return with_split(minimal(values, "float32", momentum=0.0), (32, 32))


SYNC_ONE_PASS_VARIANCE_NEGATIVE = KnownDeviation(
    id="sync-one-pass-variance-negative",
    upstream=none_found(
        "searched apache/mxnet issues for 'SyncBatchNorm different batch size per device mean' and "
        "'SyncBatchNorm variance' (no report); introduced with the operator, apache/mxnet#11502 ('[MXNET-614] "
        "Adding Synchronized Batch Normalization', 1.3.0); the same formula's negative variance: "
        "https://github.com/google/flax/issues/1491, https://github.com/tensorflow/tensorflow/issues/3290"
    ),
    releases=mxversion.Releases(
        probed=(
            ("1.3.1", True),
            ("1.9.1", True),
        ),
        basis="sync_batch_norm-inl.h's forward, merge and backward are the same from 1.3.1 to 1.9.1 (changed only "
        "by refactors: mxnet::Tuple, nullptr, 5-D support apache/mxnet#14542, licence headers)",
    ),
    summary="SyncBatchNorm computes var = E[x^2] - E[x]^2 in float32: data with a mean large against its "
    "spread get a negative variance, NaN outputs and gradients, and a negative moving variance",
    quantities=frozenset({"moving_var"}),
    conditions="SyncBatchNorm (sync-nd, sync-sym, sync-gluon), training with batch statistics; a channel "
    "whose variance is below the one-pass error u E[x^2] (mean^2/var beyond ~1/u), and momentum * old "
    "moving_var no larger than that error; y, dx and dgamma are NaN where var + eps comes out below 0",
    model="the oracle's moving_var within the one-pass error model's bound, which reaches below 0 there: "
    "the invariant 'never negative' breaks, and only there; y, dx and dgamma lie in the model's "
    "indeterminate channels (the error exceeds var + eps), where nothing is judged",
    predict=one_pass_variance_negative,
    evidence="sync_batch_norm-inl.h (1.9.1), Forward: var = scale * sumall_except_dim<1>(square(data)), merged, "
    "then var = var - square(mean), no clamp. Probe docs/probes/sync_batchnorm.py: x = 300 + 0.01 N(0,1), "
    "2 devices x 32: true var 1.124e-04, SyncBatchNorm's -1.5625e-02 (an ulp of E[x^2] ~ 9e4 is 7.8e-3), "
    "64 of 64 outputs NaN; plain BatchNorm (two-pass) 1.1244e-04. The reproducer (momentum 0): moving_var -0.03125, "
    "every y NaN.",
    reproducer=reproducer,
    entries=frozenset(ENTRIES),
)

DEVIATIONS = (SYNC_ONE_PASS_VARIANCE_NEGATIVE,)

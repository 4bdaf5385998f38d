"""BatchNormWithReLU's backward after an inference forward masks the head with a ReLU workspace no forward wrote.

oneDNN's forward_inference writes no workspace, yet the backward binds the operator's workspace output as
the ReLU mask: each element's head passes or not by a bit of memory nobody set. The model is BatchNorm's
backward (the one the entry runs: the global-statistics one, or the executor's training formula on the
moving statistics) for the head ``dy * m``, over every mask m: per quantity, the interval that holds it
whatever m is. The judgement (judging.with_relu) keeps the whole head for these calls, so that the
correct mask is one of the masks and the oracle is BatchNorm's for the unmasked head.
"""

from __future__ import annotations

import numpy as np

from bnprops.base import reproduction
from bnprops.base.float_warnings import ignoring
from bnprops.judging.declarations import KnownDeviation
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.model.case import Case, Outputs
from bnprops.model.error_model import unit_roundoff
from bnprops.model.oracle import eps_as_applied, per_channel
from bnprops.mx import mxversion

QUANTITIES = frozenset({"dx", "dgamma", "dbeta"})


def masked_hull(case: Case, stats: tuple[np.ndarray, np.ndarray], *, trains: bool) -> tuple[Outputs, Outputs]:
    """(centre, radius) per gradient of the interval that holds BatchNorm's backward on the statistics
    ``stats`` for the head ``dy * m``, whatever the mask m in {0, 1}: a masked term t lies in t/2 +- |t|/2, a
    sum of them in sum(t)/2 +- sum(|t|)/2. ``trains``: the training formula for dx (the executor's backward),
    ``g invstd (dy' - mean(dy') - xhat mean(dy' xhat))``, bounded term by term; else ``g invstd dy'``.
    Under 'add' the prior is added to the centre."""
    mean, var = stats
    red = case.reduce_axes
    g = per_channel(case, np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64))
    dy = case.dy.astype(np.float64)
    with ignoring("divide", "invalid", "over"):
        invstd = per_channel(case, 1.0 / np.sqrt(var + eps_as_applied(case)))
        xhat = (case.x.astype(np.float64) - per_channel(case, mean)) * invstd
        centre: Outputs = {"dbeta": dy.sum(axis=red) / 2, "dgamma": (dy * xhat).sum(axis=red) / 2}
        radius: Outputs = {"dbeta": np.abs(dy).sum(axis=red) / 2, "dgamma": np.abs(dy * xhat).sum(axis=red) / 2}
        if trains:
            m = max(case.reduction_length, 1)
            mean_dy, mean_dyx = (per_channel(case, centre[q] * 2 / m) for q in ("dbeta", "dgamma"))
            abs_dy, abs_dyx = (per_channel(case, radius[q] * 2 / m) for q in ("dbeta", "dgamma"))
            centre["dx"] = g * invstd * (dy - mean_dy - xhat * mean_dyx) / 2
            radius["dx"] = np.abs(g * invstd) * (np.abs(dy) + abs_dy + np.abs(xhat) * abs_dyx) / 2
        else:
            centre["dx"] = g * invstd * dy / 2
            radius["dx"] = np.abs(g * invstd * dy) / 2
    if case.fix_gamma:
        centre["dgamma"], radius["dgamma"] = np.zeros(case.channels), np.zeros(case.channels)
    for target, q in (("data", "dx"), ("gamma", "dgamma"), ("beta", "dbeta")):
        prior = case.prior(target)
        if prior is not None and not (q == "dgamma" and case.fix_gamma):
            centre[q] = centre[q] + prior.astype(np.float64)
    return centre, radius


def _predict(ctx: Context, *, trains: bool) -> list[Prediction]:
    case = ctx.case
    if case.is_train:
        return []
    centre, radius = masked_hull(case, ctx.statistics, trains=trains)
    # float32 sums of up to M + 8 rounded terms, each at most the radius's terms in magnitude (2 * radius).
    rounding = 2 * (case.reduction_length + 8) * unit_roundoff("float32")
    with ignoring("invalid", "over"):
        tolerance = {q: radius[q] * (1 + 2 * rounding) + ctx.bound[q] for q in radius if q in ctx.bound}
    quantities = [q for q in ("dx", "dgamma", "dbeta") if q in tolerance]
    return predict_over(ctx, quantities, ctx.finite_channels, centre, tolerance, certain=False)


def global_statistics_backward(ctx: Context) -> list[Prediction]:
    """autograd's backward(train_mode=False): the global-statistics backward with an unwritten mask."""
    return _predict(ctx, trains=False)


def executor_backward(ctx: Context) -> list[Prediction]:
    """The executor's backward runs with is_train=True: the training formula on the moving statistics (saved
    by the inference forward), unless use_global_stats."""
    return _predict(ctx, trains=not ctx.case.use_global_stats)


def reproducer_case() -> Case:
    """Two channels of 3 x 3 images, both signs in each, dy all ones: the right dbeta counts y > 0."""
    x = np.array(
        [
            [
                [[1.0, -2.0, 0.5], [3.0, -1.0, 2.0], [-0.5, 1.5, -3.0]],
                [[0.2, 2.2, -1.2], [-0.7, 1.1, 0.4], [2.5, -2.5, 0.9]],
            ]
        ]
        * 2,
        np.float32,
    )
    return Case(
        x=x,
        dy=np.ones_like(x),
        gamma=np.array([1.5, 0.5], np.float32),
        beta=np.array([0.25, -0.1], np.float32),
        moving_mean=np.array([0.1, -0.2], np.float32),
        moving_var=np.array([1.0, 2.0], np.float32),
        fix_gamma=False,
        is_train=False,
        regime="reproducer",
    )


_BODY = '''
import mxnet as mx


def call(x, gamma, beta, moving_mean, moving_var, eps):
    """mx.nd.contrib.BatchNormWithReLU in inference mode (autograd.record and backward with train_mode=False)."""
    data = mx.nd.array(x)
    data.attach_grad()
    params = [mx.nd.array(a) for a in (gamma, beta)]
    for p in params:
        p.attach_grad()
    with mx.autograd.record(train_mode=False):
        y = mx.nd.contrib.BatchNormWithReLU(
            data, *params, mx.nd.array(moving_mean), mx.nd.array(moving_var), eps=eps, fix_gamma=False
        )
    y.backward(mx.nd.ones_like(y), train_mode=False)
    return y.asnumpy(), data.grad.asnumpy(), params[0].grad.asnumpy(), params[1].grad.asnumpy()


def main(call=call, tries=5):
    x = np.array(X, np.float32)
    gamma, beta = np.array(GAMMA, np.float32), np.array(BETA, np.float32)
    mm, mv, eps = np.array(MEAN, np.float32), np.array(VAR, np.float32), 1e-3
    worst, lines = 0.0, []
    for _ in range(tries):  # garbage may, by chance, be the right mask once
        y, dx, dgamma, dbeta = call(x, gamma, beta, mm, mv, eps)
        invstd = 1 / np.sqrt(mv.astype(np.float64) + eps)
        xhat = (x - mm[None, :, None, None]) * invstd[None, :, None, None]
        mask = y > 0  # the ReLU's gradient: BatchNorm's backward for the head ones * mask
        want = {
            "dx": gamma[None, :, None, None] * invstd[None, :, None, None] * mask,
            "dgamma": (xhat * mask).sum(axis=(0, 2, 3)),
            "dbeta": mask.sum(axis=(0, 2, 3)).astype(np.float64),
        }
        got = {"dx": dx, "dgamma": dgamma, "dbeta": dbeta}
        for q in want:
            err = float(np.max(np.abs(got[q] - want[q]) / (1 + np.abs(want[q]))))
            worst = max(worst, err)
            lines.append(f"{q}: MXNet {np.ravel(got[q])[:4]} expected {np.ravel(want[q])[:4]} (rel. error {err:.3g})")
    return verdict(worst > 1e-4, "\\n".join(lines))
'''


def reproducer_script() -> str:
    """The standalone reproducer (mxnet and numpy only; bnprops.base.reproduction's contract)."""
    case = reproducer_case()
    values = {
        "X": case.x.tolist(),
        "GAMMA": case.gamma.tolist(),
        "BETA": case.beta.tolist(),
        "MEAN": case.moving_mean.tolist(),
        "VAR": case.moving_var.tolist(),
    }
    body = "\n".join(f"{k} = {v!r}" for k, v in values.items()) + "\n" + _BODY
    return reproduction.script(
        kind="known deviation",
        ident=RELU_INFERENCE_BACKWARD_UNWRITTEN_MASK.id,
        title=RELU_INFERENCE_BACKWARD_UNWRITTEN_MASK.summary,
        about=["mx.nd.contrib.BatchNormWithReLU, autograd.record(train_mode=False), backward(train_mode=False)."],
        persists="dx, dgamma or dbeta differ from BatchNorm's for the head masked by y > 0",
        body=body,
        recorded=RELU_INFERENCE_BACKWARD_UNWRITTEN_MASK.id,
    )


_EVIDENCE = (
    "mkldnn_batch_norm-inl.h (1.9.1): the forward's _GetFwd takes prop_kind::forward_inference when "
    "!ctx.is_train, and binds outputs[3] as MKLDNN_ARG_WORKSPACE, which an inference primitive does not write "
    "(its workspace_desc is empty); MKLDNNBatchNormBackwardImpl binds inputs[8], that workspace, as the mask "
    "of fuse_norm_relu. Runs (float32 (3, 3, 7, 5), moving mean [.2, -.1, 0], var [1, 2, .5]), twice each: "
    "nd and gluon-hybrid give a different dbeta every call ([13.2, -3.1, -7.0], then [-2.8, -4.1, 1.4], for "
    "[3.3, -4.2, -3.3]) and every dx element is 0 or g dy / sqrt(moving_var + eps); sym gives the training "
    "formula's dx (use_global_stats=False) with a mask; y, the moving statistics and plain BatchNorm on the "
    "same calls are right; training mode, use_global_stats too, is right (forward_training writes the mask)."
)
#: Every release that has the operator: it came in 1.8.0 (apache/mxnet#18160); before, there is no call to
#: show it (the member is unavailable, not the deviation absent). Probed by the standalone reproducer on the
#: 1.8.0.post0 and 1.9.1 CPU wheels (oneDNN): exit 1 in both.
_RELEASES = mxversion.Releases(
    probed=(("1.8.0", True), ("1.9.1", True)),
    why="the operator exists from 1.8.0 (apache/mxnet#18160); 2.0's apache/mxnet#21122 made the ReLU a post-op",
)
_UPSTREAM = (
    "none found; the same class as apache/mxnet#10994 (oneDNN backward after an is_train=False forward); "
    "the fused flag came with the operator, apache/mxnet#18160"
)

RELU_INFERENCE_BACKWARD_UNWRITTEN_MASK = KnownDeviation(
    id="relu-inference-backward-unwritten-mask",
    summary="BatchNormWithReLU: backward(train_mode=False) masks the head with a ReLU workspace no forward wrote",
    quantities=QUANTITIES,
    conditions="BatchNormWithReLU through autograd (nd-relu, gluon-relu); inference mode: record and "
    "backward with train_mode=False (float32, 4-D, axis 1, oneDNN: all the operator runs); y and the moving "
    "statistics are right",
    model="BatchNorm's global-statistics backward for the head dy * m with any mask m in {0, 1}: each of dx, "
    "dgamma, dbeta within the interval over all masks (masked_hull: sum(t)/2 +- sum(|t|)/2), plus M + 8 "
    "float32 roundings and the oracle's bound",
    predict=global_statistics_backward,
    evidence=_EVIDENCE,
    reproducer=reproducer_case,
    entries=frozenset({"nd-relu", "gluon-relu"}),
    upstream=_UPSTREAM,
    releases=_RELEASES,
    needs_backend="onednn",
    script=reproducer_script,
)

RELU_SYM_INFERENCE_BACKWARD_UNWRITTEN_MASK = KnownDeviation(
    id="relu-sym-inference-backward-unwritten-mask",
    summary="BatchNormWithReLU executor: backward after forward(is_train=False) masks with an unwritten workspace",
    quantities=QUANTITIES,
    conditions="mx.sym.contrib.BatchNormWithReLU executor (sym-relu); forward(is_train=False) then backward() "
    "(which runs with is_train=True: the training formula on the moving statistics unless use_global_stats, "
    "as sym-inference-backward-trains); y is right",
    model="BatchNorm's backward as the executor runs it (training formula on the moving statistics, or the "
    "global-statistics one under use_global_stats) for the head dy * m with any mask m: the interval over all "
    "masks (masked_hull, the training formula bounded term by term), plus M + 8 float32 roundings and the "
    "oracle's bound",
    predict=executor_backward,
    evidence=_EVIDENCE,
    reproducer=reproducer_case,
    entries=frozenset({"sym-relu"}),
    upstream=_UPSTREAM,
    releases=_RELEASES,
    needs_backend="onednn",
    script=reproducer_script,
)

DEVIATIONS = (RELU_INFERENCE_BACKWARD_UNWRITTEN_MASK, RELU_SYM_INFERENCE_BACKWARD_UNWRITTEN_MASK)

"""The oneDNN graph rewrite that folds BatchNorm into the Convolution before it, as a member of the family.

A case runs as a 1x1 (1x1x1) convolution with identity weights and no bias, then its BatchNorm, so that
BatchNorm's input is exactly the case's x; the graph is rewritten by ``sym.optimize_for('MKLDNN')`` (fold-sym),
``HybridBlock.hybridize(backend='MKLDNN')`` (fold-gluon) or a plain bind without gradients (fold-bind), and the
runner refuses to report a graph that kept its BatchNorm. Inference is what the rewrite is for; training through
it is run as a user would, unrefused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import mxnet as mx
import numpy as np

from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, Case, Outputs
from bnprops.model.folding import fold_overflows
from bnprops.mx import mxversion, rewrite_snippets
from bnprops.mx.runners import ONEDNN_BUILT, ONEDNN_ENABLED
from bnprops.mx.runners import adapt as adapt_plain

#: The subgraph operator a folded Convolution + BatchNorm becomes.
FOLDED_OP = "_sg_mkldnn_conv"
BACKEND = "MKLDNN"

KERNELS: dict[str, str | None] = {
    "onednn": None,
    "native": "oneDNN only: the MKLDNN subgraph backend and its fused convolution exist only in the oneDNN "
    "build, and with MXNET_MKLDNN_ENABLED=0 the backend is disabled (its 'enable' attribute), so nothing folds",
}


def unavailable_reason() -> str | None:
    """Why this MXNet cannot fold (None if it can): the subgraph backend needs a oneDNN build, enabled."""
    if not ONEDNN_BUILT:
        return f"MXNet {mx.__version__} was built without oneDNN: it has no MKLDNN subgraph backend"
    if not ONEDNN_ENABLED:
        return "oneDNN is disabled here (MXNET_MKLDNN_ENABLED=0): the MKLDNN subgraph backend does not run"
    if not hasattr(mx.sym.Symbol, "optimize_for") or mxversion.parse(mxversion.running()) < mxversion.parse("1.7.0"):
        return (
            f"MXNet {mx.__version__}: the fold is checked from 1.7 (1.6's optimize_for takes no backend "
            "argument, and its plain bind does not fold)"
        )
    return None


#: Before it, optimize_for('MKLDNN') on Convolution + BatchNorm raises "Check failed: input_nid <
#: simple_nodes->size()" (1.7.0, 1.8.0; probed); a plain bind still folds. Fixed with apache/mxnet#19263
#: (v1.x backport #20142).
OPTIMIZE_FOR_SINCE = "1.9.0"
#: The entries that partition the graph by optimize_for or hybridize(backend=...).
OPTIMIZE_FOR_ENTRIES = frozenset({"fold-sym", "fold-gluon", "fold-relu-sym"})


def entry_unavailable_reason(entry: str) -> str | None:
    """Why this release cannot run one of the member's entries though it has the member, or None."""
    if entry in OPTIMIZE_FOR_ENTRIES and mxversion.parse(mxversion.running()) < mxversion.parse(OPTIMIZE_FOR_SINCE):
        return (
            f"MXNet {mxversion.running()}'s optimize_for('MKLDNN') raises on Convolution + BatchNorm "
            "(input_nid < simple_nodes->size(); apache/mxnet#19263, in 1.9.0): fold-bind folds there"
        )
    return None


def unexpressible_reason(case: Case) -> str | None:
    """Why a Convolution + BatchNorm cannot carry ``case`` through the fold, or None."""
    if case.dtype != "float32":
        return f"the fold runs float32 only (the subgraph selects float32 convolutions), not {case.dtype}"
    if case.x.ndim not in (4, 5):
        return f"the fold takes 2-D and 3-D convolutions only (4-D or 5-D data), not {case.x.ndim}-D"
    if case.channel_axis != 1 and case.shape[case.channel_axis] != case.shape[1]:
        return (
            f"BatchNorm's axis {case.axis} has {case.channels} channels, the convolution {case.shape[1]} filters: "
            "the folded graph fails to create its oneDNN primitive"
        )
    if case.output_mean_var:
        return "the folded convolution has one output: BatchNorm's mean and invstd outputs are gone"
    if not np.isfinite(case.x).all():
        return "a convolution mixes channels (0 * inf is NaN): the identity weights carry finite data only"
    if fold_overflows(case):
        return "the fold's intermediates (alpha x, alpha moving_mean, beta - alpha moving_mean) overflow float32"
    return None


def _network(case: Case, *, gluon: bool, kernel: tuple[int, ...] | None = None, relu: bool = False) -> Any:
    kernel = (1,) * (case.x.ndim - 2) if kernel is None else tuple(kernel)
    pad = tuple(k // 2 for k in kernel)
    params = dict(eps=case.eps, momentum=case.momentum, fix_gamma=case.fix_gamma, axis=case.axis)
    params["use_global_stats"] = case.use_global_stats
    if gluon:
        from mxnet.gluon import nn

        conv = (nn.Conv2D if len(kernel) == 2 else nn.Conv3D)(
            case.shape[1], kernel, use_bias=False, in_channels=case.shape[1]
        )
        bn = nn.BatchNorm(
            axis=case.axis,
            momentum=case.momentum,
            epsilon=case.eps,
            center=case.request("beta") != "null",
            scale=not case.fix_gamma,
            use_global_stats=case.use_global_stats,
            in_channels=case.channels,
        )
        net = nn.HybridSequential()
        net.add(conv, bn)
        return net
    conv = mx.sym.Convolution(
        mx.sym.var("data"), num_filter=case.shape[1], kernel=kernel, pad=pad, no_bias=True, name="conv"
    )
    bn = mx.sym.BatchNorm(conv, name="bn", **params)
    return mx.sym.Activation(bn, act_type="relu", name="relu") if relu else bn


def identity_weight(case: Case) -> np.ndarray:
    """The convolution's weights: output channel k reads input channel k alone, with weight 1."""
    c = case.shape[1]
    return np.eye(c, dtype=np.float32).reshape((c, c) + (1,) * (case.x.ndim - 2))


def folded_ops(symbol: Any) -> list[str]:
    """The operators of a symbol's graph (variables left out)."""
    return sorted({n["op"] for n in json.loads(symbol.tojson())["nodes"] if n["op"] != "null"})


def _require_folded(symbol: Any) -> None:
    ops = folded_ops(symbol)
    if "BatchNorm" in ops or FOLDED_OP not in ops:
        raise RuntimeError(f"the MKLDNN backend did not fold BatchNorm into the convolution: the graph has {ops}")


def run_fold_sym(case: Case) -> Outputs:
    """Conv + BatchNorm, ``optimize_for('MKLDNN', args, aux)``, bound with the case's requests, forward, backward."""
    return _run_bound(case, optimize=True)


def run_fold_relu_sym(case: Case) -> Outputs:
    """Conv + BatchNorm + ReLU, ``optimize_for('MKLDNN')``: one _sg_mkldnn_conv with a ReLU post-op."""
    return _run_bound(case, optimize=True, relu=True)


def run_fold_bind(case: Case) -> Outputs:
    """Conv + BatchNorm bound with every grad_req 'null' (as Module's inference binds): a oneDNN build's default
    subgraph backend folds it at bind. No gradient exists: the runner returns y and the parameters' state."""
    return _run_bound(case, optimize=False)


#: A drawn convolution's entry (run_fold_conv): inference y only, judged by judging.folding.judge_fold_conv.
CONV_ENTRY = "fold-conv"
#: Entries whose graph takes no gradient at all: their judgement leaves the gradients out.
INFERENCE_ONLY = frozenset({"fold-bind"})


def run_fold_conv(case: Case, weight: np.ndarray) -> Outputs:
    """A drawn convolution (``weight``: K = C filters of k x k, zero-padded by k // 2) then BatchNorm, folded by
    ``optimize_for('MKLDNN')``, inference: y only. BatchNorm's input is the convolution's output, not x."""
    return _run_bound(case.with_(is_train=False), optimize=True, weight=weight, gradients=False)


def _run_bound(
    case: Case, *, optimize: bool, weight: np.ndarray | None = None, gradients: bool = True, relu: bool = False
) -> Outputs:
    kernel = (1,) * (case.x.ndim - 2) if weight is None else weight.shape[2:]
    sym = _network(case, gluon=False, kernel=kernel, relu=relu)
    args = {
        "data": mx.nd.array(case.x),
        "conv_weight": mx.nd.array(identity_weight(case) if weight is None else weight),
        "bn_gamma": mx.nd.array(case.gamma),
        "bn_beta": mx.nd.array(case.beta),
    }
    aux = {"bn_moving_mean": mx.nd.array(case.moving_mean), "bn_moving_var": mx.nd.array(case.moving_var)}
    names = {"data": "data", "gamma": "bn_gamma", "beta": "bn_beta"}
    grads: dict[str, Any] = {}
    if optimize:
        sym = sym.optimize_for(BACKEND, args, aux)
        _require_folded(sym)
    if optimize and gradients:
        grads = {names[t]: mx.nd.zeros_like(args[names[t]]) for t in GRAD_TARGETS if case.request(t) != "null"}
        for t in GRAD_TARGETS:
            prior = case.prior(t)
            if prior is not None:
                grads[names[t]][:] = prior
    req = {names[t]: case.request(t) if grads else "null" for t in GRAD_TARGETS} | {"conv_weight": "null"}
    exe = sym.bind(mx.cpu(), args, args_grad=grads or None, grad_req=req, aux_states=aux)
    if not optimize:
        _require_folded(exe.get_optimized_symbol())
    y = exe.forward(is_train=case.is_train)[0]
    out: Outputs = {"y": y.asnumpy()}
    out["forward_moving_mean"], out["forward_moving_var"] = (aux[k].asnumpy() for k in aux)
    if grads:
        exe.backward(mx.nd.array(case.dy))
    for t in GRAD_TARGETS:
        if names[t] in grads:
            out[GRADIENT_OF[t]] = grads[names[t]].asnumpy()
    out["moving_mean"], out["moving_var"] = (aux[k].asnumpy() for k in aux)
    out["gamma"] = args["bn_gamma"].asnumpy()
    return out


def run_fold_gluon(case: Case) -> Outputs:
    """HybridSequential(Conv, BatchNorm).hybridize(backend='MKLDNN'): inference outside autograd.record(),
    training inside it, as a user runs it."""
    case = adapt_plain("gluon", case)
    net = _network(case, gluon=True)
    net.initialize()
    net[0].weight.set_data(mx.nd.array(identity_weight(case)))
    net[0].weight.grad_req = "null"
    bn = net[1]
    for param, value in (
        (bn.gamma, case.gamma),
        (bn.beta, case.beta),
        (bn.running_mean, case.moving_mean),
        (bn.running_var, case.moving_var),
    ):
        param.set_data(mx.nd.array(value))
    for target, param in (("gamma", bn.gamma), ("beta", bn.beta)):
        if param.grad_req != "null":
            param.grad_req = case.request(target)
            prior = case.prior(target)
            if prior is not None:
                param.grad()[:] = prior
    net.hybridize(backend=BACKEND)
    data = mx.nd.array(case.x)
    data.attach_grad(grad_req=case.request("data"))
    if case.prior("data") is not None:
        data.grad[:] = case.prior("data")
    if not case.is_train:
        inferred = net(data)  # inference, as gluon runs outside autograd.record()
    with mx.autograd.record(train_mode=case.is_train):
        y = net(data)
    _require_folded(net._cached_graph[1])
    out: Outputs = {"y": (y if case.is_train else inferred).asnumpy()}
    out["forward_moving_mean"] = bn.running_mean.data().asnumpy()
    out["forward_moving_var"] = bn.running_var.data().asnumpy()
    y.backward(mx.nd.array(case.dy), train_mode=case.is_train)
    if case.request("data") != "null":
        out["dx"] = data.grad.asnumpy()
    for target, param in (("gamma", bn.gamma), ("beta", bn.beta)):
        if param.grad_req != "null":
            out[GRADIENT_OF[target]] = param.grad().asnumpy()
    out["moving_mean"], out["moving_var"] = bn.running_mean.data().asnumpy(), bn.running_var.data().asnumpy()
    out["gamma"] = bn.gamma.data().asnumpy()
    return out


RUNNERS: dict[str, Callable[[Case], Outputs]] = {
    "fold-sym": run_fold_sym,
    "fold-gluon": run_fold_gluon,
    "fold-bind": run_fold_bind,
    "fold-relu-sym": run_fold_relu_sym,
}
#: Entries whose graph ends in the ReLU the fold takes as a post-op: judged with y lifted (judging.folding).
WITH_RELU = frozenset({"fold-relu-sym"})


def adapt(entry: str, case: Case) -> Case:
    """The case as the entry can express it: fold-gluon takes gluon's mapping (no gamma gradient under scale=False)."""
    return adapt_plain("gluon" if entry.endswith("gluon") else entry, case)


def snippet(case: Case, entry: str, *, backend: str = "onednn") -> str:
    """The standalone reproducer of ``case`` through ``entry`` (mxnet and numpy only; oneDNN is the only
    kernel, so ``backend`` is always onednn)."""
    return rewrite_snippets.snippet(case, entry)

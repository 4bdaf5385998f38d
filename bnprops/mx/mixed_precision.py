"""BatchNorm in graphs converted by AMP (mx.contrib.amp): where AMP casts it (bfloat16) and where it keeps it (float16).

``amp-sym`` and ``amp-gluon`` convert FullyConnected(identity, flatten=False) -> BatchNorm(axis=-1) to bfloat16
(``convert_model``, ``convert_hybrid_block``): the identity layer is in AMP's bfloat16 list, so BatchNorm receives
bfloat16 data, exactly the case's x (bfloat16 values), keeps float32 gamma, beta and moving statistics, and
writes bfloat16 y and dx (verified by a monitor run). ``amp-fp16-sym`` converts a lone BatchNorm to float16: on
CPU no float16 producer runs (Convolution and FullyConnected raise), and AMP keeps BatchNorm in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import mxnet as mx
import numpy as np

from bnprops.model.bfloat16 import is_bfloat16
from bnprops.model.case import GRAD_TARGETS, WRITE_ALL, Case, Outputs
from bnprops.mx import mxversion
from bnprops.mx.runners import ONEDNN_ENABLED, BackendUnavailable, adapt
from bnprops.mx.snippets import kernel_header

BF16_ENTRIES = ("amp-sym", "amp-gluon")
FP16_ENTRY = "amp-fp16-sym"
#: The dtype BatchNorm's data has in each entry's converted graph (verified by a monitor run, see the docs).
RUNS_IN = {"amp-sym": "bfloat16", "amp-gluon": "bfloat16", FP16_ENTRY: "float32"}
KERNELS: dict[str, str | None] = {"onednn": None, "native": None}
#: Why the bfloat16 entries cannot run on the native kernel (a run with MXNET_MKLDNN_ENABLED=0).
NATIVE_BF16 = (
    "bfloat16 runs only through oneDNN: with MXNET_MKLDNN_ENABLED=0 FullyConnected raises 'Unsupported type 12'"
)


def unavailable_reason() -> str | None:
    """Why this MXNet has no AMP, or None."""
    contrib = getattr(mx, "contrib", None)
    try:
        from mxnet.contrib import amp
    except ImportError:
        return f"MXNet {mx.__version__} has no mx.contrib.amp"
    missing = [n for n in ("convert_model", "convert_hybrid_block") if not hasattr(amp, n)]
    return f"mx.contrib.amp has no {', '.join(missing)}" if missing or contrib is None else None


#: bfloat16 AMP came with apache/mxnet#17265: before it, convert_model takes target_dtype float16 only.
BF16_SINCE = "1.7.0"


def bf16_unavailable_reason() -> str | None:
    """Why this MXNet's AMP cannot convert to bfloat16, or None."""
    if mxversion.parse(mxversion.running()) < mxversion.parse(BF16_SINCE):
        running = mxversion.running()
        return f"MXNet {running}'s AMP converts to float16 only (bfloat16 AMP: {BF16_SINCE}, apache/mxnet#17265)"
    return None


def kernel_reason(entry: str) -> str | None:
    """Why ``entry`` cannot run on this process's CPU kernel, or None."""
    return NATIVE_BF16 if entry in BF16_ENTRIES and not ONEDNN_ENABLED else None


def unexpressible_reason(case: Case, entry: str) -> str | None:
    """Why ``entry`` cannot run ``case``, or None."""
    if case.dtype != "float32":
        return f"AMP converts float32 graphs: {case.dtype} data is not AMP's to cast"
    gluon_fixed = case.fix_gamma and case.grad_req == ("write", "null", "write")  # (adapt: scale=False)
    if case.output_mean_var or not (case.grad_req == WRITE_ALL or gluon_fixed):
        return "the AMP entries request every gradient with 'write' and one output"
    if entry == FP16_ENTRY:
        return None
    if case.x.ndim < 2 or case.channel_axis != case.x.ndim - 1:
        return "the bfloat16 graph's identity FullyConnected (flatten=False) feeds channels on the last axis only"
    if not (is_bfloat16(case.x) and is_bfloat16(case.dy)):
        return "x and dy must be bfloat16 values (AMP rounds them to bfloat16 on the way in)"
    return None


def adapt_entry(entry: str, case: Case) -> Case:
    """The case as the entry runs it: amp-gluon takes gluon's mapping (no gamma gradient under scale=False)."""
    return adapt("gluon", case) if entry.endswith("gluon") else case


def _bn_params(case: Case) -> dict[str, Any]:
    return {
        "eps": case.eps,
        "momentum": case.momentum,
        "fix_gamma": case.fix_gamma,
        "use_global_stats": case.use_global_stats,
        "axis": case.axis,
    }


def _converted(case: Case, target: str, producer: bool) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    from mxnet.contrib import amp

    data = mx.sym.var("data")
    args = {"bn_gamma": mx.nd.array(case.gamma), "bn_beta": mx.nd.array(case.beta)}
    if producer:
        data = mx.sym.FullyConnected(data, num_hidden=case.channels, no_bias=True, flatten=False, name="fc")
        args["fc_weight"] = mx.nd.array(np.eye(case.channels, dtype=np.float32))
    sym = mx.sym.BatchNorm(data, name="bn", **_bn_params(case))
    aux = {"bn_moving_mean": mx.nd.array(case.moving_mean), "bn_moving_var": mx.nd.array(case.moving_var)}
    return amp.convert_model(sym, args, aux, target_dtype=target)  # type: ignore[no-any-return]


def _run_converted(case: Case, *, target: str, producer: bool) -> Outputs:
    sym, args, aux = _converted(case, target, producer)
    args = {**args, "data": mx.nd.array(case.x)}
    names = {"data": "data", "gamma": "bn_gamma", "beta": "bn_beta"}
    grads = {names[t]: mx.nd.zeros(args[names[t]].shape) for t in GRAD_TARGETS}
    requests = {name: ("write" if name in grads else "null") for name in sym.list_arguments()}
    exe = sym.bind(mx.cpu(), args=args, args_grad=grads, grad_req=requests, aux_states=aux)
    y = exe.forward(is_train=case.is_train)[0]
    forward_moving = (exe.aux_dict["bn_moving_mean"].asnumpy(), exe.aux_dict["bn_moving_var"].asnumpy())
    out = {"y": y.asnumpy(), "forward_moving_mean": forward_moving[0], "forward_moving_var": forward_moving[1]}
    if case.is_train:
        # (After an inference forward the executor's backward trains: sym-inference-backward-trains, recorded for
        # sym; converted graphs are for inference, so their inference runs stop at the forward.)
        exe.backward(mx.nd.array(case.dy))
        out.update(dx=grads["data"].asnumpy(), dgamma=grads["bn_gamma"].asnumpy(), dbeta=grads["bn_beta"].asnumpy())
    out["gamma"] = exe.arg_dict["bn_gamma"].asnumpy()
    out["moving_mean"] = exe.aux_dict["bn_moving_mean"].asnumpy()
    out["moving_var"] = exe.aux_dict["bn_moving_var"].asnumpy()
    return out


def _check(case: Case, entry: str) -> None:
    reason = unavailable_reason() or unexpressible_reason(case, entry)
    if reason is not None:
        raise ValueError(f"{entry} cannot run {case.describe()}: {reason}")
    reason = kernel_reason(entry)
    if reason is not None:
        raise BackendUnavailable(reason)


def run_amp_sym(case: Case) -> Outputs:
    """amp.convert_model(FullyConnected(identity) -> BatchNorm, bfloat16), bound with gradients: forward, backward."""
    _check(case, "amp-sym")
    return _run_converted(case, target="bfloat16", producer=True)


def run_amp_fp16_sym(case: Case) -> Outputs:
    """amp.convert_model(BatchNorm, float16): AMP keeps it in float32 (no float16 producer before it)."""
    _check(case, FP16_ENTRY)
    return _run_converted(case, target="float16", producer=False)


def _parameter(block: Any, suffix: str) -> Any:
    (found,) = [p for name, p in block.collect_params().items() if name.endswith(suffix)]
    return found


def run_amp_gluon(case: Case) -> Outputs:
    """amp.convert_hybrid_block(Dense(identity, flatten=False) -> BatchNorm, bfloat16, ctx=cpu), then the
    converted block under autograd (inference outside it), as gluon's runner does."""
    from mxnet.contrib import amp
    from mxnet.gluon import nn

    _check(case, "amp-gluon")
    case = adapt("gluon", case)
    net = nn.HybridSequential()
    net.add(nn.Dense(case.channels, use_bias=False, flatten=False, in_units=case.channels))
    net.add(
        nn.BatchNorm(
            axis=case.axis,
            momentum=case.momentum,
            epsilon=case.eps,
            scale=not case.fix_gamma,
            use_global_stats=case.use_global_stats,
            in_channels=case.channels,
        )
    )
    net.initialize(ctx=mx.cpu())
    net.hybridize()
    net(mx.nd.array(case.x))
    block = amp.convert_hybrid_block(net, target_dtype="bfloat16", ctx=mx.cpu())
    for suffix, value in (
        ("weight", np.eye(case.channels, dtype=np.float32)),
        ("gamma", case.gamma),
        ("beta", case.beta),
        ("running_mean", case.moving_mean),
        ("running_var", case.moving_var),
    ):
        _parameter(block, suffix).set_data(mx.nd.array(value))
    data = mx.nd.array(case.x)
    data.attach_grad()
    inference = None if case.is_train else block(data).asnumpy()
    with mx.autograd.record(train_mode=case.is_train):
        out = block(data)
    forward_moving = (
        _parameter(block, "running_mean").data().asnumpy(),
        _parameter(block, "running_var").data().asnumpy(),
    )
    out.backward(mx.nd.array(case.dy), train_mode=case.is_train)
    gamma, beta = _parameter(block, "gamma"), _parameter(block, "beta")
    result = {
        "y": out.asnumpy() if inference is None else inference,
        "dx": data.grad.asnumpy(),
        "dbeta": beta.grad().asnumpy(),
        "gamma": gamma.data().asnumpy(),
        "moving_mean": _parameter(block, "running_mean").data().asnumpy(),
        "moving_var": _parameter(block, "running_var").data().asnumpy(),
        "forward_moving_mean": forward_moving[0],
        "forward_moving_var": forward_moving[1],
    }
    if gamma.grad_req != "null":
        result["dgamma"] = gamma.grad().asnumpy()
    return result


RUNNERS: dict[str, Callable[[Case], Outputs]] = {
    "amp-sym": run_amp_sym,
    "amp-gluon": run_amp_gluon,
    FP16_ENTRY: run_amp_fp16_sym,
}


@functools.cache
def batchnorm_dtypes(entry: str) -> dict[str, str]:
    """What a monitor run of the converted graph shows: the dtype of BatchNorm's data, gamma and output."""
    x = np.ones((2, 3), np.float32)
    case = Case(
        x=x,
        dy=x.copy(),
        gamma=np.ones(3, np.float32),
        beta=np.zeros(3, np.float32),
        moving_mean=np.zeros(3, np.float32),
        moving_var=np.ones(3, np.float32),
        axis=-1,
    )
    sym, args, aux = _converted(case, "float16" if entry == FP16_ENTRY else "bfloat16", entry != FP16_ENTRY)
    exe = sym.bind(mx.cpu(), args={**args, "data": mx.nd.array(x)}, aux_states=aux)
    seen: dict[str, str] = {}

    def monitor(name: Any, array: Any) -> None:
        name = name.decode() if isinstance(name, bytes) else str(name)
        arr = array if isinstance(array, mx.nd.NDArray) else mx.nd.NDArray(mx.base.NDArrayHandle(array))
        dtype = np.dtype(arr.dtype)
        seen[name] = "bfloat16" if dtype.names else dtype.name

    exe.set_monitor_callback(monitor, monitor_all=True)
    exe.forward(is_train=True)
    return {k: seen[f"bn_{k}"] for k in ("data", "gamma", "output")}


def snippet(case: Case, entry: str, *, backend: str = "onednn") -> str:
    """A standalone script (mxnet and numpy) that converts the entry's graph with AMP and runs the case through it
    (the symbolic form for amp-gluon too: convert_hybrid_block applies the same conversion); results in ``actual``."""
    if entry not in RUNNERS:
        raise ValueError(f"no AMP reproducer for entry {entry!r}")
    target, producer = ("float16", False) if entry == FP16_ENTRY else ("bfloat16", True)

    def arr(a: np.ndarray) -> str:
        return f"np.array({a.astype(np.float64).tolist()!r}, dtype=np.float64).astype('float32')"

    lines = [
        *kernel_header(backend),
        "import mxnet as mx, numpy as np",
        "from mxnet.contrib import amp",
        "nan, inf = float('nan'), float('inf')  # as repr writes non-finite data",
        f"x, dy = {arr(case.x)}, {arr(case.dy)}",
        f"gamma, beta = {arr(case.gamma)}, {arr(case.beta)}",
        f"moving_mean, moving_var = {arr(case.moving_mean)}, {arr(case.moving_var)}",
        f"C, is_train = {case.channels}, {case.is_train}",
        "data = mx.sym.var('data')",
        "args = {'bn_gamma': mx.nd.array(gamma), 'bn_beta': mx.nd.array(beta)}",
    ]
    if producer:
        lines += [
            "# an identity FullyConnected (in AMP's bfloat16 list) hands BatchNorm exactly x, as bfloat16",
            "data = mx.sym.FullyConnected(data, num_hidden=C, no_bias=True, flatten=False, name='fc')",
            "args['fc_weight'] = mx.nd.array(np.eye(C, dtype=np.float32))",
        ]
    lines += [
        f"sym = mx.sym.BatchNorm(data, name='bn', eps={case.eps!r}, momentum={case.momentum!r}, "
        f"fix_gamma={case.fix_gamma}, use_global_stats={case.use_global_stats}, axis={case.axis})",
        "aux = {'bn_moving_mean': mx.nd.array(moving_mean), 'bn_moving_var': mx.nd.array(moving_var)}",
        f"sym, args, aux = amp.convert_model(sym, args, aux, target_dtype={target!r})",
        "grads = {n: mx.nd.zeros(args[n].shape if n in args else x.shape) for n in ('data', 'bn_gamma', 'bn_beta')}",
        "req = {n: 'write' if n in grads else 'null' for n in sym.list_arguments()}",
        "exe = sym.bind(mx.cpu(), args={**args, 'data': mx.nd.array(x)}, args_grad=grads, grad_req=req,",
        "               aux_states=aux)",
        "actual = {'y': exe.forward(is_train=is_train)[0].asnumpy()}",
        "if is_train:",
        "    exe.backward(mx.nd.array(dy))",
        "    actual.update(dx=grads['data'].asnumpy(), dgamma=grads['bn_gamma'].asnumpy(),",
        "                  dbeta=grads['bn_beta'].asnumpy())",
        "actual.update(moving_mean=exe.aux_dict['bn_moving_mean'].asnumpy(), "
        "moving_var=exe.aux_dict['bn_moving_var'].asnumpy())",
        "for q, value in actual.items():",
        "    print(q, value)",
    ]
    return "\n".join(lines)

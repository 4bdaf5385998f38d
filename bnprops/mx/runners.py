"""MXNet runners: each takes a Case, calls BatchNorm through one entry point and returns its Outputs.

Entry points (ENTRY_POINTS) are the Python APIs a user reaches the operator through; backends
(BACKENDS, GPU_BACKENDS) are the kernels behind them. The CPU backend this process was started
with runs in-process; the other one runs in a long-lived worker process (mx.worker).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any

# (MXNet's environment defaults are set in mx.__init__, before any module here loads mxnet.)
import mxnet as mx
import numpy as np

from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, NULL_BUFFER_OF, Case, Outputs, param_dtype
from bnprops.mx import mxversion

Runner = Callable[[Case], Outputs]

#: Was this MXNet built with oneDNN? The 'mxnet' wheels of 1.3-1.6 were not (mxnet-mkl was).
ONEDNN_BUILT = mxversion.onednn_built()
#: Read by MXNet at start-up: "0" sends float32 to the native kernel instead of oneDNN.
ONEDNN_ENABLED = ONEDNN_BUILT and os.environ.get("MXNET_MKLDNN_ENABLED", "1") != "0"

#: Entry points by name: how a user reaches the operator.
ENTRY_POINTS = ("sym", "nd", "gluon", "gluon-hybrid", "npx")
#: Legacy operators' entry points, kept out of ENTRY_POINTS (and so out of the default properties and the fuzz
#: job): "sym-v1" is mx.sym.BatchNorm_v1 through an executor (docs: the BatchNorm family page).
LEGACY_ENTRY_POINTS = ("sym-v1",)
#: Whose arithmetic the error bounds follow for a call through an entry point (bnprops.model.error_model's
#: OPERATORS): BatchNorm_v1's own for "sym-v1", BatchNorm's everywhere else.
OPERATOR_OF_ENTRY = {"sym-v1": "v1"}
#: Which reduction class the error bounds cover for a backend (bnprops.model.gpu_reductions's REDUCTIONS): the
#: GPU kernels' ("gpu": tree sums, Welford and Chan merges, a rounded reciprocal of the count); "cpu" elsewhere.
REDUCTION_OF_BACKEND = {"cudnn": "gpu", "cuda": "gpu"}
#: CPU kernels: float32 runs through oneDNN by default; "native" forces MXNet's own kernel.
BACKENDS = ("onednn", "native")
#: GPU kernels: cuDNN, and MXNet's own CUDA kernel (cudnn_off=True).
GPU_BACKENDS = ("cudnn", "cuda")
ALL_BACKENDS = BACKENDS + GPU_BACKENDS
#: The CPU backend this process serves itself.
IN_PROCESS_BACKEND = "onednn" if ONEDNN_ENABLED else "native"


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (no GPU, or the worker process cannot start); the message says why."""


class EntryUnavailable(BackendUnavailable):
    """The entry point does not exist in this MXNet release (mx.npx before 1.6); the message says why."""


def entry_unavailable_reason(entry: str) -> str | None:
    """Why ``entry`` cannot run in this MXNet release (its tests and fuzz targets skip with it), or None."""
    if entry not in ENTRY_POINTS + LEGACY_ENTRY_POINTS:
        raise ValueError(f"unknown entry point {entry!r}; choose from {list(ENTRY_POINTS + LEGACY_ENTRY_POINTS)}")
    if entry != "npx":
        return None  # sym, nd, gluon.nn.BatchNorm and BatchNorm_v1 exist in every release since 1.0
    util = getattr(mx, "util", None)
    missing = [
        name
        for name, ok in (
            ("mx.npx.batch_norm", hasattr(getattr(mx, "npx", None), "batch_norm")),
            ("mx.np.array", hasattr(getattr(mx, "np", None), "array")),
            ("mx.util.np_shape", hasattr(util, "np_shape")),
            ("mx.util.np_array", hasattr(util, "np_array")),
        )
        if not ok
    ]
    if missing:
        return f"MXNet {mx.__version__} has no {', '.join(missing)} (the numpy interface came in 1.6)"
    return None


#: Before 1.8, oneDNN ran BatchNorm only on 4-D input with axis=1 (SupportMKLDNNBN: ndim == 4 and axis ==
#: DEFAULT_AXIS); apache/mxnet#18504 ("Invoke mkldnn and cudnn BatchNorm when axis != 1", v1.x backport #18890)
#: widened it to every shape and axis in 1.8.0.
ONEDNN_ANY_SHAPE_SINCE = "1.8.0"
#: Before 1.6 a lone BatchNorm never reached MKL-DNN, whatever kernel_for says: its forward took MKL-DNN only for
#: input already in MKL-DNN's layout (a producer's output) with channels % 8 == 0, its backward only for such data
#: or head gradient (SupportMKLDNNBN and IsMKLDNNData at 1.5.1); apache/mxnet#15870 ("update support MKLDNN BN
#: conditions", in 1.6.0) dropped both. Shown on mxnet-mkl 1.3.1-1.5.1 by MKLDNN_VERBOSE: no batch_normalization
#: primitive for a plain call, one after a Convolution.
ONEDNN_PLAIN_INPUT_SINCE = "1.6.0"


def onednn_runs_plain_input() -> bool:
    """Does a BatchNorm call on plain (user-made) input reach oneDNN in the running release (1.6+)?"""
    return mxversion.parse(mxversion.running()) >= mxversion.parse(ONEDNN_PLAIN_INPUT_SINCE)


def onednn_follows_layout(case: Case, backend: str) -> bool:
    """May the kernel follow the input's layout, not only the call: before 1.6 a float32 4-D input with axis=1
    takes MKL-DNN when a producer left it in MKL-DNN's layout (with channels % 8 == 0), the native kernel when
    plain (``kernel_for``)."""
    return (
        backend == "onednn"
        and case.dtype == "float32"
        and case.x.ndim == 4
        and case.axis == 1
        and not onednn_runs_plain_input()
    )


def kernel_for(case: Case, backend: str | None = None, entry: str | None = None) -> str:
    """Which kernel runs the case: on the onednn backend float16/float64 still take the native kernel, and
    before 1.8 so does float32 input that is not 4-D with axis=1, and before 1.6 every plain call (a producer's
    output in MKL-DNN's layout may take MKL-DNN there: ``onednn_follows_layout``). BatchNorm_v1 has no oneDNN
    kernel. On the cudnn backend use_global_stats takes MXNet's CUDA kernel."""
    backend = IN_PROCESS_BACKEND if backend is None else backend
    if entry in LEGACY_ENTRY_POINTS and backend in BACKENDS:
        return "native"
    if backend == "cudnn" and case.use_global_stats:
        return "cuda"  # batch_norm.cu 706, 734 (1.9.1): only !use_global_stats && !cudnn_off reaches cuDNN
    if backend == "onednn":
        if case.dtype != "float32" or not onednn_runs_plain_input():
            return "native"
        if mxversion.parse(mxversion.running()) < mxversion.parse(ONEDNN_ANY_SHAPE_SINCE):
            return "onednn" if case.x.ndim == 4 and case.axis == 1 else "native"
        return "onednn"
    return backend


def v1_unexpressible_reason(case: Case) -> str | None:
    """Why BatchNorm_v1 cannot run ``case``, or None: it has no axis parameter (channels on axis 1), its
    kernel reads the data as a 4-D float tensor (2-D input is reshaped to N x C x 1 x 1), so only float32
    input of 2 or 4 dimensions runs; anything else fails a check in MXNet. Its eps and momentum are float
    parameters: nonzero values outside float32's normal range are rejected when the operator is made."""
    if case.dtype != "float32":
        return f"BatchNorm_v1 runs float32 only, not {case.dtype}"
    if case.x.ndim not in (2, 4):
        return f"BatchNorm_v1 runs 2-D or 4-D input only, not {case.x.ndim}-D"
    if case.channel_axis != 1:
        return f"BatchNorm_v1 normalises over axis 1 only, not axis {case.axis}"
    tiny, huge = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    for name, value in (("eps", case.eps), ("momentum", case.momentum)):
        if value != 0 and not tiny <= abs(value) <= huge:
            return f"BatchNorm_v1's {name} is a float parameter: dmlc rejects {value!r} as out of range"
    return None


def adapt(entry: str, case: Case) -> Case:
    """The case as the entry point can express it; the oracle must judge this one.

    gluon.nn.BatchNorm has no output_mean_var, and with fix_gamma (scale=False) its gamma is not
    differentiable: gamma's request is 'null' there, whatever was asked for. BatchNorm_v1 (sym-v1) runs the
    case unchanged or not at all (v1_unexpressible_reason).
    """
    if entry in LEGACY_ENTRY_POINTS:
        reason = v1_unexpressible_reason(case)
        if reason is not None:
            raise ValueError(f"{entry} cannot run {case.describe()}: {reason}")
        return case
    if entry not in ("gluon", "gluon-hybrid"):
        return case
    changes: dict[str, Any] = {}
    if case.output_mean_var:
        changes["output_mean_var"] = False
    if case.fix_gamma and case.request("gamma") != "null":
        data, _, beta = case.grad_req
        if data == "null" and beta == "null":
            raise ValueError(f"gluon cannot run {case.describe()}: with scale=False only gamma was to take a gradient")
        changes["grad_req"] = (data, "null", beta)
        changes["prior_dgamma"] = None
    return case.with_(**changes) if changes else case


def _outputs(
    case: Case,
    *,
    y: Any,
    grads: dict[str, Any],
    gamma: Any,
    moving: tuple[Any, Any],
    forward_moving: tuple[np.ndarray, np.ndarray],
    mean_invstd: tuple[Any, Any] | None,
) -> Outputs:
    """``grads``: each target's gradient buffer after the call (a 'null' one under its NULL_BUFFER_OF name)."""
    result: Outputs = {"y": y.asnumpy()}
    for target, grad in grads.items():
        name = NULL_BUFFER_OF[target] if case.request(target) == "null" else GRADIENT_OF[target]
        result[name] = grad.asnumpy()
    result["gamma"] = gamma.asnumpy()
    result["moving_mean"], result["moving_var"] = moving[0].asnumpy(), moving[1].asnumpy()
    result["forward_moving_mean"], result["forward_moving_var"] = forward_moving
    if mean_invstd is not None:
        result["mean"], result["invstd"] = mean_invstd[0].asnumpy(), mean_invstd[1].asnumpy()
    return result


def _operator_params(case: Case, cudnn_off: bool | None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "eps": case.eps,
        "momentum": case.momentum,
        "fix_gamma": case.fix_gamma,
        "use_global_stats": case.use_global_stats,
        "output_mean_var": case.output_mean_var,
        "axis": case.axis,
    }
    if cudnn_off is not None:
        params["cudnn_off"] = cudnn_off
    return params


_SYM_NAMES = {"data": "data", "gamma": "bn_gamma", "beta": "bn_beta"}


def _copy_into(target: Any, value: np.ndarray) -> None:
    """``target[:] = value`` for a CPU NDArray of the same shape, without NDArray.__setitem__'s indexing.

    The same C call that NDArray._sync_copyfrom makes, minus its Python overhead (~10x cheaper).
    """
    source = np.ascontiguousarray(value, dtype=target.dtype)
    if source.shape != target.shape:
        raise ValueError(f"cannot copy {source.shape} into an NDArray of shape {target.shape}")
    mx.base.check_call(
        mx.base._LIB.MXNDArraySyncCopyFromCPU(
            target.handle, source.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(source.size)
        )
    )


class _BoundCall:
    """A bound executor and the head-gradient arrays it reuses, for one signature.

    bind() with arrays of our own rather than simple_bind(), which allocates no gradient buffer for a
    'null' request: every target has one here, so that the executor can be seen to leave it alone.
    """

    def __init__(self, signature: tuple[Any, ...]) -> None:
        shape, dtype, grad_req, ctx, params, operator = signature
        # operator: a name under mx.sym ("BatchNorm", "BatchNorm_v1", "contrib.BatchNormWithReLU")
        op = functools.reduce(getattr, operator.split("."), mx.sym)
        sym = op(mx.sym.Variable("data"), name="bn", **dict(params))
        pdt = param_dtype(dtype)
        channels = (shape[dict(params).get("axis", 1)],)

        def zeros(names: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, Any]:
            return {name: mx.nd.zeros(s, dtype=dt, ctx=ctx) for name, (s, dt) in names.items()}

        args = {"data": (shape, dtype), "bn_gamma": (channels, pdt), "bn_beta": (channels, pdt)}
        self.exe = sym.bind(
            ctx,
            args=zeros(args),
            args_grad=zeros(args),
            grad_req={_SYM_NAMES[t]: r for t, r in zip(GRAD_TARGETS, grad_req, strict=True)},
            aux_states=zeros({"bn_moving_mean": (channels, pdt), "bn_moving_var": (channels, pdt)}),
        )
        self.head = mx.nd.zeros(shape, dtype=dtype, ctx=ctx)
        # The mean and invstd outputs take no gradient; their heads must still be given.
        extra = [mx.nd.zeros(channels, dtype=pdt, ctx=ctx)] * 2 if dict(params)["output_mean_var"] else []
        self.heads = [self.head, *extra]


@functools.lru_cache(maxsize=4096)
def _bound_call(signature: tuple[Any, ...]) -> _BoundCall:
    return _BoundCall(signature)


def run_symbolic(case: Case, *, ctx: Any = None, cudnn_off: bool | None = None, fused_relu: bool = False) -> Outputs:
    """mx.sym.BatchNorm + bind, forward(is_train=), backward(dy): the forum thread's path (it used
    simple_bind, which computes the same bits; bind gives a 'null' request a buffer too).
    ``fused_relu``: mx.sym.contrib.BatchNormWithReLU instead (see run_sym_with_relu)."""
    operator = "contrib.BatchNormWithReLU" if fused_relu else "BatchNorm"
    return _run_bound(case, operator, _operator_params(case, cudnn_off), ctx=ctx)


def run_symbolic_v1(case: Case, *, ctx: Any = None, cudnn_off: bool | None = None) -> Outputs:
    """mx.sym.BatchNorm_v1 + bind, as run_symbolic: the legacy operator of old checkpoints (no axis, no cudnn_off).

    Its third output under output_mean_var is the variance (the batch's, or moving_var without batch
    statistics), where BatchNorm's is invstd: reported as invstd = 1 / sqrt(var + eps), in float64, so that
    the oracle's invstd judges it (a correct float32 invstd rounds more than this conversion does).
    """
    params = {k: v for k, v in _operator_params(case, None).items() if k != "axis"}
    outputs = _run_bound(case, "BatchNorm_v1", params, ctx=ctx)
    if "invstd" in outputs:
        eps = float(np.float32(case.eps))
        with np.errstate(divide="ignore", invalid="ignore"):
            outputs["invstd"] = 1.0 / np.sqrt(outputs["invstd"].astype(np.float64) + eps)
    return outputs


def _run_bound(case: Case, operator: str, operator_params: dict[str, Any], *, ctx: Any) -> Outputs:
    ctx = mx.cpu() if ctx is None else ctx
    params = tuple(sorted(operator_params.items()))
    call = _bound_call((case.shape, case.dtype, case.grad_req, ctx, params, operator))
    exe = call.exe
    copy = _copy_into if ctx.device_type == "cpu" else _assign
    copy(exe.arg_dict["data"], case.x)
    copy(exe.arg_dict["bn_gamma"], case.gamma)
    copy(exe.arg_dict["bn_beta"], case.beta)
    copy(exe.aux_dict["bn_moving_mean"], case.moving_mean)
    copy(exe.aux_dict["bn_moving_var"], case.moving_var)
    for target in GRAD_TARGETS:
        fill = _fill(case, target)
        if fill is not None:
            copy(exe.grad_dict[_SYM_NAMES[target]], fill)
    outs = exe.forward(is_train=case.is_train)
    forward_moving = (exe.aux_dict["bn_moving_mean"].asnumpy(), exe.aux_dict["bn_moving_var"].asnumpy())
    copy(call.head, case.dy)
    exe.backward(call.heads)
    return _outputs(
        case,
        y=outs[0],
        grads={t: exe.grad_dict[_SYM_NAMES[t]] for t in GRAD_TARGETS},
        gamma=exe.arg_dict["bn_gamma"],
        moving=(exe.aux_dict["bn_moving_mean"], exe.aux_dict["bn_moving_var"]),
        forward_moving=forward_moving,
        mean_invstd=(outs[1], outs[2]) if case.output_mean_var else None,
    )


def _assign(target: Any, value: np.ndarray) -> None:
    target[:] = value


def _fill(case: Case, target: str) -> np.ndarray | None:
    """What ``target``'s gradient buffer holds before the call: the prior of an 'add', the sentinel of a 'null'."""
    return case.null_sentinel(target) if case.request(target) == "null" else case.prior(target)


@contextlib.contextmanager
def _numpy_semantics() -> Iterator[None]:
    """What mx.npx.set_np() switches on, for the duration of one call only."""
    with mx.util.np_shape(True), mx.util.np_array(True):
        yield


def _run_autograd(case: Case, *, numpy: bool, ctx: Any, cudnn_off: bool | None) -> Outputs:
    with _numpy_semantics() if numpy else contextlib.nullcontext():
        return _autograd_call(case, numpy=numpy, ctx=ctx, cudnn_off=cudnn_off)


def _autograd_call(
    case: Case, *, numpy: bool, ctx: Any, cudnn_off: bool | None, op: Callable[..., Any] | None = None
) -> Outputs:
    mod, default_op = (mx.np, mx.npx.batch_norm) if numpy else (mx.nd, mx.nd.BatchNorm)
    op = default_op if op is None else op
    pdt = param_dtype(case.dtype)
    ctx = mx.cpu() if ctx is None else ctx
    arrays = {
        "data": mod.array(case.x, dtype=case.dtype, ctx=ctx),
        "gamma": mod.array(case.gamma, dtype=pdt, ctx=ctx),
        "beta": mod.array(case.beta, dtype=pdt, ctx=ctx),
    }
    moving = (mod.array(case.moving_mean, dtype=pdt, ctx=ctx), mod.array(case.moving_var, dtype=pdt, ctx=ctx))
    buffers = {}
    for target in GRAD_TARGETS:
        # A 'null' request gets a buffer too (attach_grad makes one), which the call must leave alone.
        arrays[target].attach_grad(grad_req=case.request(target))
        # Kept here: backward forgets a 'null' variable's buffer (its .grad is None afterwards).
        buffers[target] = arrays[target].grad
        fill = _fill(case, target)
        if fill is not None:
            buffers[target][:] = fill
    with mx.autograd.record(train_mode=case.is_train):
        outs = op(arrays["data"], arrays["gamma"], arrays["beta"], *moving, **_operator_params(case, cudnn_off))
    y = outs[0] if case.output_mean_var else outs
    forward_moving = (moving[0].asnumpy(), moving[1].asnumpy())
    mx.autograd.backward([y], [mod.array(case.dy, dtype=case.dtype, ctx=ctx)], train_mode=case.is_train)
    return _outputs(
        case,
        y=y,
        grads=buffers,
        gamma=arrays["gamma"],
        moving=moving,
        forward_moving=forward_moving,
        mean_invstd=(outs[1], outs[2]) if case.output_mean_var else None,
    )


def run_nd(case: Case, *, ctx: Any = None, cudnn_off: bool | None = None) -> Outputs:
    """mx.nd.BatchNorm under mx.autograd.record(train_mode=is_train), then backward(train_mode=is_train)."""
    return _run_autograd(case, numpy=False, ctx=ctx, cudnn_off=cudnn_off)


def run_npx(case: Case, *, ctx: Any = None, cudnn_off: bool | None = None) -> Outputs:
    """mx.npx.batch_norm on mx.np arrays, with the numpy interface's shape and array semantics on."""
    return _run_autograd(case, numpy=True, ctx=ctx, cudnn_off=cudnn_off)


def with_relu_unavailable_reason(case: Case) -> str | None:
    """Why mx.nd.contrib.BatchNormWithReLU cannot run ``case`` (batch_norm_relu.cc's SupportMKLDNNBNReLU
    and its LOG(FATAL) otherwise; the operator has no CPU kernel without oneDNN), or None."""
    reason = with_relu_build_reason()
    if reason is not None:
        return reason
    if case.dtype != "float32" or case.x.ndim != 4 or case.axis != 1:
        got = f"{case.dtype}{list(case.shape)} axis={case.axis}"
        return f"BatchNormWithReLU runs only float32 4-D input with axis=1, not {got}"
    return None


def with_relu_build_reason() -> str | None:
    """Why mx.nd.contrib.BatchNormWithReLU cannot run any case in this build, or None: the operator came with
    oneDNN's fused kernel and has no CPU kernel without it."""
    if not hasattr(mx.nd.contrib, "BatchNormWithReLU"):
        return f"MXNet {mx.__version__} has no contrib.BatchNormWithReLU"
    if not ONEDNN_BUILT:
        return f"BatchNormWithReLU has only a oneDNN kernel; MXNet {mx.__version__} was built without oneDNN"
    if not ONEDNN_ENABLED:
        return "BatchNormWithReLU has only a oneDNN kernel (MXNET_MKLDNN_ENABLED=0: not implemented for CPU)"
    return None


def run_nd_with_relu(case: Case, *, ctx: Any = None, cudnn_off: bool | None = None) -> Outputs:
    """mx.nd.contrib.BatchNormWithReLU under mx.autograd.record, then backward: relu(BatchNorm(x)) in one
    oneDNN call (its y is after the ReLU; its gradients are BatchNorm's for the head masked where y <= 0).
    Kept out of ENTRY_POINTS: a separate target (judging.with_relu)."""
    reason = with_relu_unavailable_reason(case)
    if reason is not None:
        raise BackendUnavailable(reason)
    return _autograd_call(case, numpy=False, ctx=ctx, cudnn_off=cudnn_off, op=mx.nd.contrib.BatchNormWithReLU)


def run_sym_with_relu(case: Case, *, ctx: Any = None, cudnn_off: bool | None = None) -> Outputs:
    """mx.sym.contrib.BatchNormWithReLU through the same bound executor as run_symbolic."""
    reason = with_relu_unavailable_reason(case)
    if reason is not None:
        raise BackendUnavailable(reason)
    return run_symbolic(case, ctx=ctx, cudnn_off=cudnn_off, fused_relu=True)


def run_gluon_with_relu(case: Case, *, ctx: Any = None, cudnn_off: bool | None = None) -> Outputs:
    """mx.gluon.nn.BatchNormReLU, hybridized (its hybrid_forward calls F.contrib.BatchNormWithReLU)."""
    reason = with_relu_unavailable_reason(case)
    if reason is not None:
        raise BackendUnavailable(reason)
    return _run_gluon(case, hybridize=True, ctx=ctx, cudnn_off=cudnn_off, fused_relu=True)


#: BatchNormWithReLU's runners by the entry point they go through (kept out of ENTRY_FUNCTIONS and RUNNERS).
WITH_RELU_RUNNERS: dict[str, Runner] = {
    "nd": run_nd_with_relu,
    "sym": run_sym_with_relu,
    "gluon-hybrid": run_gluon_with_relu,
}


def _run_gluon(case: Case, *, hybridize: bool, ctx: Any, cudnn_off: bool | None, fused_relu: bool = False) -> Outputs:
    from mxnet.gluon import nn

    if cudnn_off is not None and cudnn_off:
        raise BackendUnavailable("gluon.nn.BatchNorm has no cudnn_off: it always takes cuDNN on a GPU")
    case = adapt("gluon", case)
    ctx = mx.cpu() if ctx is None else ctx
    pdt = param_dtype(case.dtype)
    # gluon's own mapping: epsilon (default 1e-5) given explicitly, fix_gamma = not scale, center = beta learns.
    layer = (nn.BatchNormReLU if fused_relu else nn.BatchNorm)(
        axis=case.axis,
        momentum=case.momentum,
        epsilon=case.eps,
        center=case.request("beta") != "null",
        scale=not case.fix_gamma,
        use_global_stats=case.use_global_stats,
        in_channels=case.channels,
    )
    layer.initialize(ctx=ctx)
    layer.cast(case.dtype)  # float16 keeps its parameters in float32
    for param, value in (
        (layer.gamma, case.gamma),
        (layer.beta, case.beta),
        (layer.running_mean, case.moving_mean),
        (layer.running_var, case.moving_var),
    ):
        param.set_data(mx.nd.array(value, dtype=pdt, ctx=ctx))
    # Requests other than gluon's 'write', as a user sets them (e.g. collect_params().setattr('grad_req', 'add')).
    if not case.fix_gamma:
        layer.gamma.grad_req = case.request("gamma")
    if case.request("beta") != "null":
        layer.beta.grad_req = case.request("beta")
    for target, param in (("gamma", layer.gamma), ("beta", layer.beta)):
        prior = case.prior(target)
        if prior is not None:
            param.grad(ctx)[:] = prior
    if hybridize:
        layer.hybridize()
    data = mx.nd.array(case.x, dtype=case.dtype, ctx=ctx)
    # data's buffer, a 'null' one too (kept: backward forgets a 'null' variable's). A 'null' Parameter has
    # none at all (Parameter.grad() raises, setting grad_req='null' drops it): gamma and beta cannot show one.
    data.attach_grad(grad_req=case.request("data"))
    data_grad = data.grad
    fill = _fill(case, "data")
    if fill is not None:
        data_grad[:] = fill
    if not case.is_train:
        y = layer(data)  # inference, as gluon runs outside autograd.record()
    with mx.autograd.record(train_mode=case.is_train):
        out = layer(data)
    forward_moving = (layer.running_mean.data(ctx).asnumpy(), layer.running_var.data(ctx).asnumpy())
    out.backward(mx.nd.array(case.dy, dtype=case.dtype, ctx=ctx), train_mode=case.is_train)
    grads = {"data": data_grad}
    for target, param in (("gamma", layer.gamma), ("beta", layer.beta)):
        if param.grad_req != "null":
            grads[target] = param.grad(ctx)
    return _outputs(
        case,
        y=out if case.is_train else y,
        grads=grads,
        gamma=layer.gamma.data(ctx),
        moving=(layer.running_mean.data(ctx), layer.running_var.data(ctx)),
        forward_moving=forward_moving,
        mean_invstd=None,
    )


def run_gluon(case: Case, *, ctx: Any = None, cudnn_off: bool | None = None) -> Outputs:
    """mx.gluon.nn.BatchNorm, imperative: inference outside autograd.record(), training inside it."""
    return _run_gluon(case, hybridize=False, ctx=ctx, cudnn_off=cudnn_off)


def run_gluon_hybrid(case: Case, *, ctx: Any = None, cudnn_off: bool | None = None) -> Outputs:
    """mx.gluon.nn.BatchNorm after hybridize(): the same layer through a cached graph."""
    return _run_gluon(case, hybridize=True, ctx=ctx, cudnn_off=cudnn_off)


ENTRY_FUNCTIONS: dict[str, Callable[..., Outputs]] = {
    "sym": run_symbolic,
    "nd": run_nd,
    "gluon": run_gluon,
    "gluon-hybrid": run_gluon_hybrid,
    "npx": run_npx,
    "sym-v1": run_symbolic_v1,
}
#: In-process CPU runners by entry point (the backend is IN_PROCESS_BACKEND).
RUNNERS: dict[str, Runner] = {name: ENTRY_FUNCTIONS[name] for name in ENTRY_POINTS}


def network_unavailable_reason(entry: str) -> str | None:
    """Why BatchNorm-inside-a-network checks (judging.in_network) cannot run through ``entry`` in this
    release, or None: gluon-hybrid chains watch BatchNorm through HybridBlock.register_op_hook (1.6+)."""
    if entry == "gluon-hybrid" and not hasattr(mx.gluon.HybridBlock, "register_op_hook"):
        return f"MXNet {mx.__version__} has no HybridBlock.register_op_hook (added in 1.6)"
    if entry == "sym" and "monitor_all" not in inspect.signature(mx.executor.Executor.set_monitor_callback).parameters:
        return f"MXNet {mx.__version__}'s Executor.set_monitor_callback has no monitor_all (added in 1.5)"
    return entry_unavailable_reason(entry)


def sequence_unavailable_reason(entry: str) -> str | None:
    """Why training sequences (mx.training) cannot run through ``entry`` in this release, or None: the
    sessions need what the entry point needs (before 1.5, without mx.util.np_shape, the classic shape
    semantics are the only ones, so nothing is set)."""
    return entry_unavailable_reason(entry)


def gpu_unavailable_reason() -> str | None:
    """Why the GPU backends cannot run here, or None if they can."""
    try:
        count = mx.context.num_gpus()
    except mx.base.MXNetError as exc:  # a CPU-only build raises instead of returning 0 on some setups
        return f"no GPU: mx.context.num_gpus() failed ({str(exc).splitlines()[0]})"
    return None if count > 0 else "no GPU: mx.context.num_gpus() == 0 (this MXNet build or machine has none)"


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here (so tests skip with it), or None. CPU backends are always available
    in principle; a worker that cannot start raises BackendUnavailable when first used."""
    if backend not in ALL_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {list(ALL_BACKENDS)}")
    if backend == "onednn" and not ONEDNN_BUILT:
        return f"MXNet {mx.__version__} was built without oneDNN (MKLDNN): float32 runs the native kernel only"
    return gpu_unavailable_reason() if backend in GPU_BACKENDS else None

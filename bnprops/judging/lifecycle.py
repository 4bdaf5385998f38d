"""BatchNorm through a model's life: train, evaluate, train again; export and import; cast to float16; symbolic
graphs whose shapes and types are inferred. Each check returns a list of problems (empty: it works).

Each one compares MXNet with MXNet: the model's BatchNorm against a plain call (bnprops.mx.runners) on the
input it received, with the same rule as judging.in_network (bit for bit where the same kernel runs,
within twice the error bound where oneDNN does), or a model against its exported-and-imported self.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from bnprops.judging.comparator import compare_pair
from bnprops.judging.in_network import same_kernel
from bnprops.model.case import Case, Outputs, param_dtype
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND


def _differences(case: Case, model: Outputs, plain: Outputs, *, what: str, backend: str) -> list[str]:
    exact = same_kernel(case, backend)
    verdict = compare_pair(case, model, plain, exact=exact)
    rule = "bit for bit" if exact else "within twice the error bound"
    return [
        f"{what}: the model's {m.quantity} differs from the plain call's ({rule}) for {case.describe()}:\n"
        + m.describe()
        .replace("expected (oracle)", "plain call       ")
        .replace("actual:           ", "model:           ")
        for m in verdict.mismatches
    ]


def _model(*, channels: int, dtype: str, hybridize: bool, producer: str, rng: np.random.Generator) -> Any:
    """producer then BatchNorm(scale=True), weights from ``rng``; producer 'conv2d' or 'relu'."""
    net = nn.HybridSequential()
    first = nn.Conv2D(channels, 3, padding=1, in_channels=3) if producer == "conv2d" else nn.Activation("relu")
    norm = nn.BatchNorm(in_channels=channels, epsilon=1e-5, momentum=0.9)
    net.add(first, norm)
    net.initialize()
    if producer == "conv2d":
        first.weight.set_data(mx.nd.array(rng.standard_normal(first.weight.shape) / 5))
        first.bias.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, channels)))
    norm.gamma.set_data(mx.nd.array(rng.uniform(0.5, 2, channels)))
    norm.beta.set_data(mx.nd.array(rng.uniform(-1, 1, channels)))
    net.cast(dtype)
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net, first, norm


def _state(norm: Any) -> dict[str, np.ndarray]:
    return {
        "gamma": norm.gamma.data().asnumpy(),
        "beta": norm.beta.data().asnumpy(),
        "moving_mean": norm.running_mean.data().asnumpy(),
        "moving_var": norm.running_var.data().asnumpy(),
    }


def _plain_case(state: dict[str, np.ndarray], x: np.ndarray, dy: np.ndarray, *, is_train: bool) -> Case:
    return Case(
        x=x,
        dy=dy,
        gamma=state["gamma"],
        beta=state["beta"],
        moving_mean=state["moving_mean"],
        moving_var=state["moving_var"],
        axis=1,
        eps=1e-5,
        momentum=0.9,
        fix_gamma=False,
        is_train=is_train,
        regime="life-cycle",
    )


def train_evaluate_train(
    *, channels: int = 16, hybridize: bool = True, backend: str = IN_PROCESS_BACKEND, seed: int = 0
) -> list[str]:
    """Conv2D(channels) + BatchNorm: train, evaluate, train. Each step's BatchNorm results (y, dgamma, dbeta, the
    moving statistics; inference: y, and the statistics untouched) must equal a fresh plain call's on the
    step's input, from the statistics the previous step left."""
    if backend != IN_PROCESS_BACKEND:
        raise ValueError(f"life-cycle checks run on this process's backend ({IN_PROCESS_BACKEND}), not {backend!r}")
    rng = np.random.default_rng(seed)
    net, conv, norm = _model(channels=channels, dtype="float32", hybridize=hybridize, producer="conv2d", rng=rng)
    plain = runner_for("gluon", backend)
    problems: list[str] = []
    for step, is_train in enumerate((True, False, True), start=1):
        u = mx.nd.array(rng.standard_normal((4, 3, 6, 6)))
        dy = rng.standard_normal((4, channels, 6, 6)).astype("float32")
        before = _state(norm)
        x = conv(u).asnumpy()  # BatchNorm's input: the convolution is deterministic
        if is_train:
            with mx.autograd.record():
                y = net(u)
            y.backward(mx.nd.array(dy))
            model = {"y": y.asnumpy(), "dgamma": norm.gamma.grad().asnumpy(), "dbeta": norm.beta.grad().asnumpy()}
        else:
            model = {"y": net(u).asnumpy()}
        after = _state(norm)
        model.update(moving_mean=after["moving_mean"], moving_var=after["moving_var"])
        case = _plain_case(before, x, dy, is_train=is_train)
        reference = plain(case)
        if is_train:
            reference = {q: v for q, v in reference.items() if q != "dx"}
        else:
            reference = {q: reference[q] for q in ("y", "moving_mean", "moving_var")}
        what = f"step {step} ({'training' if is_train else 'inference'}, {'hybridized' if hybridize else 'imperative'})"
        problems += _differences(case, model, reference, what=what, backend=backend)
    return problems


def export_and_import(*, channels: int = 16, seed: int = 0) -> list[str]:
    """A trained, hybridized Conv2D + BatchNorm exported, then SymbolBlock.imports: inference must give the
    original's outputs bit for bit, and one more training step the same outputs, gradients and statistics."""
    rng = np.random.default_rng(seed)
    net, _, norm = _model(channels=channels, dtype="float32", hybridize=True, producer="conv2d", rng=rng)
    u = mx.nd.array(rng.standard_normal((4, 3, 6, 6)))
    with mx.autograd.record():
        net(u).backward(mx.nd.ones((4, channels, 6, 6)))
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "model")
        net.export(prefix, epoch=0)
        with warnings.catch_warnings():  # "Cannot decide type for ... data": the parameters' types are known
            warnings.simplefilter("ignore", UserWarning)
            imported = nn.SymbolBlock.imports(prefix + "-symbol.json", ["data"], prefix + "-0000.params")
        imported.hybridize(static_alloc=True, static_shape=True)
        v = mx.nd.array(rng.standard_normal((4, 3, 6, 6)))
        dy = mx.nd.array(rng.standard_normal((4, channels, 6, 6)))
        results = []
        for block in (net, imported):
            inference = block(v).asnumpy()
            with mx.autograd.record():
                y = block(v)
            y.backward(dy)
            params = {p.name.split("_", 1)[-1]: p for p in block.collect_params().values()}
            grads = {name: p.grad().asnumpy() for name, p in params.items() if p.grad_req != "null"}
            stats = {name: p.data().asnumpy() for name, p in params.items() if "running" in name}
            results.append({"inference": inference, "y": y.asnumpy(), **grads, **stats})
    original, again = results
    for name in sorted(set(original) | set(again)):
        if name not in original or name not in again:
            problems.append(f"export/import: {name} exists in only one of the original and the imported model")
        elif not np.array_equal(original[name], again[name], equal_nan=True):
            worst = float(np.max(np.abs(original[name].astype(float) - again[name].astype(float))))
            problems.append(f"export/import: {name} differs between the original and the imported model by {worst:g}")
    del norm
    return problems


def float16_cast(
    *, channels: int = 8, hybridize: bool = True, backend: str = IN_PROCESS_BACKEND, seed: int = 0
) -> list[str]:
    """cast('float16') of relu + BatchNorm (MXNet's CPU convolution has no float16: gemm raises), then a training
    step and inference: the same as a plain float16 call (parameters stay float32) on the input BatchNorm saw."""
    rng = np.random.default_rng(seed)
    net, _, norm = _model(channels=channels, dtype="float16", hybridize=hybridize, producer="relu", rng=rng)
    problems: list[str] = []
    if str(norm.gamma.data().dtype.__name__) != param_dtype("float16"):
        problems.append(f"cast('float16') left BatchNorm's gamma {norm.gamma.data().dtype}, not float32")
    plain = runner_for("gluon", backend)
    for is_train in (True, False):
        u = rng.standard_normal((4, channels, 5, 5)).astype("float16")
        dy = rng.standard_normal(u.shape).astype("float16")
        x = np.maximum(u, np.float16(0))
        before = _state(norm)
        data = mx.nd.array(u, dtype="float16")
        data.attach_grad()
        if is_train:
            with mx.autograd.record():
                y = net(data)
            y.backward(mx.nd.array(dy, dtype="float16"))
            model = {"y": y.asnumpy(), "dgamma": norm.gamma.grad().asnumpy(), "dbeta": norm.beta.grad().asnumpy()}
        else:
            model = {"y": net(data).asnumpy()}
        after = _state(norm)
        model.update(moving_mean=after["moving_mean"], moving_var=after["moving_var"])
        case = _plain_case(before, x, dy, is_train=is_train)
        reference = {q: v for q, v in plain(case).items() if q in model}
        what = f"float16 {'training' if is_train else 'inference'}"
        problems += _differences(case, model, reference, what=what, backend=backend)
    return problems


def symbolic_inference(*, dtype: str = "float32", channels: int = 16, backend: str = IN_PROCESS_BACKEND) -> list[str]:
    """BatchNorm after a convolution (float16: after relu) in a symbol whose shapes and types are given only for
    data: infer_shape_partial, infer_shape, infer_type, then simple_bind with a partial type_dict; one
    training step must equal the plain call on BatchNorm's input."""
    data = mx.sym.Variable("data")
    convolved = dtype != "float16"
    h = mx.sym.Convolution(data, num_filter=channels, kernel=(3, 3), pad=(1, 1), name="conv") if convolved else data
    h = mx.sym.Activation(h, act_type="relu", name="act")
    net = mx.sym.BatchNorm(h, name="bn", fix_gamma=False, eps=1e-5, momentum=0.9)
    problems: list[str] = []
    shape = (4, 3 if convolved else channels, 5, 5)
    _, partial_out, _ = net.infer_shape_partial()
    if partial_out and partial_out[0] and all(partial_out[0]):
        problems.append(f"infer_shape_partial() with no shapes claims a complete output shape {partial_out[0]}")
    args, outs, aux = net.infer_shape(data=shape)
    names = dict(zip(net.list_arguments(), args, strict=True))
    if names.get("bn_gamma") != (channels,) or outs[0] != (4, channels, 5, 5) or aux != [(channels,), (channels,)]:
        problems.append(f"infer_shape(data={shape}) gave gamma {names.get('bn_gamma')}, output {outs}, aux {aux}")
    arg_types, _, aux_types = net.infer_type(data=dtype)
    types = dict(zip(net.list_arguments(), arg_types, strict=True))
    want = np.dtype(param_dtype(dtype))
    if np.dtype(types["bn_gamma"]) != want or any(np.dtype(t) != want for t in aux_types):
        problems.append(f"infer_type(data={dtype}) gave gamma {types['bn_gamma']}, aux {aux_types}; expected {want}")
    exe = net.simple_bind(mx.cpu(), grad_req="write", type_dict={"data": dtype}, data=shape)
    rng = np.random.default_rng(1)
    for name, array in exe.arg_dict.items():
        array[:] = rng.standard_normal(array.shape) / (3 if name.startswith("conv") else 1)
    exe.arg_dict["bn_gamma"][:] = rng.uniform(0.5, 2, channels)
    exe.aux_dict["bn_moving_var"][:] = rng.uniform(0.5, 2, channels)
    seen: dict[str, np.ndarray] = {}

    def monitor(name: Any, handle: Any) -> None:
        key = name.decode() if isinstance(name, bytes) else str(name)
        if key == "bn_data":
            seen[key] = mx.nd.NDArray(mx.base.NDArrayHandle(handle), writable=False).asnumpy()

    exe.set_monitor_callback(monitor, monitor_all=True)
    before = {
        "gamma": exe.arg_dict["bn_gamma"].asnumpy(),
        "beta": exe.arg_dict["bn_beta"].asnumpy(),
        "moving_mean": exe.aux_dict["bn_moving_mean"].asnumpy(),
        "moving_var": exe.aux_dict["bn_moving_var"].asnumpy(),
    }
    y = exe.forward(is_train=True)[0].asnumpy()
    dy = rng.standard_normal(y.shape).astype(dtype)
    exe.backward([mx.nd.array(dy, dtype=dtype)])
    if y.dtype != np.dtype(dtype):
        problems.append(f"simple_bind(type_dict={{'data': {dtype!r}}}) ran BatchNorm in {y.dtype}")
        return problems
    model = {
        "y": y,
        "dgamma": exe.grad_dict["bn_gamma"].asnumpy(),
        "dbeta": exe.grad_dict["bn_beta"].asnumpy(),
        "moving_mean": exe.aux_dict["bn_moving_mean"].asnumpy(),
        "moving_var": exe.aux_dict["bn_moving_var"].asnumpy(),
    }
    case = _plain_case(before, seen["bn_data"], dy, is_train=True)
    reference = {q: v for q, v in runner_for("sym", backend)(case).items() if q in model}
    problems += _differences(case, model, reference, what=f"sym, types inferred from data={dtype}", backend=backend)
    return problems

"""BatchNorm through a model's life as MXNet runs it: the scenarios judging.lifecycle judges, and its reproducers'
core.

A scenario (``run(spec)``) builds a model around one BatchNorm, drives it (train, evaluate, train; export and
import; cast to float16; a symbol whose shapes and types are inferred) and returns what it saw: ``notes``
(what went wrong outright), ``steps`` (BatchNorm's input, state before and results, to be compared with a
plain call) and ``twins`` (two models' results that must be equal bit for bit). It needs only mxnet and
numpy, so a reproducer embeds this module's source; ``plain`` is the reproducers' plain call.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Any

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

CHECKS = ("train-evaluate-train", "export-import", "float16-cast", "symbolic-inference")
EPS, MOMENTUM = 1e-5, 0.9


def lacks(check: str) -> str | None:
    """What this MXNet release lacks that ``check`` needs, or None (the check is then noted, not run)."""
    needs = {
        "train-evaluate-train": [("HybridBlock.hybridize", hasattr(nn.HybridBlock, "hybridize"))],
        "export-import": [
            ("HybridBlock.export", hasattr(nn.HybridBlock, "export")),
            ("SymbolBlock.imports", hasattr(nn.SymbolBlock, "imports")),
        ],
        "float16-cast": [("Block.cast", hasattr(nn.Block, "cast"))],
        "symbolic-inference": [
            ("Symbol.infer_shape_partial", hasattr(mx.sym.Symbol, "infer_shape_partial")),
            ("Symbol.simple_bind", hasattr(mx.sym.Symbol, "simple_bind")),
        ],
    }[check]
    missing = [name for name, ok in needs if not ok]
    return f"MXNet {mx.__version__} has no {', '.join(missing)}" if missing else None


def _model(channels: int, dtype: str, hybridize: bool, producer: str, rng: Any) -> Any:
    """producer then BatchNorm(scale=True), weights from ``rng``; producer 'conv2d' or 'relu'."""
    net = nn.HybridSequential()
    first = nn.Conv2D(channels, 3, padding=1, in_channels=3) if producer == "conv2d" else nn.Activation("relu")
    norm = nn.BatchNorm(in_channels=channels, epsilon=EPS, momentum=MOMENTUM)
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


def _state(norm: Any) -> dict[str, Any]:
    return {
        "gamma": norm.gamma.data().asnumpy(),
        "beta": norm.beta.data().asnumpy(),
        "moving_mean": norm.running_mean.data().asnumpy(),
        "moving_var": norm.running_var.data().asnumpy(),
    }


def _gluon_step(net: Any, norm: Any, data: Any, x: Any, dy: Any, *, is_train: bool, what: str) -> dict[str, Any]:
    """One step of ``net`` (the whole model, or a function returning BatchNorm's input and output: ``x`` is
    None then, and is what BatchNorm received)."""
    before = _state(norm)
    if is_train:
        with mx.autograd.record():
            y = net(data)
    else:
        y = net(data)
    if isinstance(y, tuple):
        received, y = y
        x = received.asnumpy()
    if is_train:
        y.backward(mx.nd.array(dy, dtype=dy.dtype))
        model = {"y": y.asnumpy(), "dgamma": norm.gamma.grad().asnumpy(), "dbeta": norm.beta.grad().asnumpy()}
    else:
        model = {"y": y.asnumpy()}
    after = _state(norm)
    model.update(moving_mean=after["moving_mean"], moving_var=after["moving_var"])
    return {"what": what, "entry": "gluon", "is_train": is_train, "x": x, "dy": dy, "before": before, "model": model}


def train_evaluate_train(spec: dict[str, Any], out: dict[str, list[Any]]) -> None:
    """Conv2D + BatchNorm: train, evaluate, train; each step against a plain call from the state before it, on
    the convolution's output of that very call. (A second convolution call need not give it: under NaiveEngine,
    MKL-DNN builds before 1.5 reorder a convolution's weights wrongly in its first inference call,
    apache/mxnet#15089.) Hybridized, each layer runs its own cached graph."""
    rng = np.random.default_rng(spec["seed"])
    channels, hybridize = spec["channels"], spec["hybridize"]
    _, conv, norm = _model(channels, "float32", hybridize, "conv2d", rng)

    def layers(data: Any) -> tuple[Any, Any]:
        received = conv(data)
        return received, norm(received)

    for step, is_train in enumerate((True, False, True), start=1):
        u = mx.nd.array(rng.standard_normal((4, 3, 6, 6)))
        dy = rng.standard_normal((4, channels, 6, 6)).astype("float32")
        mode = "training" if is_train else "inference"
        what = f"step {step} ({mode}, {'hybridized' if hybridize else 'imperative'})"
        out["steps"].append(_gluon_step(layers, norm, u, None, dy, is_train=is_train, what=what))


def _results(block: Any, v: Any, dy: Any) -> dict[str, Any]:
    inference = block(v).asnumpy()
    with mx.autograd.record():
        y = block(v)
    y.backward(dy)
    params = {p.name.split("_", 1)[-1]: p for p in block.collect_params().values()}
    grads = {f"d{name}": p.grad().asnumpy() for name, p in params.items() if p.grad_req != "null"}
    stats = {name: p.data().asnumpy() for name, p in params.items() if "running" in name}
    return {"inference": inference, "y": y.asnumpy(), **grads, **stats}


def export_and_import(spec: dict[str, Any], out: dict[str, list[Any]]) -> None:
    """A trained, hybridized Conv2D + BatchNorm exported, then SymbolBlock.imports: inference and one more
    training step must give the original's outputs, gradients and statistics bit for bit."""
    rng = np.random.default_rng(spec["seed"])
    channels = spec["channels"]
    net, _, _ = _model(channels, "float32", True, "conv2d", rng)
    u = mx.nd.array(rng.standard_normal((4, 3, 6, 6)))
    with mx.autograd.record():
        net(u).backward(mx.nd.ones((4, channels, 6, 6)))
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "model")
        net.export(prefix, epoch=0)
        with warnings.catch_warnings():  # "Cannot decide type for ... data": the parameters' types are known
            warnings.simplefilter("ignore", UserWarning)
            imported = nn.SymbolBlock.imports(prefix + "-symbol.json", ["data"], prefix + "-0000.params")
        imported.hybridize(static_alloc=True, static_shape=True)
        v = mx.nd.array(rng.standard_normal((4, 3, 6, 6)))
        dy = mx.nd.array(rng.standard_normal((4, channels, 6, 6)))
        out["twins"].append(["export/import", _results(net, v, dy), _results(imported, v, dy)])


def float16_cast(spec: dict[str, Any], out: dict[str, list[Any]]) -> None:
    """cast('float16') of relu + BatchNorm (the CPU convolution has no float16), then a training step and
    inference: each against a plain float16 call (parameters stay float32) on the input BatchNorm saw."""
    rng = np.random.default_rng(spec["seed"])
    channels, hybridize = spec["channels"], spec["hybridize"]
    net, _, norm = _model(channels, "float16", hybridize, "relu", rng)
    if norm.gamma.data().dtype != np.float32:
        out["notes"].append(["cast:gamma", f"cast('float16') left BatchNorm's gamma {norm.gamma.data().dtype}"])
    for is_train in (True, False):
        u = rng.standard_normal((4, channels, 5, 5)).astype("float16")
        dy = rng.standard_normal(u.shape).astype("float16")
        data = mx.nd.array(u, dtype="float16")
        data.attach_grad()
        what = f"float16 {'training' if is_train else 'inference'}"
        x = np.maximum(u, np.float16(0))
        out["steps"].append(_gluon_step(net, norm, data, x, dy, is_train=is_train, what=what))


def symbolic_inference(spec: dict[str, Any], out: dict[str, list[Any]]) -> None:
    """BatchNorm after a convolution (float16: after relu) in a symbol whose shapes and types are given only for
    data: infer_shape_partial, infer_shape, infer_type, then simple_bind with a partial type_dict and one
    training step against the plain call on BatchNorm's input (the graph's second output)."""
    dtype, channels = spec["dtype"], spec["channels"]
    data = mx.sym.Variable("data")
    convolved = dtype != "float16"
    h = mx.sym.Convolution(data, num_filter=channels, kernel=(3, 3), pad=(1, 1), name="conv") if convolved else data
    h = mx.sym.Activation(h, act_type="relu", name="act")
    bn = mx.sym.BatchNorm(h, name="bn", fix_gamma=False, eps=EPS, momentum=MOMENTUM)
    notes = out["notes"]
    try:
        _, partial_out, _ = bn.infer_shape_partial()
        if partial_out and partial_out[0] and all(partial_out[0]):
            notes.append(["infer_shape_partial", f"with no shapes it claims a complete output {partial_out[0]}"])
    except mx.base.MXNetError as exc:
        notes.append(["raises:infer_shape_partial", f"infer_shape_partial() raised: {str(exc).splitlines()[0]}"])
    shape = (4, 3 if convolved else channels, 5, 5)
    args, outs, aux = bn.infer_shape(data=shape)
    names = dict(zip(bn.list_arguments(), args, strict=True))
    if names.get("bn_gamma") != (channels,) or outs[0] != (4, channels, 5, 5) or list(aux) != [(channels,)] * 2:
        notes.append(["infer_shape", f"infer_shape(data={shape}) gave gamma {names.get('bn_gamma')}, {outs}, {aux}"])
    arg_types, _, aux_types = bn.infer_type(data=dtype)
    types = dict(zip(bn.list_arguments(), arg_types, strict=True))
    want = np.dtype("float32" if dtype == "float16" else dtype)
    if np.dtype(types["bn_gamma"]) != want or any(np.dtype(t) != want for t in aux_types):
        notes.append(["infer_type", f"infer_type(data={dtype}) gave gamma {types['bn_gamma']}, aux {aux_types}"])
    net = mx.sym.Group([bn, mx.sym.BlockGrad(h)])  # BatchNorm's input as an output: what it saw, as it ran
    exe = net.simple_bind(mx.cpu(), grad_req="write", type_dict={"data": dtype}, data=shape)
    rng = np.random.default_rng(spec["seed"])
    for name, array in exe.arg_dict.items():
        array[:] = rng.standard_normal(array.shape) / (3 if name.startswith("conv") else 1)
    exe.arg_dict["bn_gamma"][:] = rng.uniform(0.5, 2, channels)
    exe.aux_dict["bn_moving_var"][:] = rng.uniform(0.5, 2, channels)
    before = {"gamma": exe.arg_dict["bn_gamma"].asnumpy(), "beta": exe.arg_dict["bn_beta"].asnumpy()}
    before.update(moving_mean=exe.aux_dict["bn_moving_mean"].asnumpy())
    before.update(moving_var=exe.aux_dict["bn_moving_var"].asnumpy())
    y, x = (o.asnumpy() for o in exe.forward(is_train=True))
    if y.dtype != np.dtype(dtype):
        notes.append(["infer_type:run", f"simple_bind(type_dict={{'data': {dtype!r}}}) ran BatchNorm in {y.dtype}"])
        return
    dy = rng.standard_normal(y.shape).astype(dtype)
    exe.backward([mx.nd.array(dy, dtype=dtype), mx.nd.zeros(x.shape, dtype=dtype)])
    model = {"y": y, "dgamma": exe.grad_dict["bn_gamma"].asnumpy(), "dbeta": exe.grad_dict["bn_beta"].asnumpy()}
    model.update(moving_mean=exe.aux_dict["bn_moving_mean"].asnumpy())
    model.update(moving_var=exe.aux_dict["bn_moving_var"].asnumpy())
    what = f"sym, types inferred from data={dtype}"
    step = {"what": what, "entry": "sym", "is_train": True, "x": x, "dy": dy}
    out["steps"].append({**step, "before": before, "model": model})


SCENARIOS = {
    "train-evaluate-train": train_evaluate_train,
    "export-import": export_and_import,
    "float16-cast": float16_cast,
    "symbolic-inference": symbolic_inference,
}


def run(spec: dict[str, Any]) -> dict[str, list[Any]]:
    """Run the scenario ``spec['check']`` names: its notes, steps and twins (see the module's docstring)."""
    out: dict[str, list[Any]] = {"notes": [], "steps": [], "twins": []}
    SCENARIOS[spec["check"]](spec, out)
    return out


def plain(step: dict[str, Any]) -> dict[str, Any]:
    """The same BatchNorm alone (mx.nd.BatchNorm under autograd) on a copy of the step's input and state."""
    s = step["before"]
    x = mx.nd.array(step["x"], dtype=step["x"].dtype)
    gamma, beta = mx.nd.array(s["gamma"]), mx.nd.array(s["beta"])
    mm, mv = mx.nd.array(s["moving_mean"]), mx.nd.array(s["moving_var"])
    for a in (gamma, beta):
        a.attach_grad()
    kw = {"eps": EPS, "momentum": MOMENTUM, "fix_gamma": False, "axis": 1}
    if step["is_train"]:
        with mx.autograd.record():
            y = mx.nd.BatchNorm(x, gamma, beta, mm, mv, **kw)
        y.backward(mx.nd.array(step["dy"], dtype=step["dy"].dtype))
    else:  # inference: no backward, which could touch the moving statistics
        y = mx.nd.BatchNorm(x, gamma, beta, mm, mv, **kw)
    got = {"y": y.asnumpy(), "dgamma": gamma.grad.asnumpy(), "dbeta": beta.grad.asnumpy()}
    got.update(moving_mean=mm.asnumpy(), moving_var=mv.asnumpy())
    return {q: v for q, v in got.items() if q in step["model"]}

"""Build a producer chain and the BatchNorm after it, run it in one MXNet API, and capture what BatchNorm saw.

Standalone on purpose: it imports only numpy and (inside the functions) mxnet, so that a reproducer
(bnprops.mx.producers.Chain.snippet) embeds this very source and runs exactly what the tests ran.

A *spec* is a plain dict (Chain.to_dict()): ``api``, ``dtype``, ``input_shape``, ``steps``, ``bn`` and
``seed``; every array comes from numpy generators seeded by ``seed``, so MXNet's initialisers draw
nothing.  BatchNorm's own x and dy are captured per API: the producer's output marked as a variable
(``nd``, ``gluon``), the CachedOp's op hook (``gluon-hybrid``), the executor's monitor (``sym``).
BatchNorm is the network's last layer, so the head gradient fed to backward is BatchNorm's dy.
"""

from __future__ import annotations

import ctypes
import warnings
from typing import Any

import numpy as np

#: The APIs a chain can be built in.
APIS = ("nd", "gluon", "gluon-hybrid", "sym")
#: Producer steps: what each takes (op name -> the keys of its parameters).
STEP_KEYS = {
    "conv": ("dims", "channels", "kernel", "pad"),
    "dense": ("units",),
    "pool": ("kind", "kernel"),
    "act": ("kind",),
    "concat": (),
    "slice": ("axis", "begin", "end"),
    "reshape": ("shape",),
    "transpose": ("axes",),
}


def step_output_shape(step: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a step makes of ``shape``; ValueError where the step cannot take it."""
    op = step["op"]
    if op == "conv":
        dims, k, pad = step["dims"], step["kernel"], step["pad"]
        if len(shape) != dims + 2:
            raise ValueError(f"conv{dims}d needs a {dims + 2}-D input, got {shape}")
        spatial = tuple(s + 2 * pad - k + 1 for s in shape[2:])
        if min(spatial) < 1:
            raise ValueError(f"conv kernel {k} (pad {pad}) does not fit {shape}")
        return (shape[0], step["channels"], *spatial)
    if op == "dense":
        return (shape[0], step["units"])
    if op == "pool":
        k = step["kernel"]
        if len(shape) < 3 or min(shape[2:]) < k:
            raise ValueError(f"pooling {k} does not fit {shape}")
        return (shape[0], shape[1], *(s // k for s in shape[2:]))
    if op == "act":
        return shape
    if op == "concat":
        if len(shape) < 2:
            raise ValueError(f"concat along axis 1 needs 2 dimensions, got {shape}")
        return (shape[0], 2 * shape[1], *shape[2:])
    if op == "slice":
        axis, begin, end = step["axis"], step["begin"], step["end"]
        if not 0 <= begin < end <= shape[axis]:
            raise ValueError(f"slice [{begin}:{end}] of axis {axis} does not fit {shape}")
        return (*shape[:axis], end - begin, *shape[axis + 1 :])
    if op == "reshape":
        target = tuple(step["shape"])
        if int(np.prod(target)) != int(np.prod(shape)):
            raise ValueError(f"cannot reshape {shape} to {target}")
        return target
    if op == "transpose":
        axes = tuple(step["axes"])
        if sorted(axes) != list(range(len(shape))):
            raise ValueError(f"axes {axes} do not permute {shape}")
        return tuple(shape[a] for a in axes)
    raise ValueError(f"unknown step {op!r}; choose from {sorted(STEP_KEYS)}")


def shapes(spec: dict[str, Any]) -> list[tuple[int, ...]]:
    """The input shape, then each step's output shape (the last is BatchNorm's input)."""
    result = [tuple(spec["input_shape"])]
    for step in spec["steps"]:
        result.append(step_output_shape(step, result[-1]))
    return result


def _weights(step: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    if step["op"] == "conv":
        return (step["channels"], shape[1], *(step["kernel"],) * step["dims"])
    if step["op"] == "dense":
        return (step["units"], int(np.prod(shape[1:])))
    return None


def draw(spec: dict[str, Any]) -> dict[str, Any]:
    """Every array of the network, from the seed: input u, per-step (weight, bias), BatchNorm's arrays, dy."""
    dtype = spec["dtype"]
    pdt = "float32" if dtype == "float16" else dtype
    rng = np.random.default_rng(spec["seed"])
    sizes = shapes(spec)
    u = rng.standard_normal(sizes[0]).astype(dtype)
    weights: list[tuple[np.ndarray, np.ndarray] | None] = []
    for step, shape in zip(spec["steps"], sizes, strict=False):
        wshape = _weights(step, shape)
        if wshape is None:
            weights.append(None)
            continue
        fan_in = int(np.prod(wshape[1:]))
        w = (rng.standard_normal(wshape) / np.sqrt(fan_in)).astype(dtype)
        b = rng.uniform(-0.5, 0.5, wshape[0]).astype(dtype)
        weights.append((w, b))
    out = sizes[-1]
    channels = out[spec["bn"]["axis"]]
    return {
        "u": u,
        "weights": weights,
        "gamma": rng.uniform(0.5, 2, channels).astype(pdt),
        "beta": rng.uniform(-1, 1, channels).astype(pdt),
        "moving_mean": rng.uniform(-1, 1, channels).astype(pdt),
        "moving_var": rng.uniform(0.5, 2, channels).astype(pdt),
        "dy": rng.standard_normal(out).astype(dtype),
    }


def _apply(F: Any, step: dict[str, Any], h: Any, params: tuple[Any, Any] | None) -> Any:
    """One step through mx.nd or mx.sym (``F``), with its weight and bias (NDArrays or Symbols)."""
    op = step["op"]
    if op == "conv":
        assert params is not None
        k, d = step["kernel"], step["dims"]
        return F.Convolution(
            h, params[0], params[1], kernel=(k,) * d, pad=(step["pad"],) * d, num_filter=step["channels"]
        )
    if op == "dense":
        assert params is not None
        return F.FullyConnected(h, params[0], params[1], num_hidden=step["units"])
    if op == "pool":
        k, dims = step["kernel"], len(step["_shape"]) - 2
        return F.Pooling(h, kernel=(k,) * dims, stride=(k,) * dims, pool_type=step["kind"])
    if op == "act":
        return F.Activation(h, act_type=step["kind"])
    return _layout(F, step, h)


def _layout(F: Any, step: dict[str, Any], h: Any) -> Any:
    """The steps that only move data (views in a user's eyes): concat, slice, reshape, transpose."""
    op = step["op"]
    if op == "concat":
        return F.concat(h, h, dim=1)
    if op == "slice":
        return F.slice_axis(h, axis=step["axis"], begin=step["begin"], end=step["end"])
    if op == "reshape":
        return F.reshape(h, shape=tuple(step["shape"]))
    if op == "transpose":
        return F.transpose(h, axes=tuple(step["axes"]))
    raise ValueError(f"unknown step {op!r}")


def _annotated(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps, each with the shape it takes (pooling's dimensionality follows from it)."""
    return [dict(step, _shape=shape) for step, shape in zip(spec["steps"], shapes(spec), strict=False)]


def _bn_params(spec: dict[str, Any]) -> dict[str, Any]:
    bn = spec["bn"]
    return {"axis": bn["axis"], "eps": bn["eps"], "momentum": bn["momentum"], "fix_gamma": bn["fix_gamma"]}


def run_in_network(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """Build the network in ``spec['api']``, train forward, backward(dy); BatchNorm's results and what it saw.

    Keys: x and dy (BatchNorm's input and head gradient, as captured), y, dx, dgamma (absent where
    gamma takes no gradient), dbeta, gamma, moving_mean, moving_var, forward_moving_mean/var.
    """
    api = spec["api"]
    if api not in APIS:
        raise ValueError(f"unknown api {api!r}; choose from {APIS}")
    arrays = draw(spec)
    runner = {"nd": _run_nd, "gluon": _run_gluon, "gluon-hybrid": _run_gluon, "sym": _run_sym}[api]
    result: dict[str, np.ndarray] = runner(spec, arrays)
    return result


def _run_nd(spec: dict[str, Any], arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    import mxnet as mx

    dtype, pdt = spec["dtype"], arrays["gamma"].dtype
    h = mx.nd.array(arrays["u"], dtype=dtype)
    gamma, beta = mx.nd.array(arrays["gamma"], dtype=pdt), mx.nd.array(arrays["beta"], dtype=pdt)
    mm, mv = mx.nd.array(arrays["moving_mean"], dtype=pdt), mx.nd.array(arrays["moving_var"], dtype=pdt)
    gamma.attach_grad()
    beta.attach_grad()
    params = [
        None if w is None else (mx.nd.array(w[0], dtype=dtype), mx.nd.array(w[1], dtype=dtype))
        for w in arrays["weights"]
    ]
    with mx.autograd.record():
        for step, p in zip(_annotated(spec), params, strict=True):
            h = _apply(mx.nd, step, h, p)
        h.attach_grad()  # BatchNorm's input becomes a variable: its dx lands in h.grad
        y = mx.nd.BatchNorm(h, gamma, beta, mm, mv, **_bn_params(spec))
    forward = (mm.asnumpy(), mv.asnumpy())
    y.backward(mx.nd.array(arrays["dy"], dtype=dtype))
    return {
        "x": h.asnumpy(),
        "dy": arrays["dy"],
        "y": y.asnumpy(),
        "dx": h.grad.asnumpy(),
        "dgamma": gamma.grad.asnumpy(),
        "dbeta": beta.grad.asnumpy(),
        "gamma": gamma.asnumpy(),
        "moving_mean": mm.asnumpy(),
        "moving_var": mv.asnumpy(),
        "forward_moving_mean": forward[0],
        "forward_moving_var": forward[1],
    }


def gluon_layer(step: dict[str, Any]) -> Any:
    """The gluon block a user would write for a step (a HybridLambda for the data-moving ones)."""
    from mxnet.gluon import nn

    op = step["op"]
    shape = step["_shape"]
    if op == "conv":
        conv = {1: nn.Conv1D, 2: nn.Conv2D, 3: nn.Conv3D}[step["dims"]]
        return conv(step["channels"], step["kernel"], padding=step["pad"], in_channels=shape[1])
    if op == "dense":
        return nn.Dense(step["units"], in_units=int(np.prod(shape[1:])))
    if op == "pool":
        dims = len(shape) - 2
        kind = {"max": "MaxPool", "avg": "AvgPool"}[step["kind"]]
        return getattr(nn, f"{kind}{dims}D")(pool_size=step["kernel"], strides=step["kernel"])
    if op == "act":
        return nn.Activation(step["kind"])
    return nn.HybridLambda(lambda F, x: _layout(F, step, x))


def _tap_block() -> Any:
    """An imperative pass-through block: marks BatchNorm's input as a variable and keeps it."""
    from mxnet.gluon import nn

    class Tap(nn.Block):  # type: ignore[misc]
        def forward(self, x: Any) -> Any:
            x.attach_grad()
            self.seen = x
            return x

    return Tap()


def _hook(store: dict[str, np.ndarray]) -> Any:
    """A monitor callback (executor or CachedOp) that keeps BatchNorm's and its backward node's arrays."""
    import mxnet as mx

    def callback(name: Any, *rest: Any) -> None:
        handle = rest[-1]  # the executor passes (name, handle), a CachedOp (name, op name, handle)
        name = name.decode() if isinstance(name, bytes) else str(name)
        array = mx.nd.NDArray(ctypes.cast(handle, mx.base.NDArrayHandle), writable=False)
        store[name] = array.asnumpy()

    return callback


def _pick(store: dict[str, np.ndarray], prefix: str, suffixes: tuple[str, ...]) -> np.ndarray:
    for suffix in suffixes:
        if prefix + suffix in store:
            return store[prefix + suffix]
    raise RuntimeError(f"the monitor did not show {prefix}{suffixes[0]}; it showed {sorted(store)}")


def _run_gluon(spec: dict[str, Any], arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    import mxnet as mx
    from mxnet.gluon import nn

    hybrid = spec["api"] == "gluon-hybrid"
    dtype, bn = spec["dtype"], spec["bn"]
    net = nn.HybridSequential(prefix="net_") if hybrid else nn.Sequential(prefix="net_")
    with net.name_scope():
        layers = [gluon_layer(step) for step in _annotated(spec)]
        tap = None if hybrid else _tap_block()
        norm = nn.BatchNorm(
            axis=bn["axis"],
            momentum=bn["momentum"],
            epsilon=bn["eps"],
            scale=not bn["fix_gamma"],
            center=True,
            in_channels=len(arrays["gamma"]),
            prefix="bn_",
        )
    net.add(*layers, *([tap] if tap is not None else []), norm)
    net.initialize()
    net.cast(dtype)  # float16: gluon keeps BatchNorm's parameters in float32
    for layer, w in zip(layers, arrays["weights"], strict=True):
        if w is not None:
            layer.weight.set_data(mx.nd.array(w[0], dtype=dtype))
            layer.bias.set_data(mx.nd.array(w[1], dtype=dtype))
    pdt = arrays["gamma"].dtype
    for param, key in ((norm.gamma, "gamma"), (norm.beta, "beta")):
        param.set_data(mx.nd.array(arrays[key], dtype=pdt))
    norm.running_mean.set_data(mx.nd.array(arrays["moving_mean"], dtype=pdt))
    norm.running_var.set_data(mx.nd.array(arrays["moving_var"], dtype=pdt))
    store: dict[str, np.ndarray] = {}
    if hybrid:
        net.hybridize(static_alloc=True, static_shape=True)
        net.register_op_hook(_hook(store), monitor_all=True)
    u = mx.nd.array(arrays["u"], dtype=dtype)
    with warnings.catch_warnings():  # "register_op_hook is experimental when static_alloc=True": see _split_dx
        warnings.simplefilter("ignore", UserWarning)
        with mx.autograd.record():
            y = net(u)
        forward = (norm.running_mean.data().asnumpy(), norm.running_var.data().asnumpy())
        y.backward(mx.nd.array(arrays["dy"], dtype=dtype))
        mx.nd.waitall()
    result = {
        "y": y.asnumpy(),
        "dbeta": norm.beta.grad().asnumpy(),
        "gamma": norm.gamma.data().asnumpy(),
        "moving_mean": norm.running_mean.data().asnumpy(),
        "moving_var": norm.running_var.data().asnumpy(),
        "forward_moving_mean": forward[0],
        "forward_moving_var": forward[1],
    }
    if norm.gamma.grad_req != "null":
        result["dgamma"] = norm.gamma.grad().asnumpy()
    if hybrid:
        prefix = "net_bn_fwd_"
        result["x"] = _pick(store, prefix, ("data",))
        result["dy"] = _pick(store, prefix, ("backward_input0",))
        result["dx"] = _split_dx(net, norm, u, arrays)
    else:
        assert tap is not None
        result["x"], result["dx"], result["dy"] = tap.seen.asnumpy(), tap.seen.grad.asnumpy(), arrays["dy"]
    return result


def _split_dx(net: Any, norm: Any, u: Any, arrays: dict[str, Any]) -> np.ndarray:
    """BatchNorm's dx in a hybridized network, from a second step in which each child runs as its own
    CachedOp (static_alloc) and BatchNorm's input is marked as a variable between them.

    The op hook's reading of the backward node's dx is not to be trusted under static_alloc (MXNet
    warns; it read zeros and garbage after concat and reshape, where the gradient at the network's
    input was right), so the one-CachedOp step gives everything but dx.
    """
    import mxnet as mx

    pdt = arrays["gamma"].dtype
    norm.running_mean.set_data(mx.nd.array(arrays["moving_mean"], dtype=pdt))
    norm.running_var.set_data(mx.nd.array(arrays["moving_var"], dtype=pdt))
    children = list(net._children.values())
    with warnings.catch_warnings():  # each child's CachedOp carries the op hook too
        warnings.simplefilter("ignore", UserWarning)
        with mx.autograd.record():
            h = u
            for child in children[:-1]:
                h = child(h)
            h.attach_grad()
            y = norm(h)
        y.backward(mx.nd.array(arrays["dy"], dtype=u.dtype))
    dx: np.ndarray = h.grad.asnumpy()
    return dx


def _run_sym(spec: dict[str, Any], arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    import mxnet as mx

    dtype = spec["dtype"]
    h = mx.sym.Variable("data")
    values = {"data": arrays["u"]}
    for i, (step, w) in enumerate(zip(_annotated(spec), arrays["weights"], strict=True)):
        params = None
        if w is not None:
            params = (mx.sym.Variable(f"s{i}_weight"), mx.sym.Variable(f"s{i}_bias"))
            values[f"s{i}_weight"], values[f"s{i}_bias"] = w
        h = _apply(mx.sym, step, h, params)
    net = mx.sym.BatchNorm(h, name="bn", **_bn_params(spec))
    pdt = arrays["gamma"].dtype
    types = {name: value.dtype for name, value in values.items()}
    types.update({"bn_gamma": pdt, "bn_beta": pdt, "bn_moving_mean": pdt, "bn_moving_var": pdt})
    exe = net.simple_bind(mx.cpu(), grad_req="write", type_dict=types, **{k: v.shape for k, v in values.items()})
    for name, value in values.items():
        exe.arg_dict[name][:] = value
    exe.arg_dict["bn_gamma"][:] = arrays["gamma"]
    exe.arg_dict["bn_beta"][:] = arrays["beta"]
    exe.aux_dict["bn_moving_mean"][:] = arrays["moving_mean"]
    exe.aux_dict["bn_moving_var"][:] = arrays["moving_var"]
    store: dict[str, np.ndarray] = {}
    exe.set_monitor_callback(_hook(store), monitor_all=True)
    y = exe.forward(is_train=True)[0].asnumpy()
    forward = (exe.aux_dict["bn_moving_mean"].asnumpy(), exe.aux_dict["bn_moving_var"].asnumpy())
    exe.backward([mx.nd.array(arrays["dy"], dtype=dtype)])
    mx.nd.waitall()
    return {
        "x": _pick(store, "bn_", ("data",)),
        "dy": _pick(store, "bn_", ("backward_input0",)),
        "y": y,
        "dx": _pick(store, "bn_", ("backward_output0", "backward_0")),
        "dgamma": exe.grad_dict["bn_gamma"].asnumpy(),
        "dbeta": exe.grad_dict["bn_beta"].asnumpy(),
        "gamma": exe.arg_dict["bn_gamma"].asnumpy(),
        "moving_mean": exe.aux_dict["bn_moving_mean"].asnumpy(),
        "moving_var": exe.aux_dict["bn_moving_var"].asnumpy(),
        "forward_moving_mean": forward[0],
        "forward_moving_var": forward[1],
    }


def run_plain(spec: dict[str, Any], x: np.ndarray, dy: np.ndarray) -> dict[str, np.ndarray]:
    """The same BatchNorm, alone, on a plain copy of x: mx.nd.BatchNorm under autograd (the reproducer's side)."""
    import mxnet as mx

    arrays = draw(spec)
    pdt = arrays["gamma"].dtype
    data = mx.nd.array(x, dtype=x.dtype)
    gamma, beta = mx.nd.array(arrays["gamma"], dtype=pdt), mx.nd.array(arrays["beta"], dtype=pdt)
    mm, mv = mx.nd.array(arrays["moving_mean"], dtype=pdt), mx.nd.array(arrays["moving_var"], dtype=pdt)
    for a in (data, gamma, beta):
        a.attach_grad()
    with mx.autograd.record():
        y = mx.nd.BatchNorm(data, gamma, beta, mm, mv, **_bn_params(spec))
    y.backward(mx.nd.array(dy, dtype=dy.dtype))
    return {
        "y": y.asnumpy(),
        "dx": data.grad.asnumpy(),
        "dgamma": gamma.grad.asnumpy(),
        "dbeta": beta.grad.asnumpy(),
        "moving_mean": mm.asnumpy(),
        "moving_var": mv.asnumpy(),
    }

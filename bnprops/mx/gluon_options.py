"""gluon.nn.BatchNorm through the options around the operator: deferred in_channels, the initialisers, cast.

The layer is built with ``in_channels=0`` (its shape inferred at the first forward) and the case's gamma,
beta and moving statistics given as its four initialisers (``mx.init.Constant``), inside a HybridSequential
that is ``cast`` to the case's dtype (for float16 _BatchNorm.cast keeps its parameters float32); center and
scale follow the case as in the plain gluon runner (center=False: beta frozen; scale=False: fix_gamma), and a
gamma requested with 'null' under scale=True is frozen rather than fixed. ``gluon-options-hybrid`` hybridizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mxnet as mx
import numpy as np

from bnprops.model.case import Case, Outputs, param_dtype
from bnprops.mx import mxversion
from bnprops.mx.runners import adapt
from bnprops.mx.snippets import kernel_header

ENTRIES = ("gluon-options", "gluon-options-hybrid")
#: The plain entry point whose layer the options build (its deviations apply too).
PLAIN = {"gluon-options": "gluon", "gluon-options-hybrid": "gluon-hybrid"}
#: Both CPU kernels: the layer calls the plain operator (float32 through oneDNN unless MXNET_MKLDNN_ENABLED=0).
KERNELS: dict[str, str | None] = {"onednn": None, "native": None}


#: Before it, a deferred initialisation serialises each initialiser with json, which fails for an array-valued
#: mx.init.Constant (apache/mxnet#15150): the four initialisers cannot carry per-channel values.
ARRAY_CONSTANT_SINCE = "1.6.0"


def unavailable_reason() -> str | None:
    """Why this MXNet lacks the options, or None (in_channels=0 and the four initialisers exist since 1.0)."""
    if mxversion.parse(mxversion.running()) < mxversion.parse(ARRAY_CONSTANT_SINCE):
        return (
            f"MXNet {mxversion.running()} cannot initialise a deferred parameter from an array-valued "
            "mx.init.Constant (its json dumps fails; apache/mxnet#15150, in 1.6.0)"
        )
    return None


def unexpressible_reason(case: Case) -> str | None:
    """Why the options' layer cannot run ``case``, or None: what gluon cannot express (adapt's refusal)."""
    try:
        adapted = adapt("gluon", case)
    except ValueError as exc:
        return str(exc)
    if adapted.request("data") != "write" or adapted.accumulates:
        return "the options' runner writes dx and accumulates nothing (the plain gluon entries check 'add' and 'null')"
    return None


def _constant(values: np.ndarray) -> Any:
    # (the deferred initialisation writes it into the parameter's array after cast: in that array's dtype)
    return mx.init.Constant(mx.nd.array(values, dtype=values.dtype))


def _layer(case: Case) -> Any:
    from mxnet.gluon import nn

    layer = nn.BatchNorm(
        axis=case.axis,
        momentum=case.momentum,
        epsilon=case.eps,
        center=case.request("beta") != "null",
        scale=not case.fix_gamma,
        use_global_stats=case.use_global_stats,
        gamma_initializer=_constant(case.gamma),
        beta_initializer=_constant(case.beta),
        running_mean_initializer=_constant(case.moving_mean),
        running_variance_initializer=_constant(case.moving_var),
        in_channels=0,
    )
    if not case.fix_gamma and case.request("gamma") == "null":
        layer.gamma.grad_req = "null"  # frozen, not fixed: the operator still scales by it
    return layer


def _run(case: Case, *, hybridize: bool) -> Outputs:
    from mxnet.gluon import nn

    reason = unexpressible_reason(case)
    if reason is not None:
        raise ValueError(f"gluon-options cannot run {case.describe()}: {reason}")
    case = adapt("gluon", case)
    layer = _layer(case)
    net = nn.HybridSequential()
    net.add(layer)
    net.initialize(ctx=mx.cpu())
    net.cast(case.dtype)
    if hybridize:
        net.hybridize()
    data = mx.nd.array(case.x, dtype=case.dtype)
    data.attach_grad(grad_req=case.request("data"))
    grad = data.grad
    inference = None if case.is_train else net(data)  # (the first forward initialises the deferred parameters)
    with mx.autograd.record(train_mode=case.is_train):
        out = net(data)
    forward_moving = (layer.running_mean.data().asnumpy(), layer.running_var.data().asnumpy())
    out.backward(mx.nd.array(case.dy, dtype=case.dtype), train_mode=case.is_train)
    result: Outputs = {
        "y": (out if inference is None else inference).asnumpy(),
        "gamma": layer.gamma.data().asnumpy(),
        "moving_mean": layer.running_mean.data().asnumpy(),
        "moving_var": layer.running_var.data().asnumpy(),
        "forward_moving_mean": forward_moving[0],
        "forward_moving_var": forward_moving[1],
    }
    if case.request("data") != "null":
        result["dx"] = grad.asnumpy()
    for name, param in (("dgamma", layer.gamma), ("dbeta", layer.beta)):
        if param.grad_req != "null":
            result[name] = param.grad().asnumpy()
    dtypes = {np.dtype(p.data().dtype).name for p in (layer.gamma, layer.beta, layer.running_mean, layer.running_var)}
    if dtypes != {param_dtype(case.dtype)}:
        raise AssertionError(f"cast({case.dtype!r}) left BatchNorm's parameters in {sorted(dtypes)}")
    return result


def run_gluon_options(case: Case) -> Outputs:
    """The options' layer, imperative: inference outside autograd.record(), training inside it."""
    return _run(case, hybridize=False)


def run_gluon_options_hybrid(case: Case) -> Outputs:
    """The options' layer after hybridize() (on the container)."""
    return _run(case, hybridize=True)


RUNNERS: dict[str, Callable[[Case], Outputs]] = {
    "gluon-options": run_gluon_options,
    "gluon-options-hybrid": run_gluon_options_hybrid,
}


def multi_precision_step(case: Case, *, learning_rate: float) -> Outputs:
    """The options' layer, cast to the case's dtype, trained one step: forward and backward in training mode,
    then Trainer('sgd', multi_precision=True).step(1). Returns gamma and beta after the update (float32 for
    float16 data: _BatchNorm.cast keeps them so, and multi_precision has no float16 weight of theirs to shadow)."""
    from mxnet.gluon import Trainer, nn

    case = adapt("gluon", case.with_(is_train=True))
    layer = _layer(case)
    net = nn.HybridSequential()
    net.add(layer)
    net.initialize(ctx=mx.cpu())
    net.cast(case.dtype)
    trainer = Trainer(net.collect_params(), "sgd", {"learning_rate": learning_rate, "multi_precision": True})
    data = mx.nd.array(case.x, dtype=case.dtype)
    with mx.autograd.record():
        out = net(data)
    out.backward(mx.nd.array(case.dy, dtype=case.dtype))
    trainer.step(1)
    return {"gamma": layer.gamma.data().asnumpy(), "beta": layer.beta.data().asnumpy()}


def snippet(case: Case, entry: str, *, backend: str = "onednn") -> str:
    """A standalone script (mxnet and numpy) that builds the options' layer for ``case`` and makes the call;
    results in ``actual``."""
    if entry not in RUNNERS:
        raise ValueError(f"no gluon-options reproducer for entry {entry!r}")
    case = adapt("gluon", case)
    pdt = param_dtype(case.dtype)

    def arr(a: np.ndarray) -> str:
        return f"np.array({a.astype(np.float64).tolist()!r}, dtype=np.float64).astype({str(a.dtype)!r})"

    def init(a: np.ndarray) -> str:
        return f"mx.init.Constant(mx.nd.array({arr(a)}, dtype={pdt!r}))"

    frozen = not case.fix_gamma and case.request("gamma") == "null"
    return "\n".join(
        [
            *kernel_header(backend),
            "import mxnet as mx, numpy as np",
            "from mxnet.gluon import nn",
            "nan, inf = float('nan'), float('inf')  # as repr writes non-finite data",
            f"x, dy, is_train = {arr(case.x)}, {arr(case.dy)}, {case.is_train}",
            f"layer = nn.BatchNorm(axis={case.axis}, momentum={case.momentum!r}, epsilon={case.eps!r}, "
            f"center={case.request('beta') != 'null'}, scale={not case.fix_gamma}, "
            f"use_global_stats={case.use_global_stats}, in_channels=0,",
            f"    gamma_initializer={init(case.gamma)},",
            f"    beta_initializer={init(case.beta)},",
            f"    running_mean_initializer={init(case.moving_mean)},",
            f"    running_variance_initializer={init(case.moving_var)})",
            "layer.gamma.grad_req = 'null'  # frozen, not fixed" if frozen else "",
            "net = nn.HybridSequential()",
            "net.add(layer)",
            "net.initialize()",
            f"net.cast({case.dtype!r})",
            "net.hybridize()" if entry == "gluon-options-hybrid" else "",
            f"data = mx.nd.array(x, dtype={case.dtype!r})",
            "data.attach_grad()",
            "inference = None if is_train else net(data)",
            "with mx.autograd.record(train_mode=is_train):",
            "    out = net(data)",
            f"out.backward(mx.nd.array(dy, dtype={case.dtype!r}), train_mode=is_train)",
            "actual = {'y': (out if inference is None else inference).asnumpy(), 'dx': data.grad.asnumpy(),",
            "          'gamma': layer.gamma.data().asnumpy(), 'moving_mean': layer.running_mean.data().asnumpy(),",
            "          'moving_var': layer.running_var.data().asnumpy()}",
            "for name, param in (('dgamma', layer.gamma), ('dbeta', layer.beta)):",
            "    if param.grad_req != 'null':",
            "        actual[name] = param.grad().asnumpy()",
            "for q, value in actual.items():",
            "    print(q, value)",
        ]
    )

"""The standalone script that makes one BatchNorm call through an entry point: the reproducers' core.

``snippet(case, entry=..., backend=...)`` writes the case's arrays exactly (float64 reprs cast back),
the parameters, the gradient requests and buffers, then the call through the entry point's own API
(symbolic executor, autograd on nd or np arrays, a gluon layer), leaving MXNet's results in
``actual``.  It needs mxnet and numpy only; every reproducer (fuzzing.reproducer,
fuzzing.relation_reproducer, commands.explanation) and every failure message builds on it.
"""

from __future__ import annotations

import inspect

import numpy as np

from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, NULL_BUFFER_OF, Case, param_dtype, sentinel


def kernel_header(backend: str) -> list[str]:
    """A script's first lines choosing the CPU kernel: none for oneDNN (the default), the switch for native."""
    if backend == "native":
        return ["import os", "os.environ['MXNET_MKLDNN_ENABLED'] = '0'  # the native kernel (read at import)"]
    return []


def snippet(case: Case, *, entry: str = "sym", backend: str = "onednn") -> str:
    """A standalone script (mxnet and numpy only) that makes exactly the call ``case`` and prints what MXNet returns.

    It leaves MXNet's results in ``actual``, a dict from quantity name to numpy array.

    ``entry`` is how the call reaches the operator (bnprops.mx.runners.ENTRY_POINTS); ``backend``
    'native' disables oneDNN, which MXNet reads at start-up.
    """
    body = _SNIPPET_BODIES.get(entry)
    if body is None:
        raise ValueError(f"no reproducer for entry point {entry!r}; choose from {sorted(_SNIPPET_BODIES)}")
    pdt = param_dtype(case.dtype)

    def arr(a: np.ndarray) -> str:
        if not a.size:  # an empty batch: its shape is all there is to it
            return f"np.zeros({a.shape!r}, dtype={str(a.dtype)!r})"
        # float64 repr of every element is exact, and casting back restores the original bits.
        return f"np.array({a.astype(np.float64).tolist()!r}, dtype=np.float64).astype({str(a.dtype)!r})"

    head = kernel_header(backend)
    head += [
        "import mxnet as mx, numpy as np",
        "nan, inf = float('nan'), float('inf')  # as repr writes non-finite data",
        f"x = {arr(case.x)}",
        f"dy = {arr(case.dy)}",
        f"gamma, beta = {arr(case.gamma)}, {arr(case.beta)}",
        f"moving_mean, moving_var = {arr(case.moving_mean)}, {arr(case.moving_var)}",
        f"C, pdt = {case.channels}, {pdt!r}",
        f"req = {dict(zip(GRAD_TARGETS, case.grad_req, strict=True))!r}",
        "prior = {"
        + ", ".join(f"{t!r}: {arr(p)}" for t in GRAD_TARGETS if (p := case.prior(t)) is not None)
        + "}  # gradient buffers' contents before the call (grad_req 'add')",
        f"params = dict(eps={case.eps!r}, momentum={case.momentum!r}, fix_gamma={case.fix_gamma}, "
        f"use_global_stats={case.use_global_stats}, axis={case.axis})",
        f"is_train, output_mean_var = {case.is_train}, {case.output_mean_var}",
    ]
    head.append(f"gradient_of, null_buffer_of = {GRADIENT_OF!r}, {NULL_BUFFER_OF!r}")
    head.append(inspect.getsource(sentinel).rstrip())  # standalone: numpy as np only
    head.append(
        f"null = {{t: sentinel(x.shape, {case.channel_axis}, x.dtype) if t == 'data' else sentinel((C,), 0, pdt) "
        "for t, r in req.items() if r == 'null'}  # 'null' requests' buffers before the call: it must leave them"
    )
    tail = "for q, value in actual.items():\n    print(q, value)"
    return "\n".join(head) + "\n" + body.strip("\n") + "\n" + tail


_SNIPPET_SYM = """
sym = mx.sym.BatchNorm(mx.sym.Variable('data'), name='bn', output_mean_var=output_mean_var, **params)
names = {'data': 'data', 'gamma': 'bn_gamma', 'beta': 'bn_beta'}
values = {'data': x, 'gamma': gamma, 'beta': beta}
# Every target has a gradient buffer, a 'null' one too (bind, not simple_bind, which allocates none for it).
buffers = {t: null.get(t, prior.get(t, np.zeros_like(v))) for t, v in values.items()}
exe = sym.bind(mx.cpu(), args={names[t]: mx.nd.array(v, dtype=v.dtype) for t, v in values.items()},
               args_grad={names[t]: mx.nd.array(v, dtype=v.dtype) for t, v in buffers.items()},
               grad_req={names[t]: r for t, r in req.items()},
               aux_states={'bn_moving_mean': mx.nd.array(moving_mean, dtype=pdt),
                           'bn_moving_var': mx.nd.array(moving_var, dtype=pdt)})
outs = exe.forward(is_train=is_train)
actual = {'forward_moving_mean': exe.aux_dict['bn_moving_mean'].asnumpy(),
          'forward_moving_var': exe.aux_dict['bn_moving_var'].asnumpy()}
heads = [mx.nd.array(dy, dtype=dy.dtype)] + [mx.nd.zeros(C, dtype=pdt)] * (2 if output_mean_var else 0)
exe.backward(heads)
actual['y'] = outs[0].asnumpy()
if output_mean_var:
    actual['mean'], actual['invstd'] = outs[1].asnumpy(), outs[2].asnumpy()
for t in req:
    actual[null_buffer_of[t] if t in null else gradient_of[t]] = exe.grad_dict[names[t]].asnumpy()
actual['gamma'] = exe.arg_dict['bn_gamma'].asnumpy()
actual['moving_mean'] = exe.aux_dict['bn_moving_mean'].asnumpy()
actual['moving_var'] = exe.aux_dict['bn_moving_var'].asnumpy()
"""

_SNIPPET_AUTOGRAD = """
{setup}mod, op = {modules}
arrays = {{'data': mod.array(x, dtype=x.dtype), 'gamma': mod.array(gamma, dtype=pdt),
          'beta': mod.array(beta, dtype=pdt)}}
mm, mv = mod.array(moving_mean, dtype=pdt), mod.array(moving_var, dtype=pdt)
buffers = {{}}
for t, r in req.items():
    arrays[t].attach_grad(grad_req=r)  # a 'null' request too: its buffer must stay as filled
    buffers[t] = arrays[t].grad  # kept: autograd forgets a 'null' variable's buffer in backward
for t, value in {{**prior, **null}}.items():
    buffers[t][:] = value
with mx.autograd.record(train_mode=is_train):
    outs = op(arrays['data'], arrays['gamma'], arrays['beta'], mm, mv, output_mean_var=output_mean_var, **params)
y = outs[0] if output_mean_var else outs
actual = {{'forward_moving_mean': mm.asnumpy(), 'forward_moving_var': mv.asnumpy()}}
mx.autograd.backward([y], [mod.array(dy, dtype=dy.dtype)], train_mode=is_train)
actual['y'] = y.asnumpy()
if output_mean_var:
    actual['mean'], actual['invstd'] = outs[1].asnumpy(), outs[2].asnumpy()
for t in req:
    actual[null_buffer_of[t] if t in null else gradient_of[t]] = buffers[t].asnumpy()
actual['gamma'] = arrays['gamma'].asnumpy()
actual['moving_mean'], actual['moving_var'] = mm.asnumpy(), mv.asnumpy()
"""

_SNIPPET_GLUON = """
from mxnet.gluon import nn
# gluon's own mapping: fix_gamma = not scale (gamma then takes no gradient), center = beta learns.
layer = nn.BatchNorm(axis=params['axis'], momentum=params['momentum'], epsilon=params['eps'],
                     center=req['beta'] != 'null', scale=not params['fix_gamma'],
                     use_global_stats=params['use_global_stats'], in_channels=C)
layer.initialize(ctx=mx.cpu())
layer.cast(x.dtype.name)  # float16 keeps its parameters in float32
for p, value in [(layer.gamma, gamma), (layer.beta, beta), (layer.running_mean, moving_mean),
                 (layer.running_var, moving_var)]:
    p.set_data(mx.nd.array(value, dtype=pdt))
if not params['fix_gamma']:
    layer.gamma.grad_req = req['gamma']
if req['beta'] != 'null':
    layer.beta.grad_req = req['beta']
for t, value in prior.items():
    if t != 'data':
        getattr(layer, t).grad()[:] = value
{hybridize}data = mx.nd.array(x, dtype=x.dtype)
# A 'null' request for data gets a buffer that must stay as filled; gluon gives a 'null' Parameter none at all.
data.attach_grad(grad_req=req['data'])
data_grad = data.grad  # kept: autograd forgets a 'null' variable's buffer in backward
for t, value in {{**prior, **null}}.items():
    if t == 'data':
        data_grad[:] = value
if not is_train:
    y = layer(data)  # inference, as gluon runs it outside autograd.record()
with mx.autograd.record(train_mode=is_train):
    out = layer(data)
y = out if is_train else y
actual = {{'forward_moving_mean': layer.running_mean.data().asnumpy(),
          'forward_moving_var': layer.running_var.data().asnumpy()}}
out.backward(mx.nd.array(dy, dtype=dy.dtype), train_mode=is_train)
actual['y'] = y.asnumpy()
actual[null_buffer_of['data'] if 'data' in null else 'dx'] = data_grad.asnumpy()
for t, p in (('gamma', layer.gamma), ('beta', layer.beta)):
    if p.grad_req != 'null':
        actual[gradient_of[t]] = p.grad().asnumpy()
actual['gamma'] = layer.gamma.data().asnumpy()
actual['moving_mean'] = layer.running_mean.data().asnumpy()
actual['moving_var'] = layer.running_var.data().asnumpy()
"""

#: BatchNorm_v1 (sym-v1): no axis parameter, and its third output is the variance, reported as invstd.
_SNIPPET_SYM_V1 = _SNIPPET_SYM.replace(
    "mx.sym.BatchNorm(mx.sym.Variable('data'), name='bn', output_mean_var=output_mean_var, **params)",
    "mx.sym.BatchNorm_v1(mx.sym.Variable('data'), name='bn', output_mean_var=output_mean_var,\n"
    "                          **{k: v for k, v in params.items() if k != 'axis'})  # BatchNorm_v1: channels on axis 1",
).replace(
    "actual['mean'], actual['invstd'] = outs[1].asnumpy(), outs[2].asnumpy()",
    "# BatchNorm_v1's third output is the variance: as invstd, 1 / sqrt(var + eps)\n"
    "    actual['mean'] = outs[1].asnumpy()\n"
    "    actual['invstd'] = 1 / np.sqrt(outs[2].asnumpy().astype(np.float64) + float(np.float32(params['eps'])))",
)

_SNIPPET_BODIES = {
    "sym": _SNIPPET_SYM,
    "sym-v1": _SNIPPET_SYM_V1,
    "nd": _SNIPPET_AUTOGRAD.format(modules="mx.nd, mx.nd.BatchNorm", setup=""),
    # the numpy interface, as its users turn it on (bnprops's runner scopes it to the call)
    "npx": _SNIPPET_AUTOGRAD.format(modules="mx.np, mx.npx.batch_norm", setup="mx.npx.set_np()\n"),
    "gluon": _SNIPPET_GLUON.format(hybridize=""),
    "gluon-hybrid": _SNIPPET_GLUON.format(hybridize="layer.hybridize()\n"),
}

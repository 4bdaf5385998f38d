"""The standalone scripts that run one case through a oneDNN rewrite of BatchNorm (fold, int8): reproducers' core.

Each needs only mxnet and numpy, makes exactly the member's call and leaves MXNet's results in ``actual``
(quantity -> numpy array), as bnprops.mx.snippets does for BatchNorm's own entry points.
"""

from __future__ import annotations

import numpy as np

from bnprops.model.case import GRAD_TARGETS, Case


def _array(a: np.ndarray) -> str:
    # float64 repr of every element is exact, and casting back restores the original bits.
    return f"np.array({a.astype(np.float64).tolist()!r}).astype({str(a.dtype)!r})"


def _head(case: Case) -> list[str]:
    return [
        "import mxnet as mx, numpy as np",
        f"x, dy = {_array(case.x)}, {_array(case.dy)}",
        f"gamma, beta = {_array(case.gamma)}, {_array(case.beta)}",
        f"moving_mean, moving_var = {_array(case.moving_mean)}, {_array(case.moving_var)}",
        f"eps, momentum, fix_gamma, axis = {case.eps!r}, {case.momentum!r}, {case.fix_gamma}, {case.axis}",
        f"use_global_stats, is_train = {case.use_global_stats}, {case.is_train}",
        f"req = {dict(zip(GRAD_TARGETS, case.grad_req, strict=True))!r}",
        "C = x.shape[1]  # a 1x1 convolution with identity weights: BatchNorm's input is x",
        "weight = np.eye(C, dtype=np.float32).reshape((C, C) + (1,) * (x.ndim - 2))",
        "kernel = (1,) * (x.ndim - 2)",
    ]


_FOLD_SYM = """
conv = mx.sym.Convolution(mx.sym.var('data'), num_filter=C, kernel=kernel, no_bias=True, name='conv')
sym = mx.sym.BatchNorm(conv, name='bn', eps=eps, momentum=momentum, fix_gamma=fix_gamma, axis=axis,
                       use_global_stats=use_global_stats)
if RELU:  # folded as the convolution's ReLU post-op
    sym = mx.sym.Activation(sym, act_type='relu', name='relu')
args = {'data': mx.nd.array(x), 'conv_weight': mx.nd.array(weight), 'bn_gamma': mx.nd.array(gamma),
        'bn_beta': mx.nd.array(beta)}
aux = {'bn_moving_mean': mx.nd.array(moving_mean), 'bn_moving_var': mx.nd.array(moving_var)}
names = {'data': 'data', 'gamma': 'bn_gamma', 'beta': 'bn_beta'}
if FOLD:
    sym = sym.optimize_for('MKLDNN', args, aux)  # Convolution + BatchNorm become one _sg_mkldnn_conv
    grads = {names[t]: mx.nd.zeros_like(args[names[t]]) for t, r in req.items() if r != 'null'}
    grad_req = {names[t]: r for t, r in req.items()}
else:
    grads, grad_req = {}, 'null'  # a bind without gradients folds by itself (the default backend is MKLDNN)
exe = sym.bind(mx.cpu(), args, args_grad=grads or None, grad_req=grad_req, aux_states=aux)
actual = {'y': exe.forward(is_train=is_train)[0].asnumpy()}
if grads:
    exe.backward(mx.nd.array(dy))
    actual.update({'d' + t.replace('data', 'x'): grads[n].asnumpy() for t, n in names.items() if n in grads})
actual['gamma'] = args['bn_gamma'].asnumpy()
actual['moving_mean'], actual['moving_var'] = aux['bn_moving_mean'].asnumpy(), aux['bn_moving_var'].asnumpy()
"""

_FOLD_GLUON = """
from mxnet.gluon import nn
net = nn.HybridSequential()
net.add((nn.Conv2D if x.ndim == 4 else nn.Conv3D)(C, kernel, use_bias=False, in_channels=C),
        nn.BatchNorm(axis=axis, momentum=momentum, epsilon=eps, center=req['beta'] != 'null', scale=not fix_gamma,
                     use_global_stats=use_global_stats, in_channels=gamma.size))
net.initialize()
net[0].weight.set_data(mx.nd.array(weight))
net[0].weight.grad_req = 'null'
bn = net[1]
for p, v in ((bn.gamma, gamma), (bn.beta, beta), (bn.running_mean, moving_mean), (bn.running_var, moving_var)):
    p.set_data(mx.nd.array(v))
net.hybridize(backend='MKLDNN')  # Convolution + BatchNorm become one _sg_mkldnn_conv
data = mx.nd.array(x)
data.attach_grad(grad_req=req['data'])
inferred = None if is_train else net(data)
with mx.autograd.record(train_mode=is_train):
    y = net(data)
actual = {'y': (y if is_train else inferred).asnumpy()}
y.backward(mx.nd.array(dy), train_mode=is_train)
actual['dx'] = data.grad.asnumpy()
for name, p in (('dgamma', bn.gamma), ('dbeta', bn.beta)):
    if p.grad_req != 'null':
        actual[name] = p.grad().asnumpy()
actual['gamma'] = bn.gamma.data().asnumpy()
actual['moving_mean'], actual['moving_var'] = bn.running_mean.data().asnumpy(), bn.running_var.data().asnumpy()
"""

_INT8_GLUON = """
from mxnet.contrib.quantization import quantize_net
net = mx.gluon.nn.HybridSequential()
net.add(mx.gluon.nn.BatchNorm(axis=1, momentum=momentum, epsilon=eps, scale=not fix_gamma,
                              use_global_stats=use_global_stats, in_channels=gamma.size))
net.initialize()
bn = net[0]
for p, v in ((bn.gamma, gamma), (bn.beta, beta), (bn.running_mean, moving_mean), (bn.running_var, moving_var)):
    p.set_data(mx.nd.array(v))
net.hybridize()
n = x.shape[0]
calib = mx.gluon.data.DataLoader(mx.gluon.data.ArrayDataset(mx.nd.array(x), mx.nd.zeros(n)), batch_size=n)
qnet = quantize_net(net, quantize_mode='full', calib_data=calib, calib_mode='naive', ctx=mx.cpu(),
                    exclude_layers_match=[], num_calib_examples=n)  # BatchNorm -> _contrib_quantized_batch_norm
actual = {'y': qnet(mx.nd.array(x)).asnumpy()}
"""

_INT8_SYM = """
import logging
from mxnet.contrib.quantization import quantize_model_mkldnn
sym = mx.sym.BatchNorm(mx.sym.var('data'), name='bn', eps=eps, momentum=momentum, fix_gamma=fix_gamma,
                       use_global_stats=use_global_stats, axis=1)
args = {'bn_gamma': mx.nd.array(gamma), 'bn_beta': mx.nd.array(beta)}
aux = {'bn_moving_mean': mx.nd.array(moving_mean), 'bn_moving_var': mx.nd.array(moving_var)}
n = x.shape[0]
qsym, qargs, qaux = quantize_model_mkldnn(sym, args, aux, ctx=mx.cpu(), calib_mode='naive',
                                          calib_data=mx.io.NDArrayIter(data=x, batch_size=n), num_calib_examples=n,
                                          quantized_dtype='auto', quantize_mode='full', logger=logging.getLogger())
exe = qsym.bind(mx.cpu(), {'data': mx.nd.array(x), **qargs}, aux_states=qaux, grad_req='null')
actual = {'y': exe.forward(is_train=False)[0].asnumpy()}
"""

_BODIES = {
    "fold-sym": "FOLD, RELU = True, False" + _FOLD_SYM,
    "fold-bind": "FOLD, RELU = False, False" + _FOLD_SYM,
    "fold-relu-sym": "FOLD, RELU = True, True" + _FOLD_SYM,
    "fold-gluon": _FOLD_GLUON,
    "int8-gluon": _INT8_GLUON,
    "int8-sym": _INT8_SYM,
}


def snippet(case: Case, entry: str) -> str:
    """A standalone script that runs ``case`` through the rewrite ``entry`` and prints what MXNet returns."""
    body = _BODIES.get(entry)
    if body is None:
        raise ValueError(f"no rewrite reproducer for entry {entry!r}; choose from {sorted(_BODIES)}")
    tail = "for q, value in actual.items():\n    print(q, value)"
    return "\n".join(_head(case)) + "\n" + body.strip("\n") + "\n" + tail

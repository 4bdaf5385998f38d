"""Probe: the oneDNN subgraph backend folds BatchNorm into the Convolution before it.

Run: python onednn_fold.py   (mxnet 1.9.1 with oneDNN, numpy). Prints which graphs keep BatchNorm and how
far the folded output lies from a float64 Convolution+BatchNorm (inference: moving statistics).
"""

import os

os.environ.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
import mxnet as mx
import numpy as np

rng = np.random.RandomState(0)
C, K, eps = 3, 2, 1e-3
x = rng.randn(2, C, 4, 4)
w = rng.randn(K, C, 3, 3)
b = rng.randn(K)
gamma, beta = np.array([2.0, -0.5]), np.array([0.3, 0.1])
mmean, mvar = np.array([0.7, -1.2]), np.array([1e-4, 3.0])  # a small variance makes alpha large


def net(fix_gamma, tail=None):
    d = mx.sym.var("data")
    c = mx.sym.Convolution(d, num_filter=K, kernel=(3, 3), pad=(1, 1), name="conv")
    y = mx.sym.BatchNorm(c, fix_gamma=fix_gamma, eps=eps, name="bn")
    if tail == "relu":
        y = mx.sym.Activation(y, act_type="relu")
    return y


def feed(dtype="float32"):
    args = {"data": x, "conv_weight": w, "conv_bias": b, "bn_gamma": gamma, "bn_beta": beta}
    aux = {"bn_moving_mean": mmean, "bn_moving_var": mvar}
    return (
        {k: mx.nd.array(v, dtype=dtype) for k, v in args.items()},
        {k: mx.nd.array(v, dtype=dtype) for k, v in aux.items()},
    )


def oracle(fix_gamma):
    x32, w32, b32 = (v.astype(np.float32).astype(np.float64) for v in (x, w, b))
    xp = np.pad(x32, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((2, K, 4, 4))
    for i in range(4):
        for j in range(4):
            conv[:, :, i, j] = np.einsum("nchw,kchw->nk", xp[:, :, i : i + 3, j : j + 3], w32)
    conv += b32.reshape(1, -1, 1, 1)
    g = np.ones(K) if fix_gamma else gamma
    sh = (1, -1, 1, 1)
    return g.reshape(sh) * (conv - mmean.reshape(sh)) / np.sqrt(mvar.reshape(sh) + eps) + beta.reshape(sh)


def ops(sym):
    return sorted({n["op"] for n in __import__("json").loads(sym.tojson())["nodes"] if n["op"] != "null"})


for fix_gamma in (False, True):
    s = net(fix_gamma)
    args, aux = feed()
    opt = s.optimize_for("MKLDNN", args, aux)
    print(
        "fix_gamma=%s  optimize_for('MKLDNN') ops: %s; with_bn=%s"
        % (
            fix_gamma,
            ops(opt),
            [
                n.get("attrs", {}).get("with_bn")
                for n in __import__("json").loads(opt.tojson())["nodes"]
                if n["op"] == "_sg_mkldnn_conv"
            ],
        )
    )
    ref = oracle(fix_gamma)
    for name, sym, req in (
        ("unfused, grad_req=write", s, "write"),
        ("folded (optimize_for)", opt, "null"),
        ("default bind, grad_req=null", s, "null"),
    ):
        a, au = feed()
        ex = sym.bind(
            mx.cpu(),
            a,
            args_grad=({k: mx.nd.zeros_like(v) for k, v in a.items()} if req == "write" else None),
            grad_req=req,
            aux_states=au,
        )
        y = ex.forward(is_train=False)[0].asnumpy()
        err = np.abs(y - ref) / np.abs(ref).max()
        print("  %-28s inference: max |y - oracle| / max|oracle| = %.2e" % (name, err.max()))

# Training through the folded symbol: BatchNorm is gone, the batch statistics are not used.
s = net(False)
args, aux = feed()
opt = s.optimize_for("MKLDNN", args, aux)
a, au = feed()
grads = {k: mx.nd.zeros_like(v) for k, v in a.items()}
ex = opt.bind(mx.cpu(), a, args_grad=grads, grad_req="write", aux_states=au)
y = ex.forward(is_train=True)[0]
ex.backward(mx.nd.ones_like(y))
print(
    "folded symbol, forward(is_train=True): max |y - inference oracle| = %.2e (moving stats used); "
    "max |grads| = %s"
    % (np.abs(y.asnumpy() - oracle(False)).max(), {k: float(v.abs().max().asscalar()) for k, v in grads.items()})
)

# gluon: hybridize(backend='MKLDNN') under autograd.record keeps BatchNorm's training semantics?
blk = mx.gluon.nn.HybridSequential()
blk.add(mx.gluon.nn.Conv2D(K, 3, padding=1, in_channels=C), mx.gluon.nn.BatchNorm(epsilon=eps, in_channels=K))
blk.initialize()
xin = mx.nd.array(x)
with mx.autograd.record():
    y_plain = blk(xin)
blk.hybridize(backend="MKLDNN")
with mx.autograd.record():
    y_sg = blk(xin)
y_sg.backward()
y_inf = blk(xin)
print(
    "gluon hybridize(backend='MKLDNN'): training output - plain training output: %.2e; "
    "dgamma max %.3g; training output - inference output: %.2e"
    % (
        np.abs(y_sg.asnumpy() - y_plain.asnumpy()).max(),
        blk[1].gamma.grad().abs().max().asscalar(),
        np.abs(y_sg.asnumpy() - y_inf.asnumpy()).max(),
    )
)

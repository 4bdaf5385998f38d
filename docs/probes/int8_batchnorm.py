"""Probe: what int8 quantization (quantize_net, _contrib_quantized_batch_norm) computes for BatchNorm.

Run: python int8_batchnorm.py   (mxnet 1.9.1 with oneDNN, numpy). A BatchNorm after a Pooling layer cannot be
folded into a Convolution, so quantize_net replaces it by the quantized operator; the output is compared
with a float64 BatchNorm on moving statistics, with gamma as stored and with gamma = 1 (fix_gamma).
"""

import json
import os

os.environ.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
import mxnet as mx
import numpy as np
from mxnet.contrib.quantization import quantize_net

rng = np.random.RandomState(0)
C, eps = 2, 1e-5
x = np.abs(rng.randn(4, C, 4, 4)) + 0.1
gamma, beta, mmean, mvar = [2.0, 0.5], [0.1, -0.3], [0.8, 0.6], [0.5, 2.0]

for scale in (True, False):  # gluon scale=False is fix_gamma=True
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.AvgPool2D(pool_size=1), mx.gluon.nn.BatchNorm(epsilon=eps, scale=scale, in_channels=C))
    net.initialize()
    bn = net[1]
    for p, v in ((bn.gamma, gamma), (bn.beta, beta), (bn.running_mean, mmean), (bn.running_var, mvar)):
        p.set_data(mx.nd.array(v))
    net.hybridize()
    ref_fp32 = net(mx.nd.array(x)).asnumpy()
    calib = mx.gluon.data.DataLoader(mx.gluon.data.ArrayDataset(mx.nd.array(x), mx.nd.zeros(4)), batch_size=4)
    qnet = quantize_net(
        net,
        quantize_mode="full",
        calib_data=calib,
        calib_mode="naive",
        ctx=mx.cpu(),
        exclude_layers_match=[],
        num_calib_examples=4,
    )
    y = qnet(mx.nd.array(x)).asnumpy()
    sym = qnet(mx.sym.var("data"))
    ops = sorted({n["op"] for n in json.loads(sym.tojson())["nodes"] if n["op"] != "null"})
    sh = (1, -1, 1, 1)
    lim = np.abs(ref_fp32).max()  # calibration saw the fp32 outputs: their range is the int8 output range
    for label, g, clip in (
        ("gamma as stored", np.array(gamma), False),
        ("gamma = 1", np.ones(C), False),
        ("stored, clipped", np.array(gamma), True),
    ):
        ref = g.reshape(sh) * (x - np.array(mmean).reshape(sh)) / np.sqrt(np.array(mvar).reshape(sh) + eps) + np.array(
            beta
        ).reshape(sh)
        ref = np.clip(ref, -lim, lim) if clip else ref
        print(
            "scale=%s (fix_gamma=%s) vs float64 with %-15s: max |err| %.3e, max|y| %.3f (int8 step %.3e)"
            % (scale, not scale, label, np.abs(y - ref).max(), np.abs(ref).max(), np.abs(ref).max() / 127)
        )
    print("  ops: %s; calibrated output range +-%.3f" % (ops, lim))

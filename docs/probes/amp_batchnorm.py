"""Probe: what AMP (mx.contrib.amp) does to BatchNorm and SyncBatchNorm.

Run: python amp_batchnorm.py   (mxnet 1.9.1, numpy). Converts Convolution -> BatchNorm -> SyncBatchNorm to
float16 and bfloat16 and prints the dtype each BatchNorm input gets (no kernel runs; type inference only).
"""

import os

os.environ.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
import mxnet as mx
import numpy as np
from mxnet.contrib import amp
from mxnet.contrib.amp.lists import symbol_bf16, symbol_fp16

for mod, names in (
    (symbol_fp16, ("FP16_FUNCS", "FP16_FP32_FUNCS", "FP32_FUNCS", "WIDEST_TYPE_CASTS")),
    (symbol_bf16, ("BF16_FUNCS", "BF16_FP32_FUNCS", "FP32_FUNCS", "WIDEST_TYPE_CASTS")),
):
    for name in names:
        hits = [f for f in getattr(mod, name) if "BatchNorm" in f]
        print("%s.%s: %s" % (mod.__name__.rsplit(".", 1)[1], name, hits))
print("symbol_bf16.BF16_USE_FP32_PARAMS['BatchNorm']:", symbol_bf16.BF16_USE_FP32_PARAMS.get("BatchNorm"))

d = mx.sym.var("data")
c = mx.sym.Convolution(d, num_filter=4, kernel=(1, 1), name="conv")
b = mx.sym.BatchNorm(c, name="bn")
s = mx.sym.contrib.SyncBatchNorm(b, name="sbn", ndev=1, key="k")


def dname(t):
    t = np.dtype(t)
    return "bfloat16" if t.names else t.name


for target in ("float16", "bfloat16"):
    conv = amp.convert_symbol(s, target_dtype=target, cast_optional_params=True)
    arg_t, out_t, aux_t = conv.infer_type(data="float32", conv_weight="float32", conv_bias="float32")
    types = dict(zip(conv.list_arguments(), arg_t))
    types.update(zip(conv.list_auxiliary_states(), aux_t))
    print(
        "%s: gamma/moving_var dtypes of bn %s; of sbn %s; graph output %s"
        % (
            target,
            [dname(types[k]) for k in ("bn_gamma", "bn_moving_var")],
            [dname(types[k]) for k in ("sbn_gamma", "sbn_moving_var")],
            dname(out_t[0]),
        )
    )
    internals = conv.get_internals()
    for name in ("bn_output", "sbn_output"):
        if name in internals.list_outputs():
            out = internals[name].infer_type(data="float32", conv_weight="float32", conv_bias="float32")[1][0]
            print("   %s dtype: %s" % (name, dname(out)))

"""Probe: what mx.onnx.export_model writes for BatchNorm (needs the onnx package, which bnprops does not install).

Run: PYTHONPATH=<dir with onnx 1.14> python onnx_export.py [out.onnx]   (mxnet 1.9.1, numpy, onnx).
Exports BatchNorm(fix_gamma=True, eps=2e-5, momentum=0.8) with a stored gamma of 2 and prints the node's
attributes and initializers next to MXNet's own output; onnx_run.py evaluates the file with onnxruntime.
"""

import os
import sys

os.environ.setdefault("MXNET_ENGINE_TYPE", "NaiveEngine")
import mxnet as mx
import numpy as np
import onnx
from onnx import numpy_helper

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/bn_fix_gamma.onnx"
x = np.arange(8, dtype=np.float32).reshape(2, 2, 2) / 4
params = {
    "bn_gamma": mx.nd.array([2.0, 3.0]),
    "bn_beta": mx.nd.array([0.5, -0.5]),
    "bn_moving_mean": mx.nd.array([1.0, 0.0]),
    "bn_moving_var": mx.nd.array([4.0, 0.25]),
}
sym = mx.sym.BatchNorm(mx.sym.var("data"), fix_gamma=True, eps=2e-5, momentum=0.8, name="bn")
mx.onnx.export_model(sym, params, in_shapes=[x.shape], in_types=[np.float32], onnx_file_path=path)
model = onnx.load(path)
for node in model.graph.node:
    print(
        "ONNX node %s(%s): %s"
        % (node.op_type, ", ".join(node.input), {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
    )
for init in model.graph.initializer:
    print("  initializer %s = %s" % (init.name, numpy_helper.to_array(init)))
print("  opset:", [(o.domain or "ai.onnx", o.version) for o in model.opset_import])
ex = sym.bind(
    mx.cpu(),
    {"data": mx.nd.array(x), "bn_gamma": params["bn_gamma"], "bn_beta": params["bn_beta"]},
    aux_states={"bn_moving_mean": params["bn_moving_mean"], "bn_moving_var": params["bn_moving_var"]},
)
print("MXNet inference output (gamma := 1):", ex.forward(is_train=False)[0].asnumpy().ravel())
np.save(path + ".x.npy", x)

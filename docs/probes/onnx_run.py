"""Probe: evaluate onnx_export.py's file with onnxruntime (installed outside the project; see the docs page).

Run: PYTHONPATH=<dir with onnxruntime> python onnx_run.py [out.onnx]   (numpy, onnxruntime).
"""

import sys

import numpy as np
import onnxruntime as ort

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/bn_fix_gamma.onnx"
x = np.load(path + ".x.npy")
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
print("onnxruntime %s output:" % ort.__version__, y.ravel())

"""A correct int8 BatchNorm emulated in numpy (and a planted fault), for the int8 member's soundness and meta tests.

Naive calibration on the case's own data; int8 or uint8 input (reordered to int8), the float scale-shift, the
output rounded to int8 steps of the float model's range and dequantized; rounding half to even or away from 0.
"""

from __future__ import annotations

import numpy as np

from bnprops.model.case import Case, Outputs
from bnprops.model.folding import fold_scale, fold_shift
from bnprops.model.oracle import per_channel, reference
from bnprops.model.quantization import INT8_RANGE, data_range, output_range

F32 = np.float32
VARIANTS = ("even", "away")


def _round(v: np.ndarray, variant: str) -> np.ndarray:
    return np.round(v) if variant == "even" else np.sign(v) * np.floor(np.abs(v) + 0.5)


def emulated_int8(case: Case, *, variant: str = "even", fault: str | None = None) -> Outputs:
    tx, to = data_range(case), output_range(reference(case.with_(is_train=False))["y"])
    x = case.x.astype(np.float64)
    if x.min() >= 0:  # uint8, then reordered to int8 with scale 127 / 255
        q = _round(_round(x * (255 / tx), variant) * (INT8_RANGE / 255), variant)
    else:
        q = _round(x * (INT8_RANGE / tx), variant)
    w = (fold_scale(case) * tx / to).astype(F32)
    b = (fold_shift(case) * INT8_RANGE / to).astype(F32)
    dst = (per_channel(case, w).astype(F32) * q.astype(F32) + per_channel(case, b).astype(F32)).astype(F32)
    dst = np.clip(_round(dst.astype(np.float64), variant), -INT8_RANGE, INT8_RANGE)
    y = np.ascontiguousarray(dst * (to / INT8_RANGE), dtype=F32)  # data moved to axis 1 is a strided view
    if fault == "y_off_by_five_percent":  # int8's own resolution is 1/127 of the range: 0.5% is below it
        flat = y.reshape(-1)
        worst = int(np.argmax(np.abs(flat)))
        flat[worst] = F32(flat[worst] * 1.05)
    return {"y": y}

"""int8 inference BatchNorm (quantize_net, _contrib_quantized_batch_norm): the calibrated ranges and error bound.

Calibrated on the case's own data ('naive': the minimum and maximum seen), x is quantized with step
max|x| / 127 (int8; uint8 data, max|x| / 255, is reordered to int8 with a second rounding), BatchNorm runs as
an int8 scale-shift in float, and its output is rounded to int8 steps of T / 127, T = max|y| of the float
model on the same data, clipped to +-T, and dequantized. The derivation is on the oneDNN rewrites page.
"""

from __future__ import annotations

import numpy as np

from bnprops.model.case import Case
from bnprops.model.error_model import SAFETY, unit_roundoff
from bnprops.model.folding import fold_scale, fold_shift
from bnprops.model.oracle import per_channel, reference

INT8_RANGE = 127
#: Float roundings in the scale-shift: invstd, the two weight products, the shift's products and difference,
#: the product and sum on the data, the dequantization.
FLOAT_ROUNDINGS = 8


def data_range(case: Case) -> float:
    """The calibrated input range: max |x| (naive calibration on the case's own data)."""
    return float(np.abs(case.x.astype(np.float64)).max()) if case.x.size else 0.0


def output_range(y: np.ndarray) -> float:
    """The calibrated output range: max |y| of the float model on the calibration data."""
    return float(np.abs(y).max()) if y.size else 0.0


def clipped_reference(case: Case) -> np.ndarray:
    """The oracle of an int8 BatchNorm: inference BatchNorm on the moving statistics, clipped to its range."""
    y = reference(case.with_(is_train=False))["y"]
    limit = output_range(y)
    return np.asarray(np.clip(y, -limit, limit))


def int8_bound(case: Case, *, limit: float) -> np.ndarray:
    """How far a correct int8 BatchNorm's dequantized y may land from the clipped oracle, per element.

    The input's quantization error (at most one int8 step of x, for int8 and for uint8 reordered to int8)
    scaled by alpha, half an output step (``limit`` / 127), and the float roundings of the scale-shift.
    """
    u = unit_roundoff("float32")
    alpha = np.abs(fold_scale(case))
    a = per_channel(case, alpha)
    shift_terms = alpha * np.abs(case.moving_mean) + np.abs(case.beta) + np.abs(fold_shift(case))
    floats = a * np.abs(case.x.astype(np.float64)) + per_channel(case, shift_terms)
    out_step = limit / INT8_RANGE * (1 + FLOAT_ROUNDINGS * u)
    return np.asarray(SAFETY * (a * data_range(case) / INT8_RANGE + out_step / 2 + FLOAT_ROUNDINGS * u * floats))

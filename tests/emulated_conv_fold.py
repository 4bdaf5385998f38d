"""A correct float32 emulation of the fold with a drawn convolution (and a planted fault), for its tests.

UpdateConvWeightBias's roundings, then a float32 convolution accumulated term by term in one of two orders
(kernel offsets outside or inside the input channels), the bias added first or last.
"""

from __future__ import annotations

import numpy as np

from bnprops.model.case import Case, Outputs
from bnprops.model.oracle import eps_as_applied

F32 = np.float32
VARIANTS = ("offsets-outer", "channels-outer", "bias-first")


def emulated_conv_fold(
    case: Case, weight: np.ndarray, *, variant: str = "offsets-outer", fault: str | None = None
) -> Outputs:
    gamma = np.ones(case.channels, F32) if case.fix_gamma else case.gamma
    alpha = (gamma.astype(np.float64) / np.sqrt(case.moving_var.astype(np.float64) + eps_as_applied(case))).astype(F32)
    folded = (weight * alpha.reshape(-1, 1, 1, 1)).astype(F32)
    shift = (case.beta - (alpha * case.moving_mean).astype(F32)).astype(F32)
    k = weight.shape[-1]
    p = k // 2
    x = np.pad(case.x, ((0, 0), (0, 0), (p, p), (p, p)))
    n, c, h, w = case.x.shape
    acc = np.zeros((n, weight.shape[0], h, w), F32)
    if variant == "bias-first":
        acc += shift.reshape(1, -1, 1, 1)
    steps = [(ci, i, j) for i in range(k) for j in range(k) for ci in range(c)]
    if variant == "channels-outer":
        steps.sort()
    for ci, i, j in steps:
        term = (x[:, ci : ci + 1, i : i + h, j : j + w] * folded[:, ci, i, j].reshape(1, -1, 1, 1)).astype(F32)
        acc = (acc + term).astype(F32)
    if variant != "bias-first":
        acc = (acc + shift.reshape(1, -1, 1, 1)).astype(F32)
    acc = np.ascontiguousarray(acc)
    if fault == "y_off_by_half_percent":
        flat = acc.reshape(-1)
        worst = int(np.argmax(np.abs(flat)))
        flat[worst] = F32(flat[worst] * 1.005)
    return {"y": acc}

"""Correct float32 emulations of the oneDNN fold (and a planted fault), for the fold's soundness and meta tests.

Each does what UpdateConvWeightBias and a float32 convolution may do: alpha in double or in float, the
product and the bias added with one rounding each or fused (FMA), the bias added first or last.
"""

from __future__ import annotations

import numpy as np

from bnprops.model.case import Case, Outputs
from bnprops.model.oracle import eps_as_applied, per_channel, reference

F32 = np.float32
VARIANTS = ("double-alpha", "float-alpha", "fma", "bias-first")


def emulated_fold(case: Case, *, variant: str = "double-alpha", fault: str | None = None) -> Outputs:
    """The folded graph's y for ``case`` (identity 1x1 convolution), and the oracle's other quantities."""
    mv = case.moving_var.astype(np.float64)
    gamma = np.ones(case.channels, F32) if case.fix_gamma else case.gamma
    if variant == "float-alpha":  # sqrt and division in float (a correct fold may round twice more)
        alpha = (gamma / np.sqrt(F32(mv + eps_as_applied(case)).astype(F32))).astype(F32)
    else:
        alpha = (gamma.astype(np.float64) / np.sqrt(mv + eps_as_applied(case))).astype(F32)
    shift = (case.beta - (alpha * case.moving_mean).astype(F32)).astype(F32)
    a, b, x = per_channel(case, alpha).astype(F32), per_channel(case, shift).astype(F32), case.x
    if variant == "fma":
        y = (a.astype(np.float64) * x.astype(np.float64) + b.astype(np.float64)).astype(F32)
    elif variant == "bias-first":  # the accumulator starts from the bias: 0 + b, then + a x
        y = (b + (a * x).astype(F32)).astype(F32)
    else:
        y = ((a * x).astype(F32) + b).astype(F32)
    out = {q: v for q, v in reference(case).items() if q != "y"}
    out["y"] = np.ascontiguousarray(y, dtype=F32)  # data moved to axis 1 is a strided view
    if fault == "y_off_by_half_percent":
        flat = out["y"].reshape(-1)  # (a view: out["y"] is made contiguous above)
        worst = int(np.argmax(np.abs(flat)))
        flat[worst] = F32(flat[worst] * 1.005)
    return out

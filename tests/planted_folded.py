"""Correct float32 emulations of inference BatchNorm's folded form, and one with a planted fault, for the ONNX member.

Each emulation is a kernel a runtime may legitimately use: onnxruntime's order (s, m s, beta - m s, x s + b), the
same with fused multiply-adds, the unfolded (x - m) inv gamma + beta, and a correctly rounded 1/sqrt.
"""

from __future__ import annotations

import numpy as np

from bnprops.model.case import Case, Outputs
from bnprops.model.folded_inference import exported_eps, scale_gamma
from bnprops.model.oracle import per_channel

KERNELS = ("onnxruntime", "fma", "unfolded", "rsqrt")
FAULTS = ("y_off_by_half_percent",)
F32 = np.float32


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a b + c rounded once to float32 (the float32 product is exact in float64; the sum rounds twice at most
    by half an ulp of float64, far below float32's)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(F32)


def folded_subject(case: Case, *, kernel: str = "onnxruntime", fault: str | None = None) -> Outputs:
    """y of the exported graph as a correct float32 kernel computes it (gamma as MXNet's semantics say)."""
    if kernel not in KERNELS or (fault is not None and fault not in FAULTS):
        raise ValueError(f"unknown kernel {kernel!r} or fault {fault!r}")
    with np.errstate(all="ignore"):
        x = case.x.astype(F32)
        g = scale_gamma(case).astype(F32)
        beta, m = case.beta.astype(F32), case.moving_mean.astype(F32)
        v = case.moving_var.astype(F32) + F32(exported_eps(case))
        inv = (1.0 / np.sqrt(v.astype(np.float64))).astype(F32) if kernel == "rsqrt" else F32(1) / np.sqrt(v)
        s = inv * g
        if kernel == "unfolded":
            y = (x - per_channel(case, m).astype(F32)) * per_channel(case, inv).astype(F32)
            y = y * per_channel(case, g).astype(F32) + per_channel(case, beta).astype(F32)
        elif kernel == "fma":
            b = _fma(-m, s, beta)
            y = _fma(x, per_channel(case, s).astype(F32), per_channel(case, b).astype(F32))
        else:
            b = beta - m * s
            y = x * per_channel(case, s).astype(F32) + per_channel(case, b).astype(F32)
    if fault == "y_off_by_half_percent":
        y = (y * F32(1.005)).astype(F32)
    return {"y": np.asarray(y, dtype=F32)}

"""BatchNorm subjects that each break one exact relation, for the relation meta tests.

Every subject is tests/planted.py's numpy BatchNorm (correct: float32/float64 arithmetic rounded to
MXNet's output dtypes, which keeps every relation) with one fault planted on top.
"""

from __future__ import annotations

import itertools

import numpy as np

from bnprops.case import Case, Outputs
from tests.planted import numpy_batchnorm

#: Each fault: the relation it breaks, and what it gets wrong.
FAULTS = {
    "eps_offset": ("scale-data", "reads eps + 2^-12: an offset that does not scale with the data"),
    "dx_offset": ("scale-head", "adds 2^-10 to every dx: a gradient that is not linear in dy"),
    "y_offset": ("scale-affine", "adds 2^-10 to every y: an output that is not linear in gamma and beta"),
    "channel_bias": ("permute-channels", "adds 2^-10 times the channel's index to y and dbeta"),
    "noisy_dx": ("repeat", "adds a few ulps of fresh random noise to dx on every call"),
}

_noise = itertools.count()


def _per_channel_shape(case: Case) -> list[int]:
    shape = [1] * case.x.ndim
    shape[case.channel_axis] = case.channels
    return shape


def _cast_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return value.astype(like.dtype)


def faulty_batchnorm(case: Case, *, fault: str) -> Outputs:
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {sorted(FAULTS)}")
    if fault == "eps_offset":
        return numpy_batchnorm(case.with_(eps=case.eps + 2.0**-12))
    out = numpy_batchnorm(case)
    if fault == "dx_offset" and "dx" in out:
        out["dx"] = _cast_like(out["dx"].astype(np.float64) + 2.0**-10, out["dx"])
    elif fault == "y_offset":
        out["y"] = _cast_like(out["y"].astype(np.float64) + 2.0**-10, out["y"])
    elif fault == "channel_bias":
        index = np.arange(case.channels, dtype=np.float64) * 2.0**-10
        out["y"] = _cast_like(out["y"].astype(np.float64) + index.reshape(_per_channel_shape(case)), out["y"])
        if "dbeta" in out:
            out["dbeta"] = _cast_like(out["dbeta"].astype(np.float64) + index, out["dbeta"])
    elif fault == "noisy_dx" and "dx" in out:
        rng = np.random.default_rng(next(_noise))
        ulps = rng.integers(-3, 4, out["dx"].shape)
        dx = out["dx"]
        with np.errstate(over="ignore", invalid="ignore"):
            out["dx"] = _cast_like(dx.astype(np.float64) + ulps * np.spacing(np.abs(dx)).astype(np.float64), dx)
    return out

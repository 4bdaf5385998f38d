"""BatchNorm subjects that each break one exact relation, for the relation meta tests.

Every subject is tests/planted.py's numpy BatchNorm (correct: float32/float64 arithmetic rounded to
MXNet's output dtypes, which keeps every relation) with one fault planted on top; ``plant`` puts a
fault on top of any subject, an MXNet runner too (tests/test_fuzz_relations.py, for the fuzz job).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from bnprops.model.case import Case, Outputs
from tests.planted import numpy_batchnorm

#: Each fault: the relation it breaks, and what it gets wrong.
FAULTS = {
    "eps_offset": ("scale-data", "reads eps + 2^-12: an offset that does not scale with the data"),
    "dx_offset": ("scale-head", "adds 2^-10 to every dx: a gradient that is not linear in dy"),
    "y_offset": ("scale-affine", "adds 2^-10 to every y: an output that is not linear in gamma and beta"),
    "channel_bias": ("permute-channels", "adds 2^-10 times the channel's index to y and dbeta"),
    "noisy_dx": ("repeat", "adds a few ulps of fresh random noise to dx on every call"),
    # No drawn case has an input that large (bnprops/search/strategies.py: below 2^24), so the oracle never sees this
    # fault: only a call scaled by a large 2^k does (it breaks scale-data and scale-head too).
    "large_input_path": ("scale-affine", "drops y's last bit toward 0 where some |x|, |dy|, |gamma| or |beta| >= 2^28"),
}

_noise = itertools.count()


def _per_channel_shape(case: Case) -> list[int]:
    shape = [1] * case.x.ndim
    shape[case.channel_axis] = case.channels
    return shape


def _cast_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return value.astype(like.dtype)


def _largest(arr: np.ndarray) -> float:
    finite = np.abs(arr[np.isfinite(arr)].astype(np.float64))
    return float(finite.max(initial=0))


def faulty_batchnorm(case: Case, *, fault: str) -> Outputs:
    return plant(numpy_batchnorm, case, fault=fault)


def plant(subject: Callable[[Case], Outputs], case: Case, *, fault: str) -> Outputs:
    """``subject``'s results for ``case``, with ``fault`` planted on top."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {sorted(FAULTS)}")
    if fault == "eps_offset":
        return subject(case.with_(eps=case.eps + 2.0**-12))
    out = subject(case)
    if fault == "dx_offset" and "dx" in out:
        out["dx"] = _cast_like(out["dx"].astype(np.float64) + 2.0**-10, out["dx"])
    elif fault == "y_offset":
        out["y"] = _cast_like(out["y"].astype(np.float64) + 2.0**-10, out["y"])
    elif fault == "channel_bias":
        index = np.arange(case.channels, dtype=np.float64) * 2.0**-10
        out["y"] = _cast_like(out["y"].astype(np.float64) + index.reshape(_per_channel_shape(case)), out["y"])
        if "dbeta" in out:
            out["dbeta"] = _cast_like(out["dbeta"].astype(np.float64) + index, out["dbeta"])
    elif fault == "large_input_path" and max(_largest(a) for a in (case.x, case.dy, case.gamma, case.beta)) >= 2**28:
        out["y"] = np.nextafter(out["y"], np.zeros_like(out["y"]))
    elif fault == "noisy_dx" and "dx" in out:
        rng = np.random.default_rng(next(_noise))
        ulps = rng.integers(-3, 4, out["dx"].shape)
        dx = out["dx"]
        with np.errstate(over="ignore", invalid="ignore"):
            out["dx"] = _cast_like(dx.astype(np.float64) + ulps * np.spacing(np.abs(dx)).astype(np.float64), dx)
    return out

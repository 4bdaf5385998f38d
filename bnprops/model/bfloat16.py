"""bfloat16 as AMP runs BatchNorm in it: float32 data rounded to bfloat16, and the bounds of float32 results so rounded.

oneDNN's bfloat16 BatchNorm reads bfloat16 data, computes in float32 and writes y and dx in bfloat16 (gamma,
beta, the moving statistics and their gradients stay float32). A case whose x and dy are exactly bfloat16
is a float32 case; its y and dx are the float32 results rounded once more, to 8 significant bits: the float32
bound plus 2^-8 of the value's magnitude (and half bfloat16's smallest subnormal). No other term changes.
"""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import Case, Outputs
from bnprops.model.evaluation import Evaluation

#: bfloat16's unit roundoff: 8 significant bits.
UNIT_ROUNDOFF = 2.0**-8
#: Half the smallest bfloat16 subnormal (float32's exponent range, 7 stored bits).
SUBNORMAL_STEP = 2.0**-134
#: The quantities AMP's bfloat16 BatchNorm writes in bfloat16.
ROUNDED = ("y", "dx")


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32; NaN stays NaN, inf inf."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    out = rounded.view(np.float32)
    return np.asarray(np.where(np.isnan(values), np.float32(np.nan), out), dtype=np.float32)


def is_bfloat16(values: np.ndarray) -> bool:
    """Is every element exactly a bfloat16 (a float32 whose low 16 bits are 0)?"""
    return bool((np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) & 0xFFFF == 0).all())


def rounded_bound(expected: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """The bound of a float32 result within ``bound`` of ``expected``, rounded to bfloat16."""
    with ignoring("over", "invalid"):
        return np.asarray(bound + UNIT_ROUNDOFF * (np.abs(expected) + bound) + SUBNORMAL_STEP)


class Bfloat16OutputEvaluation(Evaluation):
    """The plain evaluation of a float32 case, with y's and dx's bounds widened by their rounding to bfloat16."""

    def __init__(self, case: Case) -> None:
        if case.dtype != "float32":
            raise ValueError(f"AMP's bfloat16 BatchNorm reads float32 parameters with float32 cases, not {case.dtype}")
        super().__init__(case)

    # (Both models' bounds widen alike: the final rounding is deterministic.)
    def bounds_of(self, values: Outputs, *, model: str = "deterministic", training_backward: bool = False) -> Outputs:
        out = dict(super().bounds_of(values, model=model, training_backward=training_backward))
        for q in ROUNDED:
            if q in out:
                out[q] = rounded_bound(values[q], out[q])
        return out

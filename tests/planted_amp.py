"""A numpy subject for AMP's bfloat16 BatchNorm: the float32 subject of ``planted`` with y and dx rounded to bfloat16.

Correct, or with one of the plain subject's planted faults (before the rounding, as a kernel would make it).
"""

from __future__ import annotations

from bnprops.model.bfloat16 import ROUNDED, to_bfloat16
from bnprops.model.case import Case, Outputs
from tests.planted import numpy_batchnorm


def bfloat16_batchnorm(case: Case, *, fault: str | None = None) -> Outputs:
    """oneDNN's bfloat16 BatchNorm as a correct kernel computes it: float32 inside, y and dx written in bfloat16."""
    out = numpy_batchnorm(case, fault=fault)
    return {q: to_bfloat16(v) if q in ROUNDED else v for q, v in out.items()}

"""Where a dtype overflows: shared by the comparator, the fused engine's comparison and the known deviations."""

from __future__ import annotations

import numpy as np


def overflow_threshold(dtype: str) -> float:
    """Where rounding to ``dtype`` gives inf: its largest number plus half an ulp (float64: its largest number)."""
    info = np.finfo(np.dtype(dtype))
    half_ulp_of_max = 2.0 ** (int(info.maxexp) - 2 - int(info.nmant))
    return float(info.max) + half_ulp_of_max if dtype != "float64" else float(info.max)

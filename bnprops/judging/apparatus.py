"""What every comparison of a case needs (the oracle's values, both bounds, the output dtypes, the indeterminate
channels), and where a dtype overflows: shared by the comparator, the fused path and the known deviations."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnprops.model.case import Outputs


class Judging(NamedTuple):
    """What every comparison of a case needs: the oracle, its bounds, the output dtypes, the indeterminate channels."""

    expected: Outputs
    bound: Outputs
    sharp: Outputs
    dtypes: dict[str, str]
    undetermined: np.ndarray


def overflow_threshold(dtype: str) -> float:
    """Where rounding to ``dtype`` gives inf: its largest number plus half an ulp (float64: its largest number)."""
    info = np.finfo(np.dtype(dtype))
    half_ulp_of_max = 2.0 ** (int(info.maxexp) - 2 - int(info.nmant))
    return float(info.max) + half_ulp_of_max if dtype != "float64" else float(info.max)

"""What must hold of BatchNorm's results whatever the error bounds say, checked on every case beside the oracle.

* **A moving variance is never negative**: it is an average, ``m old + (1 - m) var``, of a prior that
  is not negative (where the case's is not) and a variance, with 0 <= m <= 1.  Within the bound of
  zero is not good enough: a negative variance makes the next inference's ``var + eps`` wrong, or NaN.
* **An empty batch leaves the moving statistics exactly as they were.**  There is nothing to average,
  so the contract bnprops holds MXNet to is "no update" (rejecting the call with an error would do
  too, and leaves nothing to check); the oracle's own mean of nothing is NaN, so without this
  invariant a NaN update would pass.

A violation is a mismatch of kind "invariant", judged and catalogued like any other, and a known
deviation may explain it (bnprops/known_deviations.py).
"""

from __future__ import annotations

import numpy as np

from bnprops.case import Case, Outputs
from bnprops.comparator import Mismatch


def violations(case: Case, actual: Outputs) -> list[Mismatch]:
    """Every invariant the results break, one mismatch per quantity."""
    found: list[Mismatch] = []
    if "moving_var" in actual and 0 <= case.momentum <= 1:
        after = np.asarray(actual["moving_var"], dtype=np.float64)
        negative = (after < 0) & (case.moving_var >= 0)
        found += _mismatch("moving_var", negative, after, np.zeros_like(after), "a moving variance below 0")
    if case.reduction_length == 0:
        for q, before in (("moving_mean", case.moving_mean), ("moving_var", case.moving_var)):
            if q in actual:
                after = np.asarray(actual[q], dtype=np.float64)
                prior = before.astype(np.float64)
                changed = ~((after == prior) | (np.isnan(after) & np.isnan(prior)))
                found += _mismatch(q, changed, after, prior, "an empty batch changed the moving statistics")
    return found


def _mismatch(quantity: str, bad: np.ndarray, actual: np.ndarray, wanted: np.ndarray, what: str) -> list[Mismatch]:
    if not bad.any():
        return []
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    with np.errstate(invalid="ignore"):
        error = float(abs(actual[idx] - wanted[idx]))
    return [
        Mismatch(
            quantity,
            "invariant",
            int(bad.sum()),
            bad.size,
            idx,
            float(wanted[idx]),
            float(actual[idx]),
            error,
            0.0,
            what,
        )
    ]

"""The GPU kernels' reduction class: what it adds to the error model's statistics, beside the CPU's two-pass sums.

MXNet's CUDA kernel sums in thread-strided chains, warp butterflies and a block tree, its mean by a rounded
reciprocal of the count, and stores the saved mean in the data type; cuDNN publishes no algorithm, so the class
also holds Welford's streaming updates merged by Chan's formula, in any tree in which an element passes through
at most ``merge_levels(M)`` merges. ``REDUCTIONS`` names the classes: "cpu" (two-pass sums, the bound as it was)
and "gpu" (this one). Every term below adds to the CPU bound, so the GPU bound is never the sharper one; the
derivation is in the documentation's error-model page (its GPU section).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import Case
from bnprops.model.exactness import rows

REDUCTIONS = ("cpu", "gpu")


def check(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction class {reduction!r}; choose from {REDUCTIONS}")
    return reduction


def merge_levels(m: int) -> int:
    """The Chan merges an element may pass through: one per doubling of the count, and one more."""
    return math.ceil(math.log2(max(m, 1))) + 1


@dataclasses.dataclass(frozen=True)
class DataSpread:
    """Per channel, the data's magnitudes that Welford's and Chan's roundings scale with."""

    largest: np.ndarray  # max |x|: every partial mean lies within it
    width: np.ndarray  # max x - min x: every difference of two partial means lies within it
    deviation: np.ndarray  # mean |x - mean|: twice the largest centred partial sum, per element
    prefixes: np.ndarray  # sqrt(sum_j C_j^2) / M, C_j = sum_{i <= j} (x_i - mean) in memory order


def spread(case: Case, mean: np.ndarray) -> DataSpread:
    """The channels' DataSpread (``mean``: the oracle's batch mean); non-finite values are left out."""
    with ignoring("over", "invalid"):
        x = rows(case.x.astype(np.float64), case.channel_axis)
        finite = np.isfinite(x)
        m = max(x.shape[1], 1)
        if x.shape[1] == 0:
            zero = np.zeros(case.channels)
            return DataSpread(zero, zero, zero, zero)
        centre = np.where(np.isfinite(mean), mean, 0.0)[:, None]
        centred = np.where(finite, x - centre, 0.0)
        largest = np.where(finite, np.abs(x), 0.0).max(axis=1)
        width = np.where(finite, x, -np.inf).max(axis=1) - np.where(finite, x, np.inf).min(axis=1)
        width = np.where(np.isfinite(width), width, 0.0)
        prefix = np.cumsum(centred, axis=1)
        return DataSpread(
            largest=largest,
            width=width,
            deviation=np.abs(centred).sum(axis=1) / m,
            prefixes=np.sqrt((prefix * prefix).sum(axis=1)) / m,
        )


@dataclasses.dataclass(frozen=True)
class StatisticsErrors:
    """What the GPU class adds to the mean's and the variance's error bounds, per channel."""

    mean: np.ndarray
    var: np.ndarray


def statistics_errors(
    case: Case,
    model: str,
    *,
    found: DataSpread,
    mean: np.ndarray,
    var: np.ndarray,
    mean_abs: np.ndarray,
    u_data: float,
    ua: float,
    worst: float,
    lam: float,
) -> StatisticsErrors:
    """The GPU class's extra errors (``u_data``, ``ua``: the data's and the accumulation's unit roundoff, already
    scaled as the model scales roundings; ``mean_abs``: error_model.mean_abs's; ``worst``: the deterministic
    factor of M - 1 additions; ``lam``: the probabilistic model's lambda).

    mean: a merge tree's roundings u (|m| + 3 |delta| nb/n) weighted by n/M (Welford's update is a merge with
    nb = 1): ``ua A`` beyond the two-pass sum's Gamma_{M-1} A, ``ua R (2 + 3 L)`` for the deltas (|delta| <= R,
    at most L merges per element), ``ua |mean|`` for the count's rounded reciprocal, and for float16 ``u_data
    |mean|`` (the CUDA kernel stores the saved mean in the data type). variance: a rounding rho of a node's
    partial mean m moves M2 by 2 rho C, C the node's centred sum; |m| |C| <= |mean| |C| + C^2/n, sum over nodes of
    C^2/n <= (M - 1) M var (Cauchy-Schwarz) and of |C| <= (M - 1) M D / 2: deterministic Gamma_{M-1} (2 var +
    |mean| D), and for the deltas' roundings ua (2 R D (1 + ln 4M) + 6 R^2 L); probabilistic 2 lambda ua
    (X + 3R) sqrt(sum C_j^2) / M over the memory order's prefixes (as the CPU bound takes the sequential partial
    sums for every order); ``2 ua var`` for Chan's product and the reciprocal.
    """
    m = case.reduction_length
    levels = merge_levels(m)
    finite_mean = np.abs(np.where(np.isfinite(mean), mean, 0.0))
    finite_var = np.abs(np.where(np.isfinite(var), var, 0.0))
    stored = u_data if case.dtype == "float16" else 0.0
    e_mean = ua * (mean_abs + found.width * (2 + 3 * levels)) + (ua + stored) * finite_mean
    deltas = ua * (2 * found.width * found.deviation * (1 + math.log(4 * max(m, 1))) + 6 * found.width**2 * levels)
    worst_case = worst * (2 * finite_var + finite_mean * found.deviation) + deltas
    if model == "deterministic":
        e_var = worst_case
    else:
        reach = found.largest + 3 * found.width
        e_var = np.minimum(worst_case, 2 * lam * ua * reach * found.prefixes + deltas)
    return StatisticsErrors(np.asarray(e_mean), np.asarray(e_var + 2 * ua * finite_var))

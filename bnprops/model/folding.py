"""The oneDNN fold of inference BatchNorm into the convolution before it: the folded terms and their error bound.

oneDNN's subgraph backend computes alpha = gamma / sqrt(moving_var + eps) in double and stores it as float,
scales the weights W' = float(W alpha) and makes the bias b' = float(beta - alpha moving_mean) in float; the
convolution then forms y = sum W' x + b' in float32. The bound says how far a correct float32 fold may land from
the float64 Convolution + BatchNorm on the moving statistics; the derivation is on the oneDNN rewrites page.
"""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import Case
from bnprops.model.error_model import SAFETY, sum_factor, unit_roundoff
from bnprops.model.oracle import eps_as_applied, per_channel

#: Roundings a subnormal (or flushed) intermediate may lose beyond the relative ones: alpha, W', the product,
#: alpha mm, b' and the sum.
ABSOLUTE_ROUNDINGS = 6


def fold_scale(case: Case) -> np.ndarray:
    """alpha per channel, exactly: gamma / sqrt(moving_var + eps), gamma read as 1 under fix_gamma."""
    gamma = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    with ignoring("divide", "invalid"):
        return np.asarray(gamma / np.sqrt(case.moving_var.astype(np.float64) + eps_as_applied(case)))


def fold_shift(case: Case) -> np.ndarray:
    """b' per channel, exactly: beta - alpha moving_mean (the convolution has no bias)."""
    with ignoring("invalid", "over"):
        return np.asarray(case.beta.astype(np.float64) - fold_scale(case) * case.moving_mean.astype(np.float64))


def fold_bound(case: Case, *, conv: np.ndarray, conv_abs: np.ndarray, terms: int) -> np.ndarray:
    """How far a correct float32 fold's y may land from the float64 Conv + BatchNorm, per element.

    ``conv`` is the convolution's exact value at each output (x itself for the identity 1x1 one), ``conv_abs``
    the sum of its products' magnitudes, ``terms`` the most nonzero products any output sums. alpha's rounding
    scales y - beta as a whole (it enters b' too: alpha (conv - mm) cancels); W' rounds each product once;
    the dot product with the bias added is a sum of terms + 1 rounded values; b' rounds a product and a sum.
    """
    u = unit_roundoff("float32")
    a = per_channel(case, np.abs(fold_scale(case)))
    mm = per_channel(case, case.moving_mean.astype(np.float64))
    shift = per_channel(case, np.abs(fold_shift(case)))
    with ignoring("invalid", "over"):
        rel = (
            u * a * np.abs(conv - mm)  # alpha as a float
            + u * a * conv_abs  # W' = float(W alpha)
            + sum_factor(terms + 1, "float32", model="deterministic") * (a * conv_abs + shift)  # sum W' x + b'
            + u * a * np.abs(mm)  # alpha mm
            + u * shift  # beta - alpha mm
        )
    tiny = float(np.finfo(np.float32).tiny)
    return np.asarray(SAFETY * rel + ABSOLUTE_ROUNDINGS * tiny)


def identity_fold_bound(case: Case) -> np.ndarray:
    """fold_bound for the 1x1 convolution with identity weights: each output is one product, alpha x."""
    x = case.x.astype(np.float64)
    return fold_bound(case, conv=x, conv_abs=np.abs(x), terms=1)


def fold_overflows(case: Case) -> bool:
    """Do the fold's intermediates (alpha x, alpha mm, b') leave float32's range for this case, where the
    unfolded BatchNorm's need not?"""
    big = float(np.finfo(np.float32).max) / 4
    a = np.abs(fold_scale(case))
    with ignoring("invalid", "over"):
        scaled = per_channel(case, a) * np.abs(case.x.astype(np.float64))
        parts = (scaled, a * np.abs(case.moving_mean.astype(np.float64)), np.abs(fold_shift(case)))
        return not all(bool(np.all(np.isfinite(p) & (p <= big))) for p in parts)


def convolution(x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact (float64) stride-1 convolution of 4-D ``x`` with ``weight`` (K, C, k, k), zero-padded by k // 2 so
    the output keeps x's spatial shape, and the sum of its products' magnitudes at each output."""
    k = weight.shape[-1]
    p = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
    w = weight.astype(np.float64)
    n, _, h, wd = x.shape
    conv = np.zeros((n, weight.shape[0], h, wd))
    conv_abs = np.zeros_like(conv)
    for i in range(k):
        for j in range(k):
            window = xp[:, :, i : i + h, j : j + wd]
            conv += np.einsum("nchw,kc->nkhw", window, w[:, :, i, j])
            conv_abs += np.einsum("nchw,kc->nkhw", np.abs(window), np.abs(w[:, :, i, j]))
    return conv, conv_abs


def conv_batchnorm(case: Case, conv: np.ndarray) -> np.ndarray:
    """Inference BatchNorm (moving statistics) of the convolution's exact output: the fold's oracle."""
    mm = per_channel(case, case.moving_mean.astype(np.float64))
    with ignoring("invalid", "over"):
        return np.asarray(per_channel(case, fold_scale(case)) * (conv - mm) + per_channel(case, case.beta))

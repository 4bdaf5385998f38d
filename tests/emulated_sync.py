"""Correct float32 SyncBatchNorm kernels: MXNet's formulas (sync_batch_norm-inl.h, 1.9.1), every operation
rounded to float32 in the order mshadow's expressions evaluate it, with a choice of summation order and of
the order the merge adds the devices' vectors in (the rank order, which is the order the calls arrive in).

Per device d of the equal split: ``scale = float(C) / float(size_d)``, ``E_d = S(x) * scale``,
``E2_d = S(x * x) * scale``; the merge ``(sum over ranks) * 1.0f / ndev``; ``var = E2 - mean * mean``;
``y = gamma * (x - mean) / sqrt(var + eps) + beta``. Backward: ``sumGrad = S(dy)``,
``sumProd = S(dy * (x - mean))`` merged the same way; ``gvar = -1 * sumProd * gamma * pow(var + eps, -1.5)``,
``gmean = sumGrad * gamma * (-1 / sqrt(var + eps))``; ``dgamma_d = S(dy * (x - mean) / sqrt(var + eps))``,
``dbeta_d = S(dy)``, ``dx = dy * gamma * (1 / sqrt(var + eps)) + gvar * scale * (x - mean) + gmean * scale``;
the moving statistics ``moving * momentum + batch * (1 - momentum)``.

``summation``: ``mshadow`` (MapReduceKeepHighDim: within a sample element after element, then sample after
sample), ``sequential`` (the device's slice in memory order) or ``pairwise`` (a balanced tree).
"""

from __future__ import annotations

import numpy as np

from bnprops.model.case import Case, Outputs
from bnprops.model.oracle import eps_as_applied, momentum_as_applied
from bnprops.model.sync import device_split, offsets

SUMMATIONS = ("mshadow", "sequential", "pairwise")
F = np.float32


def _pairwise(terms: np.ndarray) -> np.ndarray:
    """Sum along the last axis by halving, in float32 (rows padded with zeros to a power of two)."""
    n = terms.shape[-1]
    width = 1 << max(n - 1, 0).bit_length()
    padded = np.zeros((*terms.shape[:-1], width), F)
    padded[..., :n] = terms
    while padded.shape[-1] > 1:
        padded = (padded[..., 0::2] + padded[..., 1::2]).astype(F)
    return padded[..., 0]


def channel_sum(terms: np.ndarray, summation: str) -> np.ndarray:
    """Per channel, the float32 sum of a device's ``terms`` (shape (N_d, C, ...)) in the order ``summation``."""
    n, c = terms.shape[:2]
    t = terms.reshape(n, c, -1).astype(F)  # (samples, channels, spatial)
    if summation == "mshadow":
        within = np.add.accumulate(t, axis=2, dtype=F)[:, :, -1] if t.shape[2] else np.zeros((n, c), F)
        return np.add.accumulate(within, axis=0, dtype=F)[-1]
    rows = np.moveaxis(t, 1, 0).reshape(c, -1)  # memory order within each channel
    if summation == "sequential":
        return np.add.accumulate(rows, axis=1, dtype=F)[:, -1]
    if summation == "pairwise":
        return _pairwise(rows)
    raise ValueError(f"unknown summation {summation!r}; choose from {SUMMATIONS}")


def _merge(vectors: list[np.ndarray], order: tuple[int, ...]) -> np.ndarray:
    """SharedND::MeanReady: the vectors added in rank order, times 1.0f, divided by ndev, in float32."""
    acc = vectors[order[0]].astype(F)
    for d in order[1:]:
        acc = (acc + vectors[d]).astype(F)
    return ((acc * F(1.0)).astype(F) / F(len(vectors))).astype(F)


def emulate_sync(
    case: Case, *, summation: str, forward_order: tuple[int, ...], backward_order: tuple[int, ...]
) -> Outputs:
    """The gathered outputs of a correct float32 SyncBatchNorm (as bnprops.mx.sync_calls returns MXNet's)."""
    split = device_split(case)
    c = case.channels
    shape = (1, c) + (1,) * (case.x.ndim - 2)
    eps, (mom, rest) = F(eps_as_applied(case)), momentum_as_applied(case)
    slope = np.ones(c, F) if case.fix_gamma else case.gamma.astype(F)
    xs = [case.x[s].astype(F) for s in offsets(split)]
    dys = [case.dy[s].astype(F) for s in offsets(split)]
    scales = [(F(c) / F(x.size)).astype(F) for x in xs]
    means = [(channel_sum(x, summation) * s).astype(F) for x, s in zip(xs, scales, strict=True)]
    squares = [(channel_sum((x * x).astype(F), summation) * s).astype(F) for x, s in zip(xs, scales, strict=True)]
    mean, square = _merge(means, forward_order), _merge(squares, forward_order)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        var = (square - (mean * mean).astype(F)).astype(F)
        root = np.sqrt((var + eps).astype(F)).astype(F)
        m, r, g = mean.reshape(shape), root.reshape(shape), slope.reshape(shape)
        centred = [(x - m).astype(F) for x in xs]
        ys = [((((g * cx).astype(F) / r).astype(F)) + case.beta.astype(F).reshape(shape)).astype(F) for cx in centred]
        sum_grad = _merge([channel_sum(dy, summation) for dy in dys], backward_order)
        prods = [channel_sum((dy * cx).astype(F), summation) for dy, cx in zip(dys, centred, strict=True)]
        sum_prod = _merge(prods, backward_order)
        power = np.power((var + eps).astype(F), F(-1.5)).astype(F)
        gvar = ((((F(-1.0) * sum_prod).astype(F) * slope).astype(F)) * power).astype(F)
        gmean = ((sum_grad * slope).astype(F) * (F(-1.0) / root).astype(F)).astype(F)
        inv = (F(1.0) / r).astype(F)
        dxs = []
        for dy, cx, s in zip(dys, centred, scales, strict=True):
            first = ((dy * g).astype(F) * inv).astype(F)
            second = (((gvar.reshape(shape) * s).astype(F)) * cx).astype(F)
            dxs.append(((first + second).astype(F) + (gmean.reshape(shape) * s).astype(F)).astype(F))
        dgammas = [
            channel_sum((((dy * cx).astype(F)) / r).astype(F), summation) for dy, cx in zip(dys, centred, strict=True)
        ]
        dbetas = [channel_sum(dy, summation) for dy in dys]
    if case.fix_gamma:
        dgammas = [np.zeros(c, F) for _ in dgammas]
    rest32 = F(rest)
    moving_mean = ((case.moving_mean * F(mom)).astype(F) + (mean * rest32).astype(F)).astype(F)
    moving_var = ((case.moving_var * F(mom)).astype(F) + (var * rest32).astype(F)).astype(F)
    ndev = len(split)
    out: Outputs = {
        "y": np.concatenate(ys),
        "dx": np.concatenate(dxs),
        "dgamma_partials": np.stack(dgammas),
        "dbeta_partials": np.stack(dbetas),
        "moving_mean": moving_mean,
        "moving_var": moving_var,
        "moving_mean_devices": np.stack([moving_mean] * ndev),
        "moving_var_devices": np.stack([moving_var] * ndev),
        "gamma": slope.copy(),
        "forward_moving_mean": case.moving_mean.copy(),
        "forward_moving_var": case.moving_var.copy(),
    }
    out["dgamma"] = out["dgamma_partials"].astype(np.float64).sum(axis=0)
    out["dbeta"] = out["dbeta_partials"].astype(np.float64).sum(axis=0)
    return out

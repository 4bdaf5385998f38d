"""Inference BatchNorm in the folded form y = x s + (beta - m s), s = gamma / sqrt(v + eps), as a runtime computes it.

onnxruntime's CPU BatchNormalization (the deployed form of MXNet's BatchNorm) rounds, in float32: v + eps,
the square root, its reciprocal, s = inv gamma, m s, beta - m s, x s and the final sum. The oracle is MXNet's
inference semantics in float64 (moving statistics, eps as MXNet's float32 kernel applies it, gamma as the
call's fix_gamma says, or as stored for a deviation's model); the bound propagates those eight roundings, the
two products x s and m s at their own magnitudes (they cancel where x is near m), and the exporter's eps.
The derivation is on the documentation's ONNX export page.
"""

from __future__ import annotations

import functools

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import Case, Outputs
from bnprops.model.error_model import SAFETY, subnormal_step, unit_roundoff
from bnprops.model.evaluation import Evaluation
from bnprops.model.oracle import eps_as_applied, overflow_threshold, per_channel

#: The roundings of the folded form's chain that may each land among the subnormals (all but sqrt's).
FOLDED_ROUNDINGS = 7


def mxnet_eps(case: Case) -> float:
    """eps as MXNet's float32 kernel applies it: the double it parses (model.params), rounded to float32."""
    return float(np.float32(eps_as_applied(case)))


def exported_eps(case: Case) -> float:
    """eps as the exporter writes it: Python's float of the attribute string (repr, so the value itself), stored
    as ONNX's float32 ``epsilon`` attribute."""
    return float(np.float32(case.eps))


def scale_gamma(case: Case, *, stored: bool = False) -> np.ndarray:
    """The gamma that scales: 1 under fix_gamma (MXNet's semantics), unless ``stored`` (the array as it is)."""
    if case.fix_gamma and not stored:
        return np.ones(case.channels)
    return case.gamma.astype(np.float64)


def folded_oracle_y(case: Case, *, gamma: np.ndarray) -> np.ndarray:
    """MXNet's inference y in float64: gamma (x - moving_mean) / sqrt(moving_var + eps) + beta."""
    with ignoring("divide", "invalid", "over"):
        invstd = 1.0 / np.sqrt(case.moving_var.astype(np.float64) + mxnet_eps(case))
        centred = case.x.astype(np.float64) - per_channel(case, case.moving_mean)
        return np.asarray(centred * per_channel(case, gamma * invstd) + per_channel(case, case.beta))


def scale_error(case: Case) -> np.ndarray:
    """Per channel, the relative error of s = fl(fl(1 / fl(sqrt(fl(v + eps')))) gamma) against gamma/sqrt(v + eps),
    eps' the exporter's eps: inf where v + eps is not safely positive (no first-order bound there)."""
    u = unit_roundoff("float32")
    s2 = case.moving_var.astype(np.float64) + mxnet_eps(case)
    e_eps = abs(exported_eps(case) - mxnet_eps(case))
    with ignoring("divide", "invalid", "over"):
        eta = (e_eps + u * np.abs(s2)) / s2
        rel = 1 / np.sqrt(1 - eta) - 1 + 2 * u + u  # v + eps; sqrt and reciprocal; times gamma
        return np.asarray(np.where((s2 > 0) & np.isfinite(s2) & (eta < 0.5), rel, np.inf))


def folded_bound_y(case: Case, expected: np.ndarray, *, gamma: np.ndarray) -> np.ndarray:
    """Per element, how far a correct float32 folded form may land from ``expected`` (its oracle for ``gamma``).

    e = SAFETY [rel_s |S (x - m)| + u (|x| s' + 2 |m| s' + |beta| + |y|) + 7 subnormal steps], S = gamma /
    sqrt(v + eps), s' = |S| (1 + rel_s): s's error is common to the channel and scales y - beta; x s, m s, their
    difference from beta and the final sum each round once at their own magnitude. inf where s has no bound, or
    where an intermediate passes float32's range (a correct kernel may overflow there).
    """
    u = unit_roundoff("float32")
    rel = scale_error(case)
    x = case.x.astype(np.float64)
    m = case.moving_mean.astype(np.float64)
    beta = np.abs(case.beta.astype(np.float64))
    with ignoring("divide", "invalid", "over"):
        big_s = np.abs(gamma) / np.sqrt(case.moving_var.astype(np.float64) + mxnet_eps(case))
        s_max = big_s * (1 + rel)
        xs, ms = np.abs(x) * per_channel(case, s_max), per_channel(case, np.abs(m) * s_max)
        centred = np.abs(x - per_channel(case, m)) * per_channel(case, big_s * rel)
        rounding = u * (xs + 2 * ms + per_channel(case, beta) + np.abs(expected))
        bound = SAFETY * (centred + rounding + FOLDED_ROUNDINGS * subnormal_step("float32"))
        limit = overflow_threshold("float32")
        overflows = (xs >= limit) | (ms + per_channel(case, beta) >= limit) | ~np.isfinite(per_channel(case, rel))
        return np.asarray(np.where(overflows | np.isnan(bound), np.inf, bound))


class FoldedEvaluation(Evaluation):
    """The plain evaluation of an inference case, with y's oracle and bounds those of the folded form (the other
    quantities keep the plain ones: a deployed graph yields y only)."""

    def __init__(self, case: Case) -> None:
        if case.uses_batch_stats:
            raise ValueError(f"the folded form normalises with the moving statistics; {case.describe()} does not")
        super().__init__(case)

    @functools.cached_property
    def fresh(self) -> Outputs:
        out = dict(super().fresh)
        out["y"] = folded_oracle_y(self.case, gamma=scale_gamma(self.case))
        out["y"].flags.writeable = False
        return out

    def bounds_of(self, values: Outputs, *, model: str = "deterministic", training_backward: bool = False) -> Outputs:
        out = dict(super().bounds_of(values, model=model, training_backward=training_backward))
        # No sums: the probabilistic bound is the deterministic one.
        out["y"] = folded_bound_y(self.case, values["y"], gamma=scale_gamma(self.case))
        return out

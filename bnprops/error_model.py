"""How far a correct float implementation of BatchNorm may land from the float64 oracle.

Every bound is a first-order forward-error bound, element by element, built from:

* ``u``: the unit roundoff of the precision each term is rounded to: float64 and float32 for
  their own data; float16 for float16 data, whose native kernel rounds terms such as x - mean,
  xhat, (x - mean) * dy and var + eps to float16 (y is seen up to 3 float16 ulps of |g xhat| from
  the oracle).  var + eps rounded to float16 outside float16's normal range, and products that
  overflow there, are known deviations (bnprops/known_deviations.py).
* ``u_acc``: the unit roundoff of the accumulation type, MXNet's AccReal: float32 for float16
  data (batch_norm.cc), else the data's own.
* ``M``: the reduction length (elements per channel).  A sum of ``M`` rounded terms is bounded by
  ``sum_err * sum(|terms|)`` with ``sum_err = u + (M + 2) u_acc``: each term's own rounding, then
  the classical worst case for recursive summation, which also covers pairwise and blocked orders.
* the magnitudes of the terms: ``D`` = max |x| in a channel (what the mean's rounding scales
  with), ``S`` = sqrt(var + eps) (what centred values are divided by), |xhat|, |dy|, |gamma|.
* the rounding of each result into its output dtype, ``u_out * |value|``, plus half the smallest
  subnormal of that dtype, for results that land in the subnormal range.

The propagation, per channel (e_* are absolute error bounds):

* ``e_mean = sum_err D`` (zero under use_global_stats or in inference, where the mean is an input, and for M = 1,
  where the mean is the value itself and x - mean is exactly 0);
* centred values ``c = x - mean``: ``e_c = e_mean + u (max|c| + e_mean)`` (one rounded subtraction);
* ``e_var = 2 sqrt(var) e_c + sum_err var + e_c^2`` (zero without batch statistics);
* ``rel(invstd) = (e_var + 2 u (var + eps)) / (2 S^2) + 3 u`` (eps and the sum are rounded too);
* ``e_xhat = e_c / S + |xhat| (rel(invstd) + u)``;
* ``y = g xhat + beta``: ``|g| e_xhat + 2 u (|g xhat| + |beta|)``;
* ``dbeta = sum dy``: ``sum_err sum|dy|``;
* ``sum(dy xhat)``: ``sum|dy| e_xhat + sum_err sum|dy xhat|``;
* ``dx = g invstd (dy - dbeta/M - xhat sum(dy xhat)/M)``: the errors of each term inside the
  parentheses (for the product, the second-order ``e_xhat e_sum / M`` too, which is all that is
  left where both factors are exactly 0), ``3 u`` of their magnitudes for the two subtractions,
  then ``rel(invstd) + 2 u`` of |dx| for the scaling;
* moving statistics ``m * old + (1 - m) * batch``: ``(1 - m)`` times the batch statistic's error,
  ``3 u`` of both terms.  The kernels keep the batch variance as invstd and recover it as
  ``1/invstd^2 - eps``, so the variance carries ``e_var + (2 rel(invstd) + 3 u) (var + eps)``.

Where var + eps is 0 or below ``2 e_var``, no first-order bound exists: see indeterminate_channels.

The total is multiplied by ``SAFETY`` (2), chosen once, before any comparison was run, to cover
second-order terms; it is not a knob for making failures go away.  Quantities that a correct
implementation produces exactly (dgamma under fix_gamma, gamma after the call, statistics under
use_global_stats or in inference, the moving statistics between forward and backward) have a bound of 0.
A gradient accumulated onto a prior (grad_req 'add') carries the bound of the gradient alone plus
one rounding of the sum, ``u_out |prior + gradient|``.  tests/test_error_model.py checks that the bounds hold for a
float emulation of the operator and that they are tight enough to expose a 0.5% error.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bnprops.case import GRAD_TARGETS, GRADIENT_OF, WRITE_ALL, Case, Outputs, param_dtype
from bnprops.oracle import fresh_reference, momentum_as_applied, per_channel, statistics

SAFETY = 2.0


def unit_roundoff(dtype: str) -> float:
    return float(np.finfo(np.dtype(dtype)).eps) / 2


def subnormal_step(dtype: str) -> float:
    """The absolute rounding error of a result that lands among the subnormals."""
    return float(np.finfo(np.dtype(dtype)).smallest_subnormal) / 2


def accumulation_dtype(dtype: str) -> str:
    """MXNet's AccReal: sums of float16 terms are accumulated in float32 (batch_norm.cc)."""
    return "float32" if dtype == "float16" else dtype


def compute_dtype(dtype: str) -> str:
    """The precision the kernels' intermediates are rounded to.

    MXNet accumulates float16 in float32 (AccReal), but its native kernel rounds intermediate terms
    such as x - mean, xhat and var + eps to float16: y for float16 data is seen up to 3 float16
    ulps of |g xhat| away from the oracle.  So float16's own unit roundoff is used for every term.
    """
    return dtype


@dataclasses.dataclass(frozen=True)
class _Statistics:
    """The per-channel statistics and their error bounds, shared by bounds() and indeterminate_channels()."""

    u: float
    sum_err: float  # relative error bound of a sum of M rounded terms, per unit of sum(|terms|)
    mean: np.ndarray
    var: np.ndarray
    s2: np.ndarray  # var + eps
    d: np.ndarray  # max |x|
    e_mean: np.ndarray
    e_c: np.ndarray
    e_var: np.ndarray


def _statistics(case: Case) -> _Statistics:
    return case.memo("error_model", lambda: _compute_statistics(case))


def _compute_statistics(case: Case) -> _Statistics:
    u = unit_roundoff(compute_dtype(case.dtype))
    sum_err = u + (case.reduction_length + 2) * unit_roundoff(accumulation_dtype(case.dtype))
    mean, var = statistics(case)
    x = case.x.astype(np.float64)
    # A NaN or inf makes every batch statistic of its channel non-finite (judged by pattern alone); with
    # the moving statistics the channel's finite elements stay finite, and their bound must too.
    x = np.where(np.isfinite(x), x, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(x).max(axis=case.reduce_axes) if x.size else np.zeros(case.channels)
        e_mean = np.zeros(case.channels) if not case.uses_batch_stats else sum_err * d
        # x - mean is one subtraction: its rounding is relative to the centred value, not to x.
        finite_mean = np.where(np.isfinite(mean), mean, 0.0)
        centred = (
            np.abs(x - per_channel(case, finite_mean)).max(axis=case.reduce_axes) if x.size else np.zeros(case.channels)
        )
        e_c = e_mean + u * (centred + e_mean)
        if case.uses_batch_stats and case.reduction_length == 1:
            # One value per channel: its mean is itself and x - mean is exactly 0.
            e_mean = e_c = np.zeros(case.channels)
        if not case.uses_batch_stats or case.reduction_length == 1:
            e_var = np.zeros(case.channels)
        else:
            e_var = 2 * np.sqrt(var) * e_c + sum_err * var + e_c * e_c
    return _Statistics(u, sum_err, mean, var, var + case.eps, d, e_mean, e_c, e_var)


def indeterminate_channels(case: Case) -> np.ndarray:
    """Channels whose invstd the data does not determine at working precision.

    Where var + eps is 0, or below twice the bound on the variance's own rounding error (a constant
    channel with eps at or near 0), invstd may be anything from 1/sqrt(e_var) to infinity, and
    y, dx, dgamma and invstd with it: 0/0 in the limit, no first-order bound holds.  The
    comparator judges none of those there (see indeterminate_quantities); the moving statistics
    stay judged.
    """
    return case.memo("indeterminate", lambda: _indeterminate(case))


def _indeterminate(case: Case) -> np.ndarray:
    st = _statistics(case)
    with np.errstate(invalid="ignore"):
        return np.asarray((st.s2 <= 0) | (2 * st.e_var >= st.s2))


def indeterminate_quantities(case: Case) -> tuple[str, ...]:
    """The quantities that indeterminate_channels leaves unjudged."""
    return ("y", "dx", "dgamma") + (() if not case.uses_batch_stats else ("invstd",))


def bounds(case: Case, expected: Outputs) -> Outputs:
    """Per-element absolute error bounds for each quantity in ``expected`` (the oracle's Outputs)."""
    accumulated = expected
    if case.grad_req != WRITE_ALL:
        # The gradients' own bounds scale with the gradients, not with what they accumulate onto.
        expected = fresh_reference(case)
    st = _statistics(case)
    u = st.u
    u_data = unit_roundoff(case.dtype)
    u_param = unit_roundoff(param_dtype(case.dtype))
    tiny_data = subnormal_step(case.dtype)
    tiny_param = subnormal_step(param_dtype(case.dtype))
    red = case.reduce_axes
    m = case.reduction_length
    sum_err = st.sum_err

    def chan(values: np.ndarray) -> np.ndarray:
        return per_channel(case, values)

    x = case.x.astype(np.float64)
    dy = case.dy.astype(np.float64)
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    beta = case.beta.astype(np.float64)
    mean, var, s2, e_mean, e_c, e_var = st.mean, st.var, st.s2, st.e_mean, st.e_c, st.e_var

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        s = np.sqrt(s2)
        # Where var + eps is 0 the normalised values are indeterminate (not judged); the terms
        # that scale with var + eps then vanish.
        rel_inv = np.where(s2 > 0, (e_var + 2 * u * s2) / np.where(s2 > 0, 2 * s2, 1), 0.0) + 3 * u

        xhat = (x - chan(mean)) / chan(s)
        axhat = np.abs(xhat)
        e_xhat = chan(e_c / s) + axhat * chan(rel_inv + u)

        out: Outputs = {}
        out["y"] = chan(np.abs(g)) * e_xhat + 2 * u * (chan(np.abs(g)) * axhat + chan(np.abs(beta)))
        out["y"] += u_data * np.abs(expected["y"])

        sum_ady = np.abs(dy).sum(axis=red)
        e_dbeta = sum_err * sum_ady
        out["dbeta"] = e_dbeta + u_param * np.abs(expected["dbeta"])

        sum_dy_xhat = (dy * xhat).sum(axis=red)
        e_sdx = (np.abs(dy) * e_xhat).sum(axis=red) + sum_err * (np.abs(dy) * axhat).sum(axis=red)
        if case.fix_gamma:
            out["dgamma"] = np.zeros(case.channels)
        else:
            out["dgamma"] = e_sdx + u_param * np.abs(expected["dgamma"])

        if case.uses_batch_stats:
            inner_mag = np.abs(dy) + chan(np.abs(sum_ady) / m) + axhat * chan(np.abs(sum_dy_xhat) / m)
            # xhat * sum(dy xhat) / M: both factors are uncertain, and where both are exactly 0
            # (dy constant in a channel) only the product of their errors is left.
            e_product = e_xhat * chan(np.abs(sum_dy_xhat) / m) + axhat * chan(e_sdx / m) + e_xhat * chan(e_sdx / m)
            e_inner = chan(e_dbeta / m) + e_product + 3 * u * inner_mag
            out["dx"] = chan(np.abs(g) / s) * e_inner + np.abs(expected["dx"]) * chan(rel_inv + 2 * u)
        else:
            out["dx"] = np.abs(expected["dx"]) * chan(rel_inv + 3 * u)
        out["dx"] += u_data * np.abs(expected["dx"])

        mom, rest = momentum_as_applied(case)
        old_mean = np.abs(case.moving_mean.astype(np.float64))
        old_var = np.abs(case.moving_var.astype(np.float64))
        if case.uses_batch_stats:
            out["moving_mean"] = abs(rest) * e_mean + 3 * u * (abs(mom) * old_mean + abs(rest) * np.abs(mean))
            out["moving_var"] = abs(rest) * (e_var + (2 * rel_inv + 3 * u) * s2) + 3 * u * (
                abs(mom) * old_var + abs(rest) * np.abs(var)
            )
            out["moving_mean"] += u_param * np.abs(expected["moving_mean"])
            out["moving_var"] += u_param * np.abs(expected["moving_var"])
        else:
            out["moving_mean"] = np.zeros(case.channels)
            out["moving_var"] = np.zeros(case.channels)

        out["gamma"] = np.zeros(case.channels)
        if case.output_mean_var:
            out["mean"] = e_mean + u_param * np.abs(expected["mean"])
            out["invstd"] = np.abs(expected["invstd"]) * (rel_inv + u_param)
        out["forward_moving_mean"] = np.zeros(case.channels)
        out["forward_moving_var"] = np.zeros(case.channels)

    exact = (
        {"gamma"}
        | ({"dgamma"} if case.fix_gamma else set())
        | ({"moving_mean", "moving_var"} if not case.uses_batch_stats else set())
        | {"forward_moving_mean", "forward_moving_var"}
    )
    result: Outputs = {}
    for q, b in out.items():
        if q not in accumulated:
            continue
        if q not in exact:
            b = b + (tiny_data if q in ("y", "dx") else tiny_param)
        if q in _accumulated_quantities(case) and q not in exact:
            # One more rounding: prior + gradient, in the output dtype.
            with np.errstate(invalid="ignore", over="ignore"):
                b = b + (u_data if q == "dx" else u_param) * np.abs(accumulated[q])
        result[q] = SAFETY * np.broadcast_to(b, expected[q].shape)
    return result


def _accumulated_quantities(case: Case) -> set[str]:
    return {GRADIENT_OF[t] for t in GRAD_TARGETS if case.request(t) == "add"}

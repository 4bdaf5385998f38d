"""The closed-form float64 BatchNorm that every MXNet result is checked against.

It follows the specification of MXNet's BatchNorm semantics that came with the forum thread, each point
of which was confirmed against MXNet 1.9.1's source and by runs (test_oracle holds the evidence the
oracle must keep passing: finite differences, identities and the forum thread's numbers).
"""

from __future__ import annotations

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, QUANTITIES, WRITE_ALL, Case, Outputs, param_dtype
from bnprops.model.exactness import channel_mean, channel_sum
from bnprops.model.formulas import normalised, oracle_dx, oracle_y
from bnprops.model.params import parsed


def per_channel(case: Case, values: np.ndarray) -> np.ndarray:
    """Reshape a per-channel vector so that it broadcasts against x."""
    shape = [1] * case.x.ndim
    shape[case.channel_axis] = case.channels
    return np.asarray(values, dtype=np.float64).reshape(shape)


def statistics(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel mean and variance the call normalises with (batch, biased; or the moving ones)."""
    if not case.uses_batch_stats:
        return case.moving_mean.astype(np.float64), case.moving_var.astype(np.float64)
    x = case.x.astype(np.float64)
    red, axis = case.reduce_axes, case.channel_axis
    # NaN/inf in the data make their channel's statistics NaN/inf, by IEEE rules, as they should.
    with ignoring("invalid", "over", "divide"):
        # The sum in extended precision (x86's 64-bit significand), rounded once to float64 after the
        # division: a float64 mean's own rounding is as large as the error bound of a kernel whose sum
        # is exact, and refining it in float64 adds noise of that size.
        mean = (channel_sum(x.astype(np.longdouble), axis) / case.reduction_length).astype(np.float64)  # 0/0: NaN
        if x.size:
            # A constant channel's mean is its value (its sum may not fit even 64 bits), so its variance is 0.
            lo, hi = x.min(axis=red), x.max(axis=red)
            mean = np.where((lo == hi) & np.isfinite(lo), lo, mean)
        centred = x - per_channel(case, mean)
        var = channel_mean(centred * centred, axis)
    return mean, var


def momentum_as_applied(case: Case) -> tuple[float, float]:
    """The two update coefficients, ``momentum`` and ``1 - momentum``, as MXNet applies them.

    BatchNormParam declares momentum as a C++ float, read from its string by dmlc's ParseFloat
    (model.params: not always the correctly rounded float32, e.g. one ulp above
    4.740775480516213e-11), and forms ``1 - momentum`` from that value in the accumulation type.
    Probed on float64 data: this model matches MXNet's moving statistics to the last bits.
    """
    mom = parsed(case.momentum, "float32")
    return mom, 1.0 - mom


def eps_as_applied(case: Case) -> float:
    """eps as MXNet reads it: a C++ double parsed by dmlc's ParseFloat from ``str(eps)`` (model.params)."""
    return parsed(case.eps, "float64")


def reference(case: Case) -> Outputs:
    """Every quantity of the call, in float64: forward, backward, side effects.

    A gradient requested with 'null' is absent; one requested with 'add' is its prior plus the
    gradient (see fresh_reference for the gradient alone).
    """
    return requested(case, fresh_reference(case))


def requested(case: Case, fresh: Outputs) -> Outputs:
    """Outputs computed as if every gradient were written, as the call requests them: 'null' ones absent,
    'add' ones on top of their prior."""
    out = dict(fresh)
    for target in GRAD_TARGETS:
        quantity = GRADIENT_OF[target]
        prior = case.prior(target)
        if case.request(target) == "null":
            del out[quantity]
        elif prior is not None:
            out[quantity] = prior.astype(np.float64) + out[quantity]
    return out


def fresh_reference(case: Case, stats: tuple[np.ndarray, np.ndarray] | None = None) -> Outputs:
    """Every quantity as if each gradient were requested with 'write', from the statistics ``stats`` (by default
    the oracle's own: an engine may give its own, computed another way)."""
    x = case.x.astype(np.float64)
    dy = case.dy.astype(np.float64)
    axis = case.channel_axis
    m = case.reduction_length
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    beta = case.beta.astype(np.float64)

    mean, var = statistics(case) if stats is None else stats
    with ignoring("divide", "invalid", "over"):
        invstd = 1.0 / np.sqrt(var + eps_as_applied(case))
        xhat = normalised(x, per_channel(case, mean), per_channel(case, invstd))
        y = oracle_y(xhat, per_channel(case, g), per_channel(case, beta))

        dbeta = channel_sum(dy, axis)
        sum_dy_xhat = channel_sum(dy * xhat, axis)
        # (where the statistics are inputs, no gradient flows through them)
        dbeta_m, dot_m = per_channel(case, dbeta / m), per_channel(case, sum_dy_xhat / m)
        dx = oracle_dx(xhat, dy, per_channel(case, g * invstd), dbeta_m, dot_m, case.uses_batch_stats)
    return {"y": y, "dx": dx, **per_channel_outputs(case, mean, var, invstd, dbeta, sum_dy_xhat)}


def per_channel_outputs(
    case: Case, mean: np.ndarray, var: np.ndarray, invstd: np.ndarray, dbeta: np.ndarray, sum_dy_xhat: np.ndarray
) -> Outputs:
    """The per-channel quantities from the statistics and the two gradient sums (sum dy, sum dy xhat)."""
    m = case.reduction_length
    # fix_gamma: gamma is the constant 1, so it has no gradient at all.
    dgamma = np.zeros(case.channels) if case.fix_gamma else sum_dy_xhat
    mom, rest = momentum_as_applied(case)
    # An empty batch has nothing to average: bnprops's contract is no update (judging.invariants).
    with ignoring("invalid", "over"):
        if case.uses_batch_stats and m > 0:
            moving_mean = mom * case.moving_mean.astype(np.float64) + rest * mean
            moving_var = mom * case.moving_var.astype(np.float64) + rest * var
        else:
            moving_mean = case.moving_mean.astype(np.float64)
            moving_var = case.moving_var.astype(np.float64)
    out: Outputs = {
        "dgamma": dgamma,
        "dbeta": dbeta,
        "moving_mean": moving_mean,
        "moving_var": moving_var,
        "gamma": np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64),
        # The operator updates the moving statistics in its backward, never in its forward.
        "forward_moving_mean": case.moving_mean.astype(np.float64),
        "forward_moving_var": case.moving_var.astype(np.float64),
    }
    if case.output_mean_var:
        out["mean"] = np.asarray(mean, dtype=np.float64)
        out["invstd"] = invstd
    return out


def overflow_threshold(dtype: str) -> float:
    """Where rounding to ``dtype`` gives inf: its largest number plus half an ulp (float64: its largest number)."""
    info = np.finfo(np.dtype(dtype))
    half_ulp_of_max = 2.0 ** (int(info.maxexp) - 2 - int(info.nmant))
    return float(info.max) + half_ulp_of_max if dtype != "float64" else float(info.max)


def output_dtypes(case: Case) -> dict[str, str]:
    """The dtype MXNet returns each quantity in."""
    pdt = param_dtype(case.dtype)
    return {q: (case.dtype if q in ("y", "dx") else pdt) for q in QUANTITIES}


def writing(case: Case) -> Case:
    """The same call with every gradient requested with 'write' (or 'null' as given): no accumulation."""
    if not case.accumulates:
        return case
    reqs = tuple("write" if r == "add" else r for r in case.grad_req)
    return case.with_(
        grad_req=reqs if "write" in reqs else WRITE_ALL, prior_dx=None, prior_dgamma=None, prior_dbeta=None
    )

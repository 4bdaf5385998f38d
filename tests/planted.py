"""A pure-numpy BatchNorm subject, correct or with one planted fault, for the meta tests.

It computes in float32 (float64 for float64 data) the textbook way and rounds each result to the
dtype MXNet returns, so the clean subject also exercises the error model with real rounding.
"""

from __future__ import annotations

import numpy as np

from bnprops.model.case import GRADIENT_OF, Case, Outputs
from bnprops.model.exactness import rows
from bnprops.model.oracle import momentum_as_applied, output_dtypes

#: Each fault and what it gets wrong.
FAULTS = {
    "unbiased_variance": "divides the sum of squares by M - 1",
    "eps_dropped": "normalises by sqrt(var) instead of sqrt(var + eps)",
    "dgamma_not_zeroed": "returns sum(dy * xhat) as dgamma under fix_gamma",
    "stats_over_all_axes": "reduces over every axis, the channel axis too",
    "dgamma_off_by_half_percent": "scales dgamma by 1.005",
    "dbeta_off_by_half_percent": "scales dbeta by 1.005",
    "dx_off_by_half_percent": "scales dx by 1.005",
    "beta_dropped": "leaves beta out of y",
    "momentum_swapped": "updates moving = (1 - m) old + m batch",
    "gamma_not_written": "leaves gamma as it was under fix_gamma",
    "global_stats_ignored": "normalises with batch statistics under use_global_stats",
    "invstd_is_variance": "returns the variance as the second output_mean_var output",
    "moving_updated_in_forward": "updates the moving statistics in the forward already",
    "add_overwrites": "writes gradients requested with 'add' instead of accumulating them",
    # Faults a checker that never reaches real sizes, or whose bounds are loose there, cannot see.
    "y_off_by_half_percent_at_large_m": "scales y by 1.005 where M >= 10^4",
    "dx_off_by_half_percent_at_large_m": "scales dx by 1.005 where M >= 10^4",
    "dgamma_off_by_half_percent_at_large_m": "scales dgamma by 1.005 where M >= 10^4",
    "dbeta_off_by_half_percent_at_large_m": "scales dbeta by 1.005 where M >= 10^4",
    # A fault only bounds that know exact sums can see: 256 float32 ulps.
    "y_off_by_256_ulps_on_exact_data": "scales y by 1 + 2^-15 on the exact regime's data",
}
#: M from which the large-M faults act.
LARGE_M = 10**4


def numpy_batchnorm(case: Case, *, fault: str | None = None) -> Outputs:
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {sorted(FAULTS)}")
    ct = np.float64 if case.dtype == "float64" else np.float32
    x = case.x.astype(ct)
    dy = case.dy.astype(ct)
    shape = [1] * x.ndim
    shape[case.channel_axis] = case.channels
    m = ct(case.reduction_length)

    def sums(values: np.ndarray) -> np.ndarray:
        # Each channel's own row, in one order: a channel's sums are the same bits stacked beside others or alone.
        return np.asarray(np.ascontiguousarray(rows(values, case.channel_axis)).sum(axis=1, dtype=ct), dtype=ct)

    g = np.ones(case.channels, ct) if case.fix_gamma else case.gamma.astype(ct)
    beta = np.zeros(case.channels, ct) if fault == "beta_dropped" else case.beta.astype(ct)

    batch_stats = case.uses_batch_stats or (fault == "global_stats_ignored" and case.is_train)
    with np.errstate(all="ignore"):
        if batch_stats and fault == "stats_over_all_axes":
            mean = np.full(case.channels, x.mean(), ct)
            var = np.full(case.channels, ((x - x.mean()) ** 2).mean(), ct)
        elif batch_stats:
            mean = sums(x) / m
            centred = x - mean.reshape(shape)
            denom = ct(max(case.reduction_length - 1, 1)) if fault == "unbiased_variance" else m
            var = sums(centred * centred) / denom
        else:
            mean = case.moving_mean.astype(ct)
            var = case.moving_var.astype(ct)
        invstd = ct(1) / np.sqrt(var if fault == "eps_dropped" else var + ct(case.eps))
        xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
        y = g.reshape(shape) * xhat + beta.reshape(shape)

        dbeta = sums(dy)
        sum_dy_xhat = sums(dy * xhat)
        dgamma = sum_dy_xhat if (not case.fix_gamma or fault == "dgamma_not_zeroed") else np.zeros_like(dbeta)
        scale = (g * invstd).reshape(shape)
        if batch_stats:
            dx = scale * (dy - (dbeta / m).reshape(shape) - xhat * (sum_dy_xhat / m).reshape(shape))
        else:
            dx = scale * dy

        mom, rest = momentum_as_applied(case)
        if fault == "momentum_swapped":
            mom, rest = rest, mom
        if case.uses_batch_stats:
            moving_mean = mom * case.moving_mean.astype(np.float64) + rest * mean
            moving_var = mom * case.moving_var.astype(np.float64) + rest * var
        else:
            moving_mean, moving_var = case.moving_mean, case.moving_var

    large = case.reduction_length >= LARGE_M
    if fault == "dgamma_off_by_half_percent" or (fault == "dgamma_off_by_half_percent_at_large_m" and large):
        dgamma = dgamma * 1.005
    if fault == "dbeta_off_by_half_percent" or (fault == "dbeta_off_by_half_percent_at_large_m" and large):
        dbeta = dbeta * 1.005
    if fault == "dx_off_by_half_percent" or (fault == "dx_off_by_half_percent_at_large_m" and large):
        dx = dx * 1.005
    if fault == "y_off_by_half_percent_at_large_m" and large:
        y = y * ct(1.005)
    if fault == "y_off_by_256_ulps_on_exact_data" and case.regime.startswith("exact/"):
        y = y * (1 + 2.0**-15)
    gamma_after = case.gamma if (fault == "gamma_not_written" or not case.fix_gamma) else np.ones(case.channels)
    gradients = {"data": dx, "gamma": dgamma, "beta": dbeta}
    for target in GRADIENT_OF:
        if case.request(target) == "add" and fault != "add_overwrites":
            gradients[target] = case.prior(target) + gradients[target]  # type: ignore[operator]
    in_forward = fault == "moving_updated_in_forward"
    out = {
        "y": y,
        "moving_mean": moving_mean,
        "moving_var": moving_var,
        "gamma": gamma_after,
        "forward_moving_mean": moving_mean if in_forward else case.moving_mean,
        "forward_moving_var": moving_var if in_forward else case.moving_var,
    }
    out.update({name: gradients[target] for target, name in GRADIENT_OF.items() if case.request(target) != "null"})
    if case.output_mean_var:
        out["mean"] = mean
        out["invstd"] = var if fault == "invstd_is_variance" else invstd
    dtypes = output_dtypes(case)
    with np.errstate(over="ignore"):
        return {q: np.asarray(v).astype(dtypes[q]) for q, v in out.items()}

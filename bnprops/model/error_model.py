"""How far a correct float implementation of BatchNorm may land from the float64 oracle, element by element.

A bound that is too loose lets real bugs through, one that is too tight flags correct kernels; so two
bounds come from one first-order propagation of the roundings a correct kernel may make (from the
dtype, the reduction length and the magnitudes of the terms), and differ only in what a sum may lose:

* **deterministic**: every summation order's worst case, times ``SAFETY``; beyond it MXNet is wrong;
* **probabilistic**: what a sum with mean-zero rounding errors loses, failing with probability at most
  ``PROBABILISTIC_FAILURE`` per quantity; beyond it, within the deterministic one, an accuracy finding.

Errors a whole channel shares are propagated as such, never as sums of absolute values that grow with
M; exact sums (``exactness``) contribute none; where ``var + eps`` is within its error of 0 no bound
exists (``indeterminate_channels``). The derivation term by term, with its references, is in the
documentation's error-model page.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model import gpu_reductions
from bnprops.model.case import (
    GRAD_TARGETS,
    GRADIENT_OF,
    PER_ELEMENT,
    WRITE_ALL,
    Case,
    Outputs,
    param_dtype,
    quantity_shape,
)
from bnprops.model.exactness import (
    channel_mean,
    channel_sum,
    exact_input_sums,
    exact_quotients,
    fits,
    lowest_bit_exponent,
    quantum,
    representable,
    rows,
    sums_exactly,
)
from bnprops.model.formulas import Terms, V1Terms, bound_dx, bound_y, normalised, v1_dx_extra
from bnprops.model.oracle import eps_as_applied, momentum_as_applied, per_channel

SAFETY = 2.0
#: The probability that a correct kernel's result lands beyond the probabilistic bound, per quantity.
PROBABILISTIC_FAILURE = 1e-12
MODELS = ("deterministic", "probabilistic")
#: Whose arithmetic the bounds follow: BatchNorm's kernels, or BatchNorm_v1's (entry sym-v1), which forms the
#: statistics with the reciprocal float(C) / float(size) and dx as three separately rounded terms.
OPERATORS = ("batchnorm", "v1")


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


def probabilistic_lambda(channels: int) -> float:
    """lambda for a failure probability of PROBABILISTIC_FAILURE over a case's 4 sums per channel."""
    delta = PROBABILISTIC_FAILURE / (4 * max(channels, 1))
    return math.sqrt(2 * math.log(2 / delta))


def channel_lambdas(channels: int | np.ndarray) -> float | np.ndarray:
    """probabilistic_lambda for a case of ``channels`` channels, or per channel of a stacked group (``channels``:
    each channel's own case's count), each by the scalar formula, so that a channel's bound has the same bits."""
    if isinstance(channels, (int, np.integer)):
        return probabilistic_lambda(int(channels))
    counts = np.asarray(channels, dtype=np.int64)
    distinct = np.unique(counts)
    values = np.array([probabilistic_lambda(int(c)) for c in distinct], dtype=np.float64)
    return np.asarray(values[np.searchsorted(distinct, counts)])


def sum_factor(additions: int, dtype: str, *, model: str, channels: int = 1) -> float:
    """What a sum of ``additions + 1`` terms may lose in ``dtype``, per unit of the sum of |terms|."""
    ua = unit_roundoff(dtype)
    if model == "deterministic":
        n = additions * ua
        return n / (1 - n) if n < 1 else math.inf
    if model == "probabilistic":
        lam = probabilistic_lambda(channels)
        # A short sum's worst case is below lambda sqrt(n) u: it never needs more than that.
        worst = sum_factor(additions, dtype, model="deterministic")
        return min(worst, math.expm1(lam * math.sqrt(additions) * ua + additions * ua * ua / (1 - ua)))
    raise ValueError(f"unknown error model {model!r}; choose from {MODELS}")


@dataclasses.dataclass(frozen=True)
class Exactness:
    """Per channel: which of the kernel's sums and roundings are exact for this data."""

    x_sum: np.ndarray
    mean: np.ndarray  # the mean's quotient too
    c2_sum: np.ndarray  # and the centred values and their squares
    var: np.ndarray  # and its quotient
    invstd: np.ndarray  # var + eps an exact power of 4, so sqrt and reciprocal are exact
    dy_sum: np.ndarray
    dot_sum: np.ndarray  # sum (x - mean) dy and sum dy xhat, terms included


def _corner_sums_exact(values: np.ndarray, axis: int, dtype: str) -> np.ndarray:
    """exact_input_sums on a few elements of every channel (a view, not a copy): where those already fail,
    the whole channel does, and ordinary data is rejected without a pass over a large array."""
    corner = tuple(slice(None) if i == axis else slice(0, 4) for i in range(values.ndim))
    return exact_input_sums(values[corner], channel_axis=axis, dtype=dtype)


def exactness(case: Case, stats: tuple[np.ndarray, np.ndarray], *, operator: str = "batchnorm") -> Exactness:
    """Per channel, which of the kernel's sums and roundings are exact for this data (``stats``: the statistics
    the call normalises with). BatchNorm_v1 (``operator`` "v1") multiplies its exact sums by a rounded
    reciprocal: its statistics, and what follows from them, are exact only where that reciprocal is."""
    found = _exactness(case, stats)
    if operator == "v1" and case.uses_batch_stats and v1_scale_error(case, "deterministic") > 0:
        no = np.zeros(case.channels, dtype=bool)
        return dataclasses.replace(found, mean=no, c2_sum=no, var=no, invstd=no, dot_sum=no)
    return found


def without_exact_statistics(found: Exactness) -> Exactness:
    """``found`` for the GPU reduction class: its mean comes from Welford's updates or a rounded reciprocal of
    the count, so neither the statistics nor what follows from them are exact; dy's sum stays exact in any order."""
    no = np.zeros_like(found.x_sum)
    return dataclasses.replace(found, x_sum=no, mean=no, c2_sum=no, var=no, invstd=no, dot_sum=no)


def v1_scale_error(case: Case, model: str) -> float:
    """The relative error of BatchNorm_v1's ``scale = float(C) / float(size)`` against 1/M: the division's
    rounding unless M is a power of two, and float(size)'s where size is not a float32."""
    ua = _rounding_scale(model) * unit_roundoff("float32")
    m, size = case.reduction_length, case.x.size
    inexact_division = m > 0 and (m & (m - 1)) != 0
    inexact_size = float(np.float32(size)) != size
    return ua * (int(inexact_division) + int(inexact_size))


def _exact_sum(terms: np.ndarray, wanted: bool) -> Fraction | None:
    """The exact sum of ``terms`` (an exact sum is a float64 number, so fsum gives it exactly); None where it is
    not ``wanted`` (an inexact channel's, never read) or not finite."""
    if not wanted:
        return None
    total = math.fsum(terms)
    return Fraction(total) if math.isfinite(total) else None


def _exactness(case: Case, stats: tuple[np.ndarray, np.ndarray]) -> Exactness:
    acc, cd = accumulation_dtype(case.dtype), compute_dtype(case.dtype)
    ax, m = case.channel_axis, case.reduction_length
    no = np.zeros(case.channels, dtype=bool)
    # (dy in float64 only where its corner sums are exact: ordinary data never needs the copy)
    corner_dy = _corner_sums_exact(case.dy, ax, acc).any()
    dy_sum = exact_input_sums(case.dy, channel_axis=ax, dtype=acc) if corner_dy else no
    if case.x.size == 0 or (case.uses_batch_stats and not _corner_sums_exact(case.x, ax, acc).any()):
        return Exactness(no, no, no, no, no, dy_sum, no)
    x = case.x.astype(np.float64)
    xr = rows(x, ax)
    # Each channel's own data decide (a stacked group's channels are judged as in their own cases).
    finite = np.all(np.isfinite(xr), axis=1)
    if not finite.any():
        return Exactness(no, no, no, no, no, dy_sum, no)
    if not finite.all():
        xr = np.where(finite[:, None], xr, 0.0)
    mean, var = stats
    if case.uses_batch_stats:
        x_sum = exact_input_sums(case.x, channel_axis=ax, dtype=acc)
        # An exact sum is a float64 number, so fsum gives it exactly.
        mean_ok = x_sum & exact_quotients([_exact_sum(r, ok) for r, ok in zip(xr, x_sum, strict=True)], m, mean)
    else:
        x_sum, mean_ok = finite, finite  # the moving mean is an input: exact
    if not mean_ok.any():
        return Exactness(x_sum, mean_ok, no, no, no, dy_sum, no)
    # x - mean is exact where both are multiples of a common quantum and the difference fits.
    mean_bit = lowest_bit_exponent(np.where(np.isfinite(mean), mean, 0.0))
    head = xr[:, :64]
    c_ok = mean_ok & fits(np.abs(head - mean[:, None]).max(axis=1), np.minimum(quantum(head), mean_bit), cd)
    if not c_ok.any() and case.uses_batch_stats:  # (else var and invstd do not depend on x - mean)
        return Exactness(x_sum, mean_ok, no, no, no, dy_sum, no)
    q_c = np.minimum(np.where(finite, quantum(rows(case.x, ax)), np.inf), mean_bit)  # (quanta: in x's own type)
    cr = xr - mean[:, None]
    c_ok &= fits(np.abs(cr).max(axis=1), q_c, cd)
    c2_sum = c_ok & fits((cr * cr).sum(axis=1), 2 * q_c, acc)
    if case.uses_batch_stats:
        var_ok = c2_sum & exact_quotients([_exact_sum(r * r, ok) for r, ok in zip(cr, c2_sum, strict=True)], m, var)
    else:
        var_ok = finite
    eps = eps_as_applied(case)
    s2 = var + eps
    eps_ok = bool(representable(np.asarray(eps), cd) & representable(np.asarray(eps), acc))
    with ignoring("invalid", "divide"):
        root = np.sqrt(s2)
        pow4 = (s2 > 0) & (np.frexp(root)[0] == 0.5) & (root * root == s2) & representable(s2, cd)
    sum_ok = sums_exactly(var, eps, s2)
    inv_ok = var_ok & eps_ok & pow4 & sum_ok
    if not (c_ok & inv_ok).any():  # (the dot sums need both: most data never has var + eps a power of 4)
        return Exactness(x_sum, mean_ok, c2_sum, var_ok, inv_ok, dy_sum, no)
    # (x - mean) dy and dy xhat (= (x - mean) dy 2^-k): products of two exact values, summed. Each product is
    # rounded to the compute type first (float16's kernel: half_t times half_t is half_t), so it must fit there too.
    dyr = rows(case.dy.astype(np.float64), ax)
    products, q_p = np.abs(cr * dyr), q_c + quantum(rows(case.dy, ax))
    dot_sum = c_ok & inv_ok & fits(products.sum(axis=1), q_p, acc) & fits(products.max(axis=1), q_p, cd)
    return Exactness(x_sum, mean_ok, c2_sum, var_ok, inv_ok, dy_sum, dot_sum)


@dataclasses.dataclass(frozen=True)
class Propagated:
    """The per-channel statistics and their error bounds under one model."""

    u: float
    mean: np.ndarray
    var: np.ndarray
    s2: np.ndarray  # var + eps
    e_mean: np.ndarray
    e_var: np.ndarray
    e_eps: float  # eps converted to the data type (DType(eps)), an exactly known error
    rel_inv: np.ndarray  # relative error bound of invstd
    rel_round: np.ndarray  # the part of it that the square root and reciprocal add
    sum_factors: dict[str, np.ndarray]  # what each of the kernel's sums may lose per sum|terms|: x, c2, dy, dot
    reduction: str = "cpu"  # the kernels' reduction class (gpu_reductions.REDUCTIONS) the bounds cover


def _rounding_scale(model: str) -> float:
    """The probabilistic bound keeps SAFETY on the elementwise roundings (the oracle's own float64
    rounding is of their size) and drops it on the sums, whose factor is the point of the model."""
    return 1.0 if model == "deterministic" else SAFETY


def propagated_statistics(
    case: Case,
    model: str,
    *,
    stats: tuple[np.ndarray, np.ndarray],
    exact: Exactness,
    mean_abs: np.ndarray,
    factors: dict[str, np.ndarray] | None = None,
    operator: str = "batchnorm",
    gpu: gpu_reductions.DataSpread | None = None,
) -> Propagated:
    """Per channel: the statistics the call normalises with (``stats``), var + eps, and their propagated errors;
    ``mean_abs`` and (probabilistic model) the sums' ``factors`` are mean_abs's and partial_sum_factors'.
    ``operator`` "v1": the mean and the variance each carry the reciprocal's error too (v1_scale_error).
    ``gpu``: the data's gpu_reductions.DataSpread where the bounds cover the GPU reduction class (None: the CPU's
    two-pass sums); its terms add to the mean's and the variance's errors."""
    r = _rounding_scale(model)
    u = r * unit_roundoff(compute_dtype(case.dtype))
    acc = accumulation_dtype(case.dtype)
    ua = r * unit_roundoff(acc)
    m = case.reduction_length
    mean, var = stats
    if model == "probabilistic":
        if factors is None:
            raise ValueError("the probabilistic model needs the sums' partial-sum factors")
    else:
        worst = np.full(case.channels, sum_factor(max(m - 1, 0), acc, model=model))
        factors = dict.fromkeys(("x", "c2", "dy", "dot"), worst)
    sums = {
        name: np.where(flags, 0.0, factors[name])
        for name, flags in (("x", exact.x_sum), ("c2", exact.c2_sum), ("dy", exact.dy_sum), ("dot", exact.dot_sum))
    }
    eps = eps_as_applied(case)
    with ignoring("over", "invalid"):
        e_eps = abs(float(np.float64(eps).astype(case.dtype)) - eps) if np.isfinite(eps) else 0.0
    zeros = np.zeros(case.channels)
    with ignoring("invalid", "over", "divide"):
        if case.uses_batch_stats and m > 1:
            finite_mean = np.where(np.isfinite(mean), mean, 0.0)
            finite_var = np.where(np.isfinite(var), var, 0.0)
            # v1: scale * sum, the reciprocal's error on top of the product's rounding (BatchNorm's quotient's).
            scale = v1_scale_error(case, model) if operator == "v1" else 0.0
            e_mean = sums["x"] * mean_abs + np.where(exact.mean, 0.0, (ua + scale) * np.abs(finite_mean))
            per_term = np.where(exact.c2_sum, 0.0, 2 * u + ua)
            if gpu is not None:
                extra = gpu_reductions.statistics_errors(
                    case,
                    model,
                    found=gpu,
                    mean=mean,
                    var=var,
                    mean_abs=mean_abs,
                    u_data=u,
                    ua=ua,
                    worst=sum_factor(max(m - 1, 0), acc, model="deterministic"),
                    lam=probabilistic_lambda(case.channels),
                )
                e_mean = e_mean + extra.mean
            spread = finite_var + e_mean * e_mean
            e_var = (
                e_mean * e_mean + (per_term + sums["c2"]) * spread + np.where(exact.var, 0.0, (ua + scale) * finite_var)
            )
            if gpu is not None:
                e_var = e_var + extra.var
        else:
            # The statistics are inputs (or, for one value per channel, the value itself: x - mean = 0).
            e_mean, e_var = zeros, zeros
        s2 = var + eps
        rel_data = invstd_data_error(s2, e_var + e_eps + np.where(exact.invstd, 0.0, u * np.abs(s2)))
        rel_round = np.where(exact.invstd, 0.0, 2 * u)
    reduction = "cpu" if gpu is None else "gpu"
    return Propagated(u, mean, var, s2, e_mean, e_var, e_eps, rel_data + rel_round, rel_round, sums, reduction)


def invstd_data_error(s2: np.ndarray, e_s2: np.ndarray) -> np.ndarray:
    """The relative error of 1/sqrt(s2) that an error ``e_s2`` of ``s2 = var + eps`` causes: with eta = e_s2 / s2,
    1/sqrt(s2 (1 - eta)) is the farthest invstd can be, exactly (not to first order); inf from eta >= 1."""
    with ignoring("invalid", "over", "divide"):
        eta = np.where(s2 > 0, e_s2 / np.where(s2 > 0, s2, 1.0), 0.0)
        return np.asarray(np.where(eta < 1, 1 / np.sqrt(np.maximum(1 - eta, 1e-300)) - 1, np.inf))


def sequential_sum_factor(rows: np.ndarray, dtype: str, *, channels: int | np.ndarray) -> np.ndarray:
    """Per row of terms, ``lambda u sqrt(sum_k S_k^2) / sum|t|``: the martingale bound (Ipsen & Zhou) with
    the partial sums S_k of the sequential order in memory, which MXNet's CPU kernels use (their mean is
    np.cumsum's, bit for bit), as a factor on sum|terms|.  Pairwise and blocked orders have smaller partial
    sums (for terms of one sign ~M^2 against M^3/3; for random signs M log M against M^2/2), so it covers
    them too; test_error_model_soundness checks it with emulations of each.  For sums that cancel
    (random head gradients) it is ~sqrt(M) sharper than sum_factor's ``lambda sqrt(M) u``, which takes every
    partial sum as large as sum|t|.  Never above the deterministic factor."""
    with ignoring("over", "invalid"):
        terms = np.where(np.isfinite(rows), rows, 0.0)
        partial = np.cumsum(terms, axis=1)[:, 1:]  # the sums each addition rounds (from the 2nd term on)
        squares, total = (partial * partial).sum(axis=1), np.abs(terms).sum(axis=1)
    return partial_sum_factor(squares, total, dtype, channels=channels, terms=rows.shape[1])


def partial_sum_factor(
    squares: np.ndarray, total: np.ndarray, dtype: str, *, channels: int | np.ndarray, terms: int
) -> np.ndarray:
    """sequential_sum_factor from its two sums: of the squared partial sums from the second on, and of |terms|.
    ``channels``: the case's count, or each channel's own case's (channel_lambdas)."""
    lam = channel_lambdas(channels)
    worst = sum_factor(max(terms - 1, 0), dtype, model="deterministic")
    with ignoring("over", "invalid", "divide"):
        spread = np.sqrt(squares)
        factor = np.where(total > 0, lam * unit_roundoff(dtype) * spread / np.where(total > 0, total, 1.0), 0.0)
    return np.asarray(np.minimum(factor, worst), dtype=np.float64)


def mean_abs(case: Case) -> np.ndarray:
    """Per channel, the mean of |x| over its finite values (a NaN/inf channel is judged by its pattern alone)."""
    x = case.x.astype(np.float64)
    return np.asarray(channel_mean(np.abs(np.where(np.isfinite(x), x, 0.0)), case.channel_axis))


def partial_sum_factors(
    case: Case, mean: np.ndarray, *, channels: int | np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """sequential_sum_factor for each of the kernel's sums: x, (x - mean)^2, dy and (x - mean) dy (``mean``: the
    statistics' mean; ``channels``: as for partial_sum_factor, by default the case's)."""
    channels = case.channels if channels is None else channels
    acc = accumulation_dtype(case.dtype)
    x = rows(case.x.astype(np.float64), case.channel_axis)
    dy = rows(case.dy.astype(np.float64), case.channel_axis)
    with ignoring("over", "invalid"):
        centred = x - np.where(np.isfinite(mean), mean, 0.0)[:, None]
        terms = {"x": x, "c2": centred * centred, "dy": dy, "dot": centred * dy}
    return {name: sequential_sum_factor(t, acc, channels=channels) for name, t in terms.items()}


def indeterminate_channels(st: Propagated) -> np.ndarray:
    """Channels whose invstd the data does not determine at working precision.

    Where var + eps is 0, or below twice the (deterministic) bound on its own rounding error (a
    constant channel with eps at or near 0), invstd may be anything from 1/sqrt(e_var) to
    infinity, and y, dx, dgamma and invstd with it: 0/0 in the limit, no first-order bound holds.
    The comparator judges none of those there (see indeterminate_quantities); the moving
    statistics stay judged.  ``st``: the deterministic model's propagated statistics.
    """
    with ignoring("invalid"):
        return np.asarray((st.s2 <= 0) | (2 * (st.e_var + st.e_eps) >= st.s2))


def indeterminate_quantities(case: Case) -> tuple[str, ...]:
    """The quantities that indeterminate_channels leaves unjudged."""
    return ("y", "dx", "dgamma") + (() if not case.uses_batch_stats else ("invstd",))


def bounds(
    case: Case,
    expected: Outputs,
    *,
    st: Propagated,
    exact: Exactness,
    fresh: Outputs,
    model: str = "deterministic",
    training_backward: bool = False,
    operator: str = "batchnorm",
) -> Outputs:
    """Per-element absolute error bounds for each quantity in ``expected`` (the oracle's Outputs).

    ``st``: ``model``'s propagated statistics; ``fresh``: the oracle's outputs as if every gradient were written
    (under 'add', the gradients' bounds scale with them, not with what they accumulate onto).
    ``training_backward``: bound dx as the training formula computes it from the statistics the call
    normalises with, even where they are inputs (what the executor does after an inference forward).
    ``operator``: whose arithmetic (OPERATORS); "v1" adds v1_terms to dx's bound where it trains.
    """
    if model not in MODELS:
        raise ValueError(f"unknown error model {model!r}; choose from {MODELS}")
    accumulated = expected
    if case.grad_req != WRITE_ALL:
        # The gradients' own bounds scale with the gradients, not with what they accumulate onto.
        expected = fresh

    def chan(values: np.ndarray) -> np.ndarray:
        return per_channel(case, values)

    x = case.x.astype(np.float64)
    dy = case.dy.astype(np.float64)
    with ignoring("invalid", "over", "divide"):
        inv = bound_inv(st)
        shift = xhat_shift(st, inv)
        xhat = normalised(x, chan(st.mean), chan(inv))
        axhat = np.abs(xhat)
        dbeta = expected["dbeta"]
        dgamma = channel_sum(dy * xhat, case.channel_axis)  # the gradient even where fix_gamma reports 0
        e_dbeta, e_dgamma, gradients = gradient_sum_bounds(
            case,
            st,
            model,
            exact_dot=exact.dot_sum,
            dbeta=dbeta,
            sum_ady=channel_sum(np.abs(dy), case.channel_axis),
            dgamma=dgamma,
            sum_adx=channel_sum(np.abs(dy) * axhat, case.channel_axis),
            shift=shift,
            inv=inv,
        )
        terms = channel_terms(
            case, st, model, inv=inv, shift=shift, dbeta=dbeta, dgamma=dgamma, e_dbeta=e_dbeta, e_dgamma=e_dgamma
        )
        m = Terms(*(chan(v) if np.ndim(v) else v for v in terms))
        ag = chan(np.abs(_gamma(case)))
        out: Outputs = {"y": bound_y(axhat, expected["y"], ag, m)}
        if "dx" in accumulated:
            add, batch = "dx" in _accumulated_quantities(case), case.uses_batch_stats or training_backward
            out["dx"] = bound_dx(axhat, dy, expected["dx"], accumulated["dx"], batch, add, m)
            if operator == "v1" and batch:
                extra = v1_terms(case, st, model, inv=inv, shift=shift, dbeta=dbeta, dgamma=dgamma, xhat=xhat)
                out["dx"] = out["dx"] + v1_dx_extra(axhat, dy, V1Terms(*(chan(v) if np.ndim(v) else v for v in extra)))
    # (y and dx are finished by their formulas; the per-channel quantities here)
    out.update(finished_bounds(case, {**gradients, **statistics_bounds(case, st, model, expected)}, accumulated, model))
    return out


def _gamma(case: Case) -> np.ndarray:
    return np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)


def bound_inv(st: Propagated) -> np.ndarray:
    """The invstd the bounds scale with: 1/sqrt(var + eps), 0 where that is 0 or below."""
    with ignoring("invalid", "over", "divide"):
        return np.asarray(np.where(st.s2 > 0, 1 / np.sqrt(st.s2), 0.0))


def xhat_shift(st: Propagated, inv: np.ndarray) -> np.ndarray:
    """The mean's error as it moves every xhat of a channel."""
    with ignoring("invalid", "over"):
        return np.asarray(st.e_mean * inv * (1 + st.rel_inv))


def _safety(model: str) -> float:
    return SAFETY if model == "deterministic" else 1.0


def channel_terms(
    case: Case,
    st: Propagated,
    model: str,
    *,
    inv: np.ndarray,
    shift: np.ndarray,
    dbeta: np.ndarray,
    dgamma: np.ndarray,
    e_dbeta: np.ndarray,
    e_dgamma: np.ndarray,
) -> Terms:
    """Per channel, ``model``'s terms of the per-element bounds (formulas.Terms: arrays, or one float for every
    channel), from the statistics' errors, the bound's invstd, the mean's shift of xhat, the two gradient sums
    and their errors.  Both engines take them from here."""
    r = _rounding_scale(model)
    u = st.u
    tiny_term = r * subnormal_step(compute_dtype(case.dtype))
    ua = r * unit_roundoff(accumulation_dtype(case.dtype))
    m = case.reduction_length
    ag = np.abs(_gamma(case))
    # The GPU class forms dbeta/M and dotp/M by the count's rounded reciprocal: one more rounding each.
    norm = ua if st.reduction == "gpu" else 0.0
    with ignoring("invalid", "over", "divide"):
        t2 = np.abs(dbeta) / m
        return Terms(
            # (x - mean) and xhat may each be rounded among float16's subnormals: an absolute 2^-25 each.
            a1=shift + tiny_term * (1 + inv),
            b1=st.rel_inv + 2 * u,
            u=u,
            ty=tiny_term * (1 + ag),
            ud=r * unit_roundoff(case.dtype),
            td=r * subnormal_step(case.dtype),
            sf=_safety(model),
            # xhat * dgamma / M: both factors are uncertain, and where both are exactly 0 (dy constant in a
            # channel) only the product of their errors is left.
            k1=np.abs(dgamma) / m,
            k2=e_dgamma / m + norm * np.abs(dgamma) / m if norm else e_dgamma / m,
            t2=t2,
            e0=e_dbeta / m + (ua + norm) * t2 if norm else e_dbeta / m + ua * t2,
            agi=ag * inv,
            tx=tiny_term * (ag * np.maximum(1.0, inv)),
            ua2=2 * ua,
            u2=2 * u,
            tiny3=3 * tiny_term,
        )


def v1_terms(
    case: Case,
    st: Propagated,
    model: str,
    *,
    inv: np.ndarray,
    shift: np.ndarray,
    dbeta: np.ndarray,
    dgamma: np.ndarray,
    xhat: np.ndarray,
) -> V1Terms:
    """Per channel, ``model``'s terms of BatchNorm_v1's dx beyond BatchNorm's (formulas.V1Terms), read from
    batch_norm_v1-inl.h (1.9.1): dx = T1 + T3 + T2 with T1 = (dy g) (1/sqrt(s2)), T2 = (sum(dy g) (-1/sqrt(s2))
    + tmp) scale, T3 = gvar scale 2 (x - mean), gvar = sum(dy g (x - mean) (-0.5) pow(s2, -1.5)) and
    tmp = scale sum(-2 (x - mean)) gvar. Against BatchNorm's model: T1 and T2 share invstd's rounding (2 u)
    but T3 does not (pow's, 2 u more); each term's products and the reciprocal's error (v1_scale_error) stay
    per term; gvar's terms take 3 u more each; sum(dy g) is rounded even where sum(dy) is exact (its factor
    G_dy: the terms' products and sums are not BatchNorm's; the worst case where the terms are all equal, whose
    roundings are alike, not a random walk); and tmp, 0 in exact arithmetic, is the mean's error
    and the rounding of sum(x - mean) times dgamma/M (its factor G_c). G_c and G_dy are the worst case, or the
    sequential partial sums' (error_model.sequential_sum_factor) in the probabilistic model."""
    u = st.u
    m = max(case.reduction_length, 1)
    scale = v1_scale_error(case, model)
    axis = case.channel_axis
    dy = np.abs(case.dy.astype(np.float64))
    with ignoring("invalid", "over", "divide"):
        axhat = np.abs(xhat)
        mean_dy, mean_xhat = channel_mean(dy, axis), channel_mean(axhat, axis)
        mean_dot = channel_mean(dy * axhat, axis)
        if model == "probabilistic":
            centred = rows(case.x.astype(np.float64), case.channel_axis) - st.mean[:, None]
            g_c = sequential_sum_factor(centred, "float32", channels=case.channels)
            dy_rows = rows(case.dy.astype(np.float64), case.channel_axis)
            g_dy = sequential_sum_factor(dy_rows, "float32", channels=case.channels)
            # Equal terms (a constant head: dy g the same everywhere) round alike at every step, no random walk.
            same = np.all(dy_rows == dy_rows[:, :1], axis=1) if dy_rows.shape[1] else np.ones(case.channels, bool)
            g_dy = np.where(same, sum_factor(max(m - 1, 0), "float32", model="deterministic"), g_dy)
        else:
            g_c = g_dy = np.full(case.channels, sum_factor(max(m - 1, 0), "float32", model=model))
        t2, k1 = np.abs(dbeta) / m, np.abs(dgamma) / m
        return V1Terms(
            agi=np.abs(_gamma(case)) * inv,
            c0=(u + g_dy) * mean_dy + (5 * u + scale) * t2 + k1 * (shift + g_c * mean_xhat),
            cd=2 * u,
            cx=3 * u * mean_dot + (7 * u + scale) * k1,
            sf=_safety(model),
        )


def sharpest(probabilistic: Outputs, deterministic: Outputs) -> Outputs:
    """The probabilistic bounds, never above the deterministic ones; where the probabilistic model's own
    first-order propagation breaks down (nan or inf), the deterministic bound."""
    return {
        q: np.where(np.isfinite(b), np.minimum(b, deterministic[q]), deterministic[q]) for q, b in probabilistic.items()
    }


def gradient_sum_bounds(
    case: Case,
    st: Propagated,
    model: str,
    *,
    exact_dot: np.ndarray,
    dbeta: np.ndarray,
    sum_ady: np.ndarray,
    dgamma: np.ndarray,
    sum_adx: np.ndarray,
    shift: np.ndarray,
    inv: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, Outputs]:
    """The errors of the kernel's two gradient sums (e_dbeta, e_dgamma: dx's bound builds on them) and the bounds
    of dbeta and dgamma, from sum dy, sum |dy|, sum dy xhat, sum |dy xhat| and how far the mean's error moves
    xhat (``shift``; ``inv`` the bound's invstd); ``exact_dot``: the channels whose dot sum is exact."""
    r = _rounding_scale(model)
    u, sums, rel = st.u, st.sum_factors, st.rel_inv
    u_param = r * unit_roundoff(param_dtype(case.dtype))
    tiny_term = r * subnormal_step(compute_dtype(case.dtype))
    with ignoring("invalid", "over"):
        e_dbeta = sums["dy"] * sum_ady
        # The terms' own roundings stay worst-case in both models: they are not mean-zero. The float16
        # kernel rounds each x - mean to float16, and for all x in one binade that rounding is the same
        # fraction of the mean (float16[426580, 1], dy = 1: dgamma -54.2 where the exact value is 0,
        # beyond lambda u sqrt(sum t^2), within u sum|t|).
        # Every x - mean the kernel forms carries the mean's error (shift, in units of xhat), so the products and
        # the sum round terms of |dy| (|xhat| + shift): on a constant channel whose sum is inexact, xhat is 0 and
        # only the shift is left (float32[1000, 1] of 0.1, dy a ramp: dgamma 1e31 times a bound on |dy xhat|).
        sum_adx = sum_adx + shift * sum_ady
        per_product = np.where(exact_dot, 0.0, 3 * u)
        e_products = per_product * sum_adx
        e_dgamma = (
            shift * np.abs(dbeta)
            + rel * np.abs(dgamma)
            + e_products
            + sums["dot"] * sum_adx
            + case.reduction_length * tiny_term * np.maximum(1.0, inv)
        )
        out: Outputs = {"dbeta": e_dbeta + u_param * np.abs(dbeta)}
        out["dgamma"] = np.zeros(case.channels) if case.fix_gamma else e_dgamma + u_param * np.abs(dgamma)
    return e_dbeta, e_dgamma, out


def statistics_bounds(case: Case, st: Propagated, model: str, expected: Outputs) -> Outputs:
    """The bounds of the moving statistics, gamma, mean and invstd, and the forward's moving statistics
    (exact), from the statistics' errors ``st`` and the oracle's values ``expected``."""
    r = _rounding_scale(model)
    u = st.u
    u_param = r * unit_roundoff(param_dtype(case.dtype))
    acc_dtype = accumulation_dtype(case.dtype)
    ua = r * unit_roundoff(acc_dtype)
    out: Outputs = {}
    with ignoring("invalid", "over", "divide"):
        mom, rest = momentum_as_applied(case)
        old_mean = np.abs(case.moving_mean.astype(np.float64))
        old_var = np.abs(case.moving_var.astype(np.float64))
        if case.uses_batch_stats and case.reduction_length > 0:  # an empty batch leaves them alone: exact
            mean, var = st.mean, st.var
            # 1/invstd^2 - eps: the variance's own error, the roundings of invstd, its square, the reciprocal
            # and the subtraction, each of which may land among the subnormals.
            reach = np.abs(st.s2) + st.e_var
            e_recovered = st.e_var + st.e_eps + (2 * st.rel_round + 3 * u) * reach + 2 * r * subnormal_step(acc_dtype)
            # The update itself is AccReal arithmetic (float32 for float16 data), not the data type's.
            out["moving_mean"] = abs(rest) * st.e_mean + 3 * ua * (abs(mom) * old_mean + abs(rest) * np.abs(mean))
            out["moving_var"] = abs(rest) * e_recovered + 3 * ua * (abs(mom) * old_var + abs(rest) * np.abs(var))
            out["moving_mean"] += u_param * np.abs(expected["moving_mean"])
            out["moving_var"] += u_param * np.abs(expected["moving_var"])
        else:
            out["moving_mean"] = np.zeros(case.channels)
            out["moving_var"] = np.zeros(case.channels)

        out["gamma"] = np.zeros(case.channels)
        if case.output_mean_var:
            out["mean"] = st.e_mean + u_param * np.abs(expected["mean"])
            out["invstd"] = np.abs(expected["invstd"]) * (st.rel_inv + u_param)
        out["forward_moving_mean"] = np.zeros(case.channels)
        out["forward_moving_var"] = np.zeros(case.channels)
    return out


def finished_bounds(case: Case, out: Outputs, accumulated: Outputs, model: str) -> Outputs:
    """The model's bounds ``out`` of per-channel quantities made whole: the quantities ``accumulated`` (the
    oracle's, as requested) has, each inexact one widened by a subnormal step and, under 'add', by the rounding
    of prior + gradient, in the deterministic model times SAFETY (y's and dx's: formulas.finished)."""
    r = _rounding_scale(model)
    pdt = param_dtype(case.dtype)
    exact = (
        {"gamma"}
        | ({"dgamma"} if case.fix_gamma else set())
        | ({"moving_mean", "moving_var"} if not case.uses_batch_stats or case.reduction_length == 0 else set())
        | {"forward_moving_mean", "forward_moving_var"}
    )
    safety = _safety(model)
    result: Outputs = {}
    for q, b in out.items():
        assert q not in PER_ELEMENT, q
        if q not in accumulated:
            continue
        if q not in exact:
            b = b + r * subnormal_step(pdt)
        if q in _accumulated_quantities(case) and q not in exact:
            # One more rounding: prior + gradient, in the output dtype.
            with ignoring("invalid", "over"):
                b = b + r * unit_roundoff(pdt) * np.abs(accumulated[q])
        result[q] = safety * np.broadcast_to(b, quantity_shape(case, q))
    return result


def _accumulated_quantities(case: Case) -> set[str]:
    return {GRADIENT_OF[t] for t in GRAD_TARGETS if case.request(t) == "add"}

"""What MXNet 1.9.1 returns where it is known to deviate: one model per known deviation, element by element.

Knowing that MXNet deviates is not enough: a second bug inside the deviation's region would hide.  So
each ``known_deviations`` entry's ``predict`` is a function here returning ``Prediction``s: per
quantity, the elements covered, MXNet's values there (NaN and inf exactly) and how far from them it
may land.  The judgement holds MXNet to the oracle or the model there; an element that matches
neither "deviates, but not as recorded".

Most models are the operator computed as MXNet's CPU kernel computes it (``kernel_form``, in float64)
from the one intermediate the deviation changes; IEEE arithmetic in the kernel's order puts NaN and
inf where the kernel does.  A loss of accuracy (the sequential sums) is modelled as the oracle within
the deterministic bound, in the channels it reaches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

import numpy as np

from bnprops.model.case import Case, Outputs, param_dtype, quantity_shape
from bnprops.model.error_model import SAFETY, accumulation_dtype, sequential_sum_factor, unit_roundoff
from bnprops.model.evaluation import Evaluation, FusedEvaluation, evaluate
from bnprops.model.exactness import rows as channel_rows
from bnprops.model.oracle import eps_as_applied, momentum_as_applied, per_channel, requested, writing


class Context:
    """A case as the known deviations' models see it: the kernel that ran it, its evaluation, and the kernel
    emulations several models share (each computed once, when a model first reads it)."""

    def __init__(self, case: Case, kernel: str, evaluation: Evaluation) -> None:
        self.case, self.kernel, self.evaluation = case, kernel, evaluation

    @property
    def expected(self) -> Outputs:
        return self.evaluation.expected

    @property
    def bound(self) -> Outputs:
        return self.evaluation.bound

    @property
    def undetermined(self) -> np.ndarray:
        return self.evaluation.undetermined

    @functools.cached_property
    def finite_channels(self) -> np.ndarray:
        """Channels whose data are all finite (NaN and inf propagate by IEEE rules; nothing to explain there)."""
        case = self.case
        return np.asarray(np.isfinite(case.x).all(axis=case.reduce_axes))

    @functools.cached_property
    def centred_half(self) -> np.ndarray:
        """half(x - mean): the kernel's ``*in_data - mean`` (half_t minus AccReal rounds to half_t)."""
        case = self.case
        mean = self.evaluation.statistics[0].astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            return (case.x.astype(np.float32) - per_channel(case, mean).astype(np.float32)).astype(np.float16)

    @functools.cached_property
    def float16_dotp(self) -> np.ndarray:
        """float16_dotp's value for this case (the float16 kernel and the projection both read it)."""
        return float16_dotp(self)

    @functools.cached_property
    def float16_kernel(self) -> Outputs:
        """The native float16 kernel as the float16 deviations together describe it: the kernel form with invstd
        from var + eps rounded to float16, and dotp the sum of the products rounded to float16 (a channel may
        show both: dotp = inf times invstd = 0 is NaN)."""
        return kernel_form(self, _invstd(float16_normaliser(self)[1]), dotp=self.float16_dotp)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What a known deviation says MXNet returns in one quantity of one case."""

    quantity: str
    #: The elements it covers (bool, the quantity's shape).
    where: np.ndarray
    #: MXNet's values there (float64, the quantity's shape; NaN and inf are predicted exactly); None: the
    #: oracle's own (read only where needed: on large cases the fused path may never write them).
    values: np.ndarray | None
    #: How far MXNet may land from ``values`` (the quantity's shape); None: the oracle's deterministic bound.
    tolerance: np.ndarray | None
    #: Must MXNet show it, wherever ``values`` and the oracle differ beyond the oracle's bound?
    certain: bool = False
    #: May the values there break an invariant (judging.invariants): NaN from finite data,
    #: a negative variance?
    breaks_invariants: bool = False

    @property
    def is_oracle(self) -> bool:
        """Is the model the oracle within its deterministic bound (so that MXNet matches it wherever the oracle's
        own comparison finds no value beyond that bound)?"""
        return self.values is None and self.tolerance is None

    def model(self, ev: Evaluation) -> tuple[np.ndarray, np.ndarray]:
        """The predicted values and tolerance as arrays (``ev``: the case's evaluation)."""
        values = ev.expected[self.quantity] if self.values is None else self.values
        tolerance = ev.bound[self.quantity] if self.tolerance is None else self.tolerance
        return values, tolerance


def _elements(ctx: Context, quantity: str, channels: np.ndarray) -> np.ndarray:
    """A per-channel mask as a mask of the quantity's elements."""
    shape = quantity_shape(ctx.case, quantity)
    if shape == ctx.case.shape:
        return np.broadcast_to(per_channel(ctx.case, channels).astype(bool), shape)
    return np.broadcast_to(np.asarray(channels, dtype=bool), shape)


def _predict(
    ctx: Context,
    quantities: Iterable[str],
    channels: np.ndarray,
    values: Outputs,
    tolerance: Outputs | None = None,
    *,
    certain: bool,
    breaks_invariants: bool = False,
) -> list[Prediction]:
    """One prediction per quantity the call produces, over the given channels (the oracle's own values and
    bounds are passed on as None: read only where needed)."""
    if not np.asarray(channels).any():
        return []
    return [
        Prediction(
            q,
            _elements(ctx, q, channels),
            None if values is ctx.expected else values[q],
            None if tolerance is None or tolerance is ctx.bound else tolerance[q],
            certain,
            breaks_invariants,
        )
        for q in quantities
        if q in ctx.expected
    ]


def gradients(case: Case) -> set[str]:
    """The quantities a wrong invstd spoils (dgamma is exactly 0 under fix_gamma whatever happens)."""
    return {"y", "dx"} | (set() if case.fix_gamma else {"dgamma"}) | ({"invstd"} if case.output_mean_var else set())


def zero_variance(ctx: Context) -> np.ndarray:
    return np.asarray(ctx.evaluation.statistics[1] == 0)


def kernel_form(ctx: Context, invstd: np.ndarray, *, dotp: np.ndarray | None = None) -> Outputs:
    """The outputs in float64, in the order of MXNet's CPU kernel (batch_norm.cc), from a given invstd.

    ``y = ((x - mean) invstd) g + beta``; ``dgamma = dotp invstd`` with ``dotp = sum (x - mean) dy``
    (or the one given); ``dx = (dy - dbeta/M - (x - mean) dotp invstd^2 / M) invstd g`` in training,
    ``dy invstd g`` otherwise; ``moving_var = m old + (1 - m)(1/invstd^2 - eps)``.  With
    ``invstd = 1/sqrt(var + eps)`` this is the oracle up to rounding; with 0 or inf its NaNs and infs
    fall where the kernel's do.
    """
    case = ctx.case
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    red, m = case.reduce_axes, case.reduction_length
    mean = ctx.evaluation.statistics[0]
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    out = dict(ctx.evaluation.fresh)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        centred = x - per_channel(case, mean)
        dotp = (centred * dy).sum(axis=red) if dotp is None else dotp
        dbeta = dy.sum(axis=red)
        out["y"] = centred * per_channel(case, invstd) * per_channel(case, g) + per_channel(case, case.beta)
        out["dgamma"] = np.zeros(case.channels) if case.fix_gamma else dotp * invstd
        scale = per_channel(case, invstd * g)
        if case.uses_batch_stats:
            k = per_channel(case, dotp * invstd * invstd / m)
            out["dx"] = (dy - per_channel(case, dbeta / m) - centred * k) * scale
            mom, rest = momentum_as_applied(case)
            recovered = 1.0 / (invstd * invstd) - eps_as_applied(case)
            out["moving_var"] = mom * case.moving_var.astype(np.float64) + rest * recovered
        else:
            out["dx"] = dy * scale
        if case.output_mean_var:
            out["invstd"] = np.asarray(invstd, dtype=np.float64)
    return requested(case, out)


def _invstd(normaliser: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(1.0 / np.sqrt(normaliser))


def _model_bounds(ctx: Context, values: Outputs) -> Outputs:
    """The error model's bounds around a model's outputs (the rest of the computation is the oracle's)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return {q: np.nan_to_num(b, nan=0.0) for q, b in ctx.evaluation.bounds_of(values).items()}


# --- native-zero-variance-eps0 ------------------------------------------------------------------


def native_zero_variance_eps0(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if ctx.kernel != "native" or not case.uses_batch_stats or case.eps != 0:
        return []
    zero = zero_variance(ctx) & ctx.finite_channels
    # The guard sets invstd = 0 where the kernel's own sum of squares is exactly 0: certain for one value
    # per channel; for more equal values their rounded mean may differ from them (then the oracle's value).
    values = kernel_form(ctx, np.zeros(case.channels))
    return _predict(ctx, ["moving_var"], zero, values, certain=case.reduction_length == 1, breaks_invariants=True)


# --- float16: var + eps rounded to float16 ------------------------------------------------------


def float16_normaliser(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """var + eps, exactly and as the kernel forms it: half(float(var) + float(half(eps))) (DType(eps) is half)."""
    eps = eps_as_applied(ctx.case)
    var = ctx.evaluation.statistics[1]
    with np.errstate(over="ignore", invalid="ignore"):
        half_eps = np.float32(np.float16(np.float32(eps)))
        rounded = (var.astype(np.float32) + half_eps).astype(np.float16).astype(np.float64)
    return var + eps, rounded


def _float16_normaliser_model(ctx: Context, hit: np.ndarray, *, certain: bool) -> list[Prediction]:
    case = ctx.case
    if not hit.any():
        return []
    values = ctx.float16_kernel
    quantities = gradients(case) | ({"moving_var"} if case.uses_batch_stats else set())
    return _predict(ctx, quantities, hit, values, _model_bounds(ctx, values), certain=certain, breaks_invariants=True)


def float16_normaliser_out_of_range(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native":
        return []
    _, rounded = float16_normaliser(ctx)
    guarded = zero_variance(ctx) & (case.eps == 0)  # native-zero-variance-eps0's territory
    hit = (np.isinf(rounded) | (rounded == 0)) & ~ctx.undetermined & ~guarded & ctx.finite_channels
    return _float16_normaliser_model(ctx, hit, certain=True)


def float16_normaliser_subnormal(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native":
        return []
    exact, rounded = float16_normaliser(ctx)
    f16 = np.finfo(np.float16)
    with np.errstate(invalid="ignore"):
        coarse = (rounded > 0) & (rounded < float(f16.tiny)) & (np.abs(rounded - exact) > exact * float(f16.eps) / 2)
    # Whether the error crosses the bound depends on where in the ulp var + eps falls: may, not must.
    return _float16_normaliser_model(ctx, coarse & ~ctx.undetermined & ctx.finite_channels, certain=False)


# --- float16: products and normalised values formed in float16 -----------------------------------


def float16_gradient_product_overflow(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native":
        return []
    with np.errstate(over="ignore", invalid="ignore"):
        overflow = ~np.isfinite(ctx.centred_half * case.dy).all(axis=case.reduce_axes)
    hit = overflow & ~ctx.undetermined & ctx.finite_channels
    if not hit.any():
        return []
    values = ctx.float16_kernel
    quantities = (set() if case.fix_gamma else {"dgamma"}) | ({"dx"} if case.uses_batch_stats else set())
    return _predict(ctx, quantities, hit, values, certain=True, breaks_invariants=True)


def float16_normalised_value_overflow(ctx: Context) -> list[Prediction]:
    """y = half(half(half(x - mean) invstd) g) + beta: where a float16 intermediate overflows, y is +-inf (NaN
    where g is 0) although the exact y may fit. The backward does not form xhat (batch_norm.cc)."""
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native":
        return []
    invstd = _invstd(float16_normaliser(ctx)[1]).astype(np.float32)
    g = np.ones(case.channels, np.float32) if case.fix_gamma else case.gamma.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        xhat = (ctx.centred_half.astype(np.float32) * per_channel(case, invstd).astype(np.float32)).astype(np.float16)
        scaled = (xhat.astype(np.float32) * per_channel(case, g).astype(np.float32)).astype(np.float16)
        y = (scaled.astype(np.float32) + per_channel(case, case.beta).astype(np.float32)).astype(np.float16)
        overflow = (np.isinf(xhat) | np.isinf(scaled)) & np.isfinite(case.x)
    keep = ~per_channel(case, ctx.undetermined).astype(bool)
    where = overflow & keep
    if not where.any():
        return []
    return [Prediction("y", where, y.astype(np.float64), np.zeros(case.shape), certain=True, breaks_invariants=True)]


def float16_projection(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """The training formula for dx as the native float16 kernel forms it (batch_norm.cc, half_t arithmetic):
    ``t = half(half(x - mean) k)`` with ``k = dotp invstd^2 / M`` in float32, then
    ``dx = half(half(half(dy - mean(dy)) - t) invstd g)``. Where ``t``, ``dy - mean(dy)`` or their difference
    overflows float16, dx is +-inf or NaN although the exact dx may be small. Returns (where, dx in float64).

    dotp is the kernel's own (float16_dotp), the sum of the products each rounded to float16: whether ``t``
    overflows turns on its last bits (found by the stacked property: float16 t = -65651 from the exact dotp 393.087
    overflowed where the kernel's 391.875 gave -65449 and a finite dx, -54912)."""
    case = ctx.case
    invstd = _invstd(float16_normaliser(ctx)[1]).astype(np.float32)
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    m = case.reduction_length
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        dotp = ctx.float16_dotp
        k = (dotp * invstd.astype(np.float64) ** 2 / m).astype(np.float32)
        t = (ctx.centred_half.astype(np.float32) * per_channel(case, k).astype(np.float32)).astype(np.float16)
        grad_mean = (case.dy.astype(np.float64).sum(axis=case.reduce_axes) / m).astype(np.float32)
        a = (case.dy.astype(np.float32) - per_channel(case, grad_mean).astype(np.float32)).astype(np.float16)
        b = (a.astype(np.float32) - t.astype(np.float32)).astype(np.float16)
        iw = (invstd.astype(np.float64) * g).astype(np.float32)
        dx = (b.astype(np.float32) * per_channel(case, iw).astype(np.float32)).astype(np.float16)
        overflow = (np.isinf(t) | np.isinf(a) | ~np.isfinite(b)) & np.isfinite(case.x) & np.isfinite(case.dy)
    return np.asarray(overflow), dx.astype(np.float64)


def float16_dotp(ctx: Context) -> np.ndarray:
    """``dotp = sum (x - mean) dy`` as the float16 kernel forms it: each product ``half(x - mean) * dy`` rounded to
    float16 (half_t times half_t rounds to half_t), summed in AccReal (float32; far below a float16 ulp of the
    products, so summed here in float64). +-inf where a product overflowed, NaN where both signs did.

    Not the exact dotp: where the exact one nearly cancels, the rounded products' sum can differ in sign (x of a
    constant-ish channel: exact -5.6e-17, kernel +1.2e-7), and with invstd = inf dgamma is inf of the kernel's sign
    (found by the entry-point property, nd, float16, eps = 0)."""

    case = ctx.case
    with np.errstate(over="ignore", invalid="ignore"):
        products = ctx.centred_half * case.dy
        return np.asarray(products.astype(np.float64).sum(axis=case.reduce_axes))


def float16_dx_projection_overflow(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.dtype != "float16" or ctx.kernel != "native" or not case.uses_batch_stats or not case.x.size:
        return []
    overflow, dx = float16_projection(ctx)
    where = overflow & ~per_channel(case, ctx.undetermined).astype(bool)
    if "dx" not in ctx.expected or not where.any():
        return []
    prior = case.prior("data")
    values = dx if prior is None else prior.astype(np.float64) + dx
    return [Prediction("dx", where, values, np.zeros(case.shape), certain=True, breaks_invariants=True)]


# --- oneDNN ---------------------------------------------------------------------------------------


def onednn_subnormal_eps_flushed(ctx: Context) -> list[Prediction]:
    case = ctx.case
    tiny = float(np.finfo(np.float32).tiny)
    if ctx.kernel != "onednn" or not case.uses_batch_stats or not 0 < case.eps < tiny:
        return []
    # The backward's invstd is 1/sqrt(var + 0). Channels with several equal values are indeterminate
    # (their float32 variance need not be 0); what is left are exact zero variances, M = 1.
    hit = zero_variance(ctx) & ~ctx.undetermined & ctx.finite_channels
    values = kernel_form(ctx, _invstd(ctx.evaluation.statistics[1]))
    quantities = {"dx"} | (set() if case.fix_gamma else {"dgamma"})
    return _predict(ctx, quantities, hit, values, certain=True, breaks_invariants=True)


def onednn_fix_gamma_add_wipes_dgamma(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if ctx.kernel != "onednn" or not case.fix_gamma or case.request("gamma") != "add":
        return []
    # The whole gradient buffer is overwritten with 0; visible where the prior was not 0.
    channels = ~ctx.undetermined
    zero = {"dgamma": np.zeros(case.channels)}
    return _predict(ctx, ["dgamma"], channels, zero, zero, certain=True)


# --- sequential sums --------------------------------------------------------------------------------


def _drifting(rows: np.ndarray, acc: str, channels: int) -> np.ndarray:
    """Per row: does the sequential sum in ``acc`` drift from the exact sum beyond the probabilistic bound?"""
    with np.errstate(over="ignore", invalid="ignore"):
        # Against the sum in extended precision: a float64 sum of float64 data errs as much as the drift.
        sequential = np.cumsum(rows.astype(acc), axis=1, dtype=acc)[:, -1].astype(np.longdouble)
        drift = np.abs(sequential - rows.astype(np.longdouble).sum(axis=1)).astype(np.float64)
        allowed = sequential_sum_factor(rows, acc, channels=channels) * np.abs(rows).sum(axis=1)
        return np.asarray(drift > allowed)


def sequential_sum_drift(ctx: Context) -> list[Prediction]:
    """Each sum that drifts (batch_norm.cc: ``mean += x``, ``var += (x - mean)^2``, ``sumGradOut += dy``,
    ``dotp += (x - mean) * dy``, in AccReal, element after element), in the channels where it does, reaches
    the quantities downstream of it; there MXNet is held to the deterministic bound only."""
    case = ctx.case
    m = case.reduction_length
    if ctx.kernel not in ("native", "onednn") or m < 2 or not case.x.size:
        return []
    acc = accumulation_dtype(case.dtype)
    finite = ctx.finite_channels

    def rows(values: np.ndarray) -> np.ndarray:
        return channel_rows(values.astype(np.float64), case.channel_axis)

    def drifts(terms: np.ndarray) -> np.ndarray:
        return np.asarray(_drifting(terms, acc, case.channels) & finite)

    def terms() -> dict[str, np.ndarray]:
        if isinstance(ctx.evaluation, FusedEvaluation):  # the same tests from the fused engine's sums
            return {name: np.asarray(d & finite) for name, d in ctx.evaluation.drifts.items()}
        mean = ctx.evaluation.statistics[0]
        with np.errstate(over="ignore", invalid="ignore"):
            centred = rows(case.x.astype(np.float64) - per_channel(case, mean))
            dot = rows((case.x.astype(np.float64) - per_channel(case, mean)) * case.dy.astype(np.float64))
        found = {"dy": drifts(rows(case.dy)), "dot": drifts(dot)}
        if case.uses_batch_stats:
            found.update(x=drifts(rows(case.x)), c2=drifts(centred * centred))
        return found

    drifting = terms()
    reach: dict[str, np.ndarray] = {}

    def spoil(quantities: Iterable[str], channels: np.ndarray) -> None:
        for q in quantities:
            reach[q] = reach.get(q, np.zeros(case.channels, dtype=bool)) | channels

    if case.uses_batch_stats:
        spoil(gradients(case) | {"mean", "invstd", "moving_mean", "moving_var"}, drifting["x"])
        # var += (x - mean)^2: at large M the small squares are lost whole (stagnation), always downward.
        spoil(gradients(case) | {"invstd", "moving_var"}, drifting["c2"])
    spoil({"dbeta", "dx"}, drifting["dy"])
    spoil({"dx"} | (set() if case.fix_gamma else {"dgamma"}), drifting["dot"])
    return [p for q, channels in reach.items() for p in _predict(ctx, [q], channels, ctx.expected, certain=False)]


# --- the variance recovered from invstd -----------------------------------------------------------


def recovery_reach(case: Case, var: np.ndarray) -> np.ndarray:
    """How far ``1/invstd^2 - eps`` may land from ``var``: invstd, its square, 1/that and - eps each round; the
    forward added DType(eps), the backward subtracts the double eps; float16 data round var + eps itself."""
    acc = accumulation_dtype(case.dtype)
    u, tiny = unit_roundoff(acc), float(np.finfo(acc).smallest_subnormal)
    eps = eps_as_applied(case)
    with np.errstate(invalid="ignore", over="ignore"):
        dtype_eps = abs(float(np.float64(eps).astype(case.dtype)) - eps)
        return np.asarray((8 * u + 2 * unit_roundoff(case.dtype)) * (var + eps) + 4 * tiny + dtype_eps)


def recovered_variance_negative(ctx: Context) -> list[Prediction]:
    """Where ``m old + (1 - m)(1/invstd^2 - eps)`` can come out below 0: the batch variance is within the
    rounding of ``1/invstd^2 - eps`` of 0 and ``m old`` is no larger than that rounding. The value stays
    within the bound of the oracle's; only its sign is the deviation."""
    case = ctx.case
    if ctx.kernel not in ("native", "onednn") or not case.uses_batch_stats or not case.x.size:
        return []
    var = ctx.evaluation.statistics[1]
    mom, rest = momentum_as_applied(case)
    tiny = float(np.finfo(accumulation_dtype(case.dtype)).smallest_subnormal)
    with np.errstate(invalid="ignore", over="ignore"):
        reach = recovery_reach(case, var)
        possible = (var < reach) & (mom * case.moving_var.astype(np.float64) <= rest * reach + tiny)
    channels = possible & ctx.finite_channels
    return _predict(ctx, ["moving_var"], channels, ctx.expected, certain=False, breaks_invariants=True)


# --- the executor's backward after an inference forward -------------------------------------------


def sym_inference_dx(case: Case, stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """What the executor's backward gives for dx after forward(is_train=False): the training formula on the
    moving statistics ``stats``, ``g invstd (dy - mean(dy) - xhat mean(dy xhat))`` (plus the prior under 'add')."""
    mean, var = stats
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    dy = case.dy.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        invstd = 1.0 / np.sqrt(var + eps_as_applied(case))
        xhat = (case.x.astype(np.float64) - per_channel(case, mean)) * per_channel(case, invstd)
        red = case.reduce_axes
        dx = per_channel(case, g * invstd) * (
            dy - dy.mean(axis=red, keepdims=True) - xhat * (dy * xhat).mean(axis=red, keepdims=True)
        )
    prior = case.prior("data")
    return np.asarray(dx if prior is None else prior.astype(np.float64) + dx)


def sym_inference_backward_trains(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.is_train or case.use_global_stats:
        return []
    everything = np.ones(case.channels, dtype=bool)
    # The training backward also "updates" the moving statistics with themselves, m s + (1 - m) s, the
    # variance recovered from invstd: a few ulps.
    rest = momentum_as_applied(case)[1]
    ua, up = unit_roundoff(accumulation_dtype(case.dtype)), unit_roundoff(param_dtype(case.dtype))
    old_mean, old_var = np.abs(ctx.expected["moving_mean"]), np.abs(ctx.expected["moving_var"])
    # m s and (1 - m) s each round to a multiple of the smallest subnormal too: a subnormal statistic moves by
    # up to two of them (found by `bnprops versions` on 1.5/1.6's native kernel: float32 2.0319e-43 -> 2.0179e-43).
    tiny = 2 * float(np.finfo(param_dtype(case.dtype)).smallest_subnormal)
    drift = {
        "moving_mean": (3 * ua + up) * old_mean + tiny,
        "moving_var": abs(rest) * recovery_reach(case, old_var) + (3 * ua + up) * old_var + tiny,
    }
    # Recovered from invstd, a zero moving variance may come back a few ulps below 0 (recovery_reach).
    found = _predict(
        ctx, ["moving_mean", "moving_var"], everything, ctx.expected, drift, certain=False, breaks_invariants=True
    )
    if "dx" not in ctx.expected:
        return found
    # Bounded as the training formula on the moving statistics, for the call's gradients alone.
    fresh = writing(case)
    written = ctx.evaluation if fresh is case else evaluate(fresh, "reference")
    stats = ctx.evaluation.statistics
    model = {**written.expected, "dx": sym_inference_dx(fresh, stats)}
    with np.errstate(invalid="ignore", over="ignore"):
        tolerance = written.bounds_of(model, training_backward=True)["dx"]
        dx = sym_inference_dx(case, stats)
        if case.prior("data") is not None:
            # prior + dx rounds once in MXNet and once in the model (as much as MXNet's in float64): SAFETY
            # times one rounding, as the main bound carries it.
            tolerance = tolerance + SAFETY * unit_roundoff(case.dtype) * np.abs(dx)
    values = {"dx": dx}
    if case.dtype == "float16" and ctx.kernel == "native":
        # The float16 kernel forms that formula in half_t: where its projection overflows, so does dx.
        overflow, dx16 = float16_projection(ctx)
        prior = case.prior("data")
        values["dx"] = np.where(overflow, dx16 if prior is None else prior.astype(np.float64) + dx16, values["dx"])
        tolerance = np.where(overflow, 0.0, tolerance)
    # Another formula: where its value overflows the data type, inf is MXNet's right answer to it.
    return found + _predict(ctx, ["dx"], everything, values, {"dx": tolerance}, certain=True, breaks_invariants=True)


# --- an empty batch -------------------------------------------------------------------------------


def empty_batch_nan(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if case.x.size or not case.uses_batch_stats:
        return []
    learnable = not case.fix_gamma and case.request("gamma") != "null"
    quantities = {"moving_mean", "moving_var"} | ({"dgamma"} if learnable else set())
    nan = {q: np.full(case.channels, np.nan) for q in quantities}
    zero = {q: np.zeros(case.channels) for q in quantities}
    everything = np.ones(case.channels, dtype=bool)
    return _predict(ctx, quantities, everything, nan, zero, certain=True, breaks_invariants=True)

"""What the deviations' models share: how a model speaks (Prediction, Context) and how it computes.

Each deviation's ``predict`` (in its module of the deviations package) returns ``Prediction``s: per
quantity, the elements the deviation covers, the values MXNet returns there (NaN and inf exactly) and
how far from those values MXNet may land.  Most models are the operator computed as MXNet's CPU kernel
computes it (``kernel_form``, the order of batch_norm.cc in float64) from the one intermediate the
deviation changes: invstd from a float16-rounded var + eps, from an eps flushed to 0, or the guard's 0;
the sum (x - mean) dy with float16 products.  IEEE arithmetic in the kernel's order puts NaN and inf
where the kernel does.  The float16 emulations here are those several deviations build on.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, Case, Outputs, quantity_shape
from bnprops.model.error_model import SAFETY, accumulation_dtype, unit_roundoff
from bnprops.model.evaluation import Evaluation, evaluate
from bnprops.model.exactness import channel_sum
from bnprops.model.oracle import eps_as_applied, momentum_as_applied, per_channel, requested, writing


class Context:
    """A case as the deviations' models see it: the kernel that ran it, its evaluation, and the kernel
    emulations several models share (each computed once, when a model first reads it)."""

    def __init__(
        self, case: Case, kernel: str, evaluation: Evaluation, *, float16_rounding: str = "to nearest"
    ) -> None:
        self.case, self.kernel, self.evaluation = case, kernel, evaluation
        #: How the MXNet that ran the case converts float32 to float16 (mxversion.float16_conversion).
        self.float16_rounding = float16_rounding

    @property
    def expected(self) -> Outputs:
        return self.evaluation.expected

    @property
    def bound(self) -> Outputs:
        return self.evaluation.bound

    @property
    def undetermined(self) -> np.ndarray:
        return self.evaluation.undetermined

    @property
    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return self.evaluation.statistics

    @functools.cached_property
    def finite_channels(self) -> np.ndarray:
        """Channels whose data are all finite (NaN and inf propagate by IEEE rules; nothing to explain there)."""
        case = self.case
        return np.asarray(np.isfinite(case.x).all(axis=case.reduce_axes))

    @functools.cached_property
    def centred_half(self) -> np.ndarray:
        """half(x - mean): the kernel's ``*in_data - mean`` (half_t minus AccReal rounds to half_t); every float16
        model starts from it."""
        case = self.case
        mean = self.statistics[0].astype(np.float32)
        with ignoring("over", "invalid"):
            return (case.x.astype(np.float32) - per_channel(case, mean).astype(np.float32)).astype(np.float16)

    @functools.cached_property
    def float16_dotp(self) -> np.ndarray:
        """float16_dotp's value (the float16 kernel and the projection both read it)."""
        return float16_dotp(self)

    @functools.cached_property
    def float16_kernel(self) -> Outputs:
        """The native float16 kernel as the float16 deviations together describe it: the kernel form with invstd
        from var + eps rounded to float16, and dotp the sum of the products rounded to float16 (a channel may
        show both: dotp = inf times invstd = 0 is NaN)."""
        return kernel_form(self, invstd_of(float16_normaliser(self)[1]), dotp=self.float16_dotp)


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


def predict_over(
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


def added_gradients(ctx: Context) -> Iterator[tuple[str, str, np.ndarray]]:
    """(target, quantity, prior in float64) for each gradient this call requests with 'add' and produces."""
    for target in GRAD_TARGETS:
        quantity = GRADIENT_OF[target]
        if ctx.case.request(target) == "add" and quantity in ctx.expected:
            yield target, quantity, np.asarray(ctx.case.prior(target), dtype=np.float64)


def zero_variance(ctx: Context) -> np.ndarray:
    return np.asarray(ctx.statistics[1] == 0)


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
    m = case.reduction_length
    mean = ctx.statistics[0]
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    out = dict(ctx.evaluation.fresh)
    with ignoring("divide", "invalid", "over"):
        centred = x - per_channel(case, mean)
        dotp = channel_sum(centred * dy, case.channel_axis) if dotp is None else dotp
        dbeta = channel_sum(dy, case.channel_axis)
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


def invstd_of(normaliser: np.ndarray) -> np.ndarray:
    with ignoring("divide", "invalid"):
        return np.asarray(1.0 / np.sqrt(normaliser))


def model_bounds(ctx: Context, values: Outputs) -> Outputs:
    """The error model's bounds around a model's outputs (the rest of the computation is the oracle's)."""
    with ignoring("invalid", "over"):
        return {q: np.nan_to_num(b, nan=0.0) for q, b in ctx.evaluation.bounds_of(values).items()}


def float16_toward_zero(values: np.ndarray) -> np.ndarray:
    """float32 to float16 as mshadow's software half_t converts (a build without F16C): the mantissa truncated,
    anything above 65504 in magnitude inf, NaN kept. Checked bit for bit against mxnet-mkl 1.3.1 on 20,000 values
    over 10^-9 .. 10^6 and the edges (65504, 65505, 65520, 2^-24, 2^-25)."""
    a = np.asarray(values, dtype=np.float32)
    with ignoring("over", "invalid"):
        nearest = a.astype(np.float16)
        up = np.abs(nearest.astype(np.float32)) > np.abs(a)
        out = np.where(up, np.nextafter(nearest, np.float16(0)), nearest)
        return np.where(np.abs(a) > 65504, np.copysign(np.float16(np.inf), a), out).astype(np.float16)


def float16_normaliser(ctx: Context, *, truncating: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """var + eps, exactly and as the kernel forms it: half(float(var) + float(half(eps))) (DType(eps) is half);
    ``truncating``: with a build's float16_toward_zero conversion instead of rounding to nearest."""
    eps = eps_as_applied(ctx.case)
    var = ctx.statistics[1]
    half = float16_toward_zero if truncating else (lambda a: np.asarray(a).astype(np.float16))
    with ignoring("over", "invalid"):
        half_eps = np.float32(half(np.asarray(eps, dtype=np.float32)))
        rounded = half(var.astype(np.float32) + half_eps).astype(np.float64)
    return var + eps, rounded


#: float16's largest finite number, and room for the roundings between exact magnitudes and the float16 and float32
#: values formed from them (each within a few 2^-11 relatively).
_HALF_MAX, _ROOM = float(np.finfo(np.float16).max), 1.01


def _largest(values: np.ndarray) -> float:
    """The largest magnitude (inf or NaN where some value is not finite; 0 for no values)."""
    return float(np.max(np.abs(values))) if values.size else 0.0


def float16_products_fit(ctx: Context) -> bool:
    """Surely no product half(x - mean) dy (float16_dotp's) overflows float16: the largest magnitudes' product,
    with room for rounding, is below float16's largest number. False where some value is not finite. A model that
    looks for such overflow finds none where this holds, so it need not form the products."""
    return _largest(ctx.centred_half) * _largest(ctx.case.dy) * _ROOM < _HALF_MAX


def float16_normalised_fits(ctx: Context, invstd: np.ndarray, g: np.ndarray) -> bool:
    """Surely neither half(half(x - mean) invstd) nor that times g overflows float16 (as float16_products_fit)."""
    largest = _largest(ctx.centred_half) * _largest(invstd) * max(1.0, _largest(g))
    return largest * _ROOM * _ROOM < _HALF_MAX


def float16_projection_fits(ctx: Context) -> bool:
    """Surely no term of float16_projection overflows, so that it predicts no overflow (as float16_products_fit):
    with c, d, i the largest |half(x - mean)|, |dy|, invstd, each product of dotp fits (c d), |dotp| <= M c d, so
    |t| <= c k <= c^2 d i^2, |dy - mean(dy)| <= 2 d, and their difference within the sum of both."""
    invstd = invstd_of(float16_normaliser(ctx)[1]).astype(np.float32)
    c, d, i = _largest(ctx.centred_half), _largest(ctx.case.dy), _largest(invstd)
    return c * d * _ROOM < _HALF_MAX and (2 * d + c * c * d * i * i) * _ROOM**3 < _HALF_MAX


def float16_projection(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """The training formula for dx as the native float16 kernel forms it (batch_norm.cc, half_t arithmetic):
    ``t = half(half(x - mean) k)`` with ``k = dotp invstd^2 / M`` in float32, then
    ``dx = half(half(half(dy - mean(dy)) - t) invstd g)``. Where ``t``, ``dy - mean(dy)`` or their difference
    overflows float16, dx is +-inf or NaN although the exact dx may be small. Returns (where, dx in float64).

    dotp is the kernel's own (float16_dotp), the sum of the products each rounded to float16: whether ``t``
    overflows turns on its last bits (found by the stacked property: float16 t = -65651 from the exact dotp 393.087
    overflowed where the kernel's 391.875 gave -65449 and a finite dx, -54912)."""
    case = ctx.case
    invstd = invstd_of(float16_normaliser(ctx)[1]).astype(np.float32)
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    m = case.reduction_length
    with ignoring("over", "invalid", "divide"):
        dotp = ctx.float16_dotp
        k = (dotp * invstd.astype(np.float64) ** 2 / m).astype(np.float32)
        t = (ctx.centred_half.astype(np.float32) * per_channel(case, k).astype(np.float32)).astype(np.float16)
        grad_mean = (channel_sum(case.dy.astype(np.float64), case.channel_axis) / m).astype(np.float32)
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
    with ignoring("over", "invalid"):
        products = ctx.centred_half * case.dy
        return np.asarray(channel_sum(products.astype(np.float64), case.channel_axis))


def recovery_reach(case: Case, var: np.ndarray) -> np.ndarray:
    """How far ``1/invstd^2 - eps`` may land from ``var``: invstd, its square, 1/that and - eps each round; the
    forward added DType(eps), the backward subtracts the double eps; float16 data round var + eps itself."""
    acc = accumulation_dtype(case.dtype)
    u, tiny = unit_roundoff(acc), float(np.finfo(acc).smallest_subnormal)
    eps = eps_as_applied(case)
    with ignoring("invalid", "over"):
        dtype_eps = abs(float(np.float64(eps).astype(case.dtype)) - eps)
        return np.asarray((8 * u + 2 * unit_roundoff(case.dtype)) * (var + eps) + 4 * tiny + dtype_eps)


def training_formula_dx(
    ctx: Context, dx_of: Callable[[Case, tuple[np.ndarray, np.ndarray]], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """dx as the executor's backward forms it after an inference forward, a training formula on the moving
    statistics (``dx_of(case, statistics)``), and its bound: the error model's for that formula and the call's
    gradients alone, plus SAFETY times one rounding of prior + dx under 'add' (MXNet rounds it once, the model
    once more in float64)."""
    case = ctx.case
    fresh = writing(case)
    written = ctx.evaluation if fresh is case else evaluate(fresh, "reference")
    model = {**written.expected, "dx": dx_of(fresh, ctx.statistics)}
    with ignoring("invalid", "over"):
        tolerance = written.bounds_of(model, training_backward=True)["dx"]
        dx = model["dx"] if fresh is case else dx_of(case, ctx.statistics)
        if case.prior("data") is not None:
            tolerance = tolerance + SAFETY * unit_roundoff(case.dtype) * np.abs(dx)
    return dx, tolerance

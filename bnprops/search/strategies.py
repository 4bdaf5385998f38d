"""Hypothesis strategies for BatchNorm cases that reach the whole operator.

Shapes, axes, dtypes, eps, momentum, flags and value regimes are drawn by Hypothesis (so they
shrink); array contents come from a drawn seed through numpy, which is far cheaper than
``hypothesis.extra.numpy.arrays`` for whole arrays and still reproducible from the case's JSON.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from hypothesis import strategies as st

from bnprops.base.selection import validate_choices
from bnprops.model.case import DEFAULT_EPS, DEFAULT_MOMENTUM, DTYPES, GRAD_REQS, WRITE_ALL, Case, param_dtype

#: How the data of a case is spread, each a numerical stress of its own.  "exact": data, heads,
#: parameters and eps chosen so that every per-channel sum the operator forms is exact in the working
#: precision and var + eps is a power of 4 (as oneDNN's benchdnn fills BatchNorm's data), so a correct
#: kernel lands within a few ulps of the oracle at any size.
VALUE_REGIMES = ("ordinary", "offset", "tiny_spread", "constant", "large", "nonfinite", "exact")
#: How big the reductions are: "small" (up to 240 elements in all), "large" (shapes of real layers,
#: 10^3 to 10^6 elements per channel), or "all" (large one case in LARGE_SHARE).
SIZES = ("small", "large", "all")
LARGE_SHARE = 16
#: Cases larger than this are not stacked with siblings (case_groups).
STACKED_ELEMENTS = 10_000
#: At most this many elements in a large case (its float64 oracle holds a few copies of it).
MAX_LARGE_ELEMENTS = 2_000_000
#: How the head gradient dy is drawn.
HEAD_REGIMES = ("ones", "random", "scaled")
#: The operator takes any eps (it is a double with no lower bound on CPU); 0 is the smallest
#: meaningful one, then float32's smallest subnormal, then tiny through large values.
SMALLEST_SUBNORMAL_F32 = float(np.finfo(np.float32).smallest_subnormal)

MIN_NDIM, MAX_NDIM = 1, 5


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(10 ** rng.uniform(lo, hi))


def _data(rng: np.random.Generator, regime: str, shape: tuple[int, ...], axis: int, dtype: str) -> np.ndarray:
    """x for one case: each channel gets its own offset and spread within the regime."""
    channels = shape[axis]
    half = dtype == "float16"  # keep float16 data representable and its squares finite in float32
    view = [1] * len(shape)
    view[axis] = channels
    if regime == "ordinary":
        offset = rng.uniform(-1, 1, channels)
        spread = 10 ** rng.uniform(-0.5, 0.5, channels)
    elif regime == "offset":
        spread = 10 ** rng.uniform(-1, 1, channels)
        offset = rng.choice([-1, 1], channels) * spread * 10 ** rng.uniform(1, 2.5 if half else 4, channels)
    elif regime == "tiny_spread":
        offset = rng.uniform(-1, 1, channels)
        spread = 10 ** rng.uniform(-3 if half else -7, -2, channels)
    elif regime == "constant":
        offset = rng.normal(0, 2, channels)
        spread = np.zeros(channels)
    elif regime in ("large", "nonfinite"):
        spread = 10 ** rng.uniform(1.5, 3 if half else 6, channels) if regime == "large" else np.ones(channels)
        offset = rng.normal(0, 1, channels) * spread
    else:
        raise ValueError(f"unknown value regime {regime!r}; choose from {VALUE_REGIMES}")
    noise = rng.standard_normal(shape)
    x = offset.reshape(view) + spread.reshape(view) * noise
    if regime == "nonfinite":
        # A user's data with a NaN or an infinity in it: one to three elements.
        flat = x.reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, int(rng.integers(1, 4))), replace=False)
        flat[picks] = rng.choice([np.nan, np.inf, -np.inf], size=picks.size)
    return x.astype(dtype)


#: The exact regime's building blocks: integer patterns with sum 0 whose squares average 2, so a
#: channel of M >= 3 values mean + s * z has mean exactly `mean` and variance exactly 2 s^2.
_BLOCKS = {3: [1, 1, -2], 4: [2, -2, 0, 0], 5: [2, -2, 1, -1, 0]}


def _exact_pattern(m: int) -> tuple[list[int], int]:
    """Integers z with sum(z) = 0 and sum(z^2) = T m, and T (the variance in units of s^2)."""
    if m <= 2:
        return ([0], 0) if m == 1 else ([1, -1], 1)
    quads, rest = divmod(m, 4)
    tail = {0: [], 1: _BLOCKS[5], 2: _BLOCKS[3] * 2, 3: _BLOCKS[3]}[rest]
    quads -= {0: 0, 1: 1, 2: 1, 3: 0}[rest]
    return _BLOCKS[4] * quads + tail, 2


def exact_eps(m: int, k: int, extra: int) -> float:
    """eps such that var + eps = 4^(k + 1 + extra) for the exact regime's variance T 4^k."""
    _, t = _exact_pattern(m)
    return float(4.0 ** (k + 1 + extra) - t * 4.0**k)


def _exact_scale(m: int, eps: float) -> tuple[int, int]:
    """(k, extra) back from an exact-regime eps, so that a sibling case can share it."""
    _, t = _exact_pattern(m)
    for extra in range(3):
        k = round(math.log(eps / (4.0 ** (1 + extra) - t), 4))
        if exact_eps(m, k, extra) == eps:
            return k, extra
    raise ValueError(f"eps={eps} is not an exact-regime eps for M={m}")


def _exact_values(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    axis: int,
    dtype: str,
    head_regime: str,
    eps: float | None,
) -> tuple[dict[str, np.ndarray], float]:
    """x, dy, gamma, beta and the moving statistics of an exact case, and its eps (given, or drawn)."""
    channels = shape[axis]
    m = int(np.prod(shape)) // max(channels, 1)
    pattern, _ = _exact_pattern(m)
    half = dtype == "float16"
    if eps is None:
        k, extra = int(rng.integers(-4, 3) if half else rng.integers(-10, 6)), int(rng.integers(0, 3))
        eps = exact_eps(m, k, extra)
    else:
        k, extra = _exact_scale(m, eps)
    s = 2.0**k
    z = np.tile(np.asarray(pattern, dtype=np.float64), (channels, 1))
    z = rng.permuted(z, axis=1)
    means = rng.integers(-7, 8, channels).astype(np.float64)
    rows = s * (means[:, None] + z)
    other = [d for i, d in enumerate(shape) if i != axis]
    x = np.moveaxis(rows.reshape([channels, *other]), 0, axis)
    h = int(rng.integers(-4, 5) if half else rng.integers(-6, 7))
    if head_regime == "ones":
        dy = np.ones(shape)
    elif head_regime == "random":
        dy = rng.integers(-3, 4, shape).astype(np.float64)
    else:
        dy = 2.0**h * rng.integers(-3, 4, shape)
    pdt = param_dtype(dtype)
    arrays = {
        "x": x.astype(dtype),
        "dy": dy.astype(dtype),
        "gamma": (rng.integers(-16, 17, channels) / 8).astype(pdt),
        "beta": (rng.integers(-16, 17, channels) / 8).astype(pdt),
        # Inference and use_global_stats normalise with these: var + eps is the same power of 4.
        "moving_mean": (s * rng.integers(-7, 8, channels)).astype(pdt),
        "moving_var": np.full(channels, 4.0 ** (k + 1 + extra) - eps).astype(pdt),
    }
    return arrays, eps


def _head(rng: np.random.Generator, regime: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if regime == "ones":
        return np.ones(shape, dtype=dtype)
    if regime == "random":
        return rng.standard_normal(shape).astype(dtype)
    if regime == "scaled":
        scale = _log_uniform(rng, -2, 2) if dtype == "float16" else _log_uniform(rng, -4, 4)
        return (scale * rng.standard_normal(shape)).astype(dtype)
    raise ValueError(f"unknown head regime {regime!r}; choose from {HEAD_REGIMES}")


def _values(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    axis: int,
    dtype: str,
    value_regime: str,
    head_regime: str,
    reqs: tuple[str, str, str],
    eps: float | None = None,
) -> tuple[dict[str, np.ndarray], float | None]:
    """Every array of a case, drawn from ``rng``: the data and head in their regimes, the parameters.

    The exact regime chooses eps too (or keeps the given one): it is returned, else None.
    """
    caxis = axis % len(shape)
    channels = shape[caxis]
    pdt = param_dtype(dtype)
    if value_regime == "exact":
        arrays, eps = _exact_values(rng, shape, caxis, dtype, head_regime, eps)
    else:
        eps = None
        arrays = {
            "x": _data(rng, value_regime, shape, caxis, dtype),
            "dy": _head(rng, head_regime, shape, dtype),
            "gamma": rng.standard_normal(channels).astype(pdt),
            "beta": rng.standard_normal(channels).astype(pdt),
            "moving_mean": rng.standard_normal(channels).astype(pdt),
            "moving_var": rng.uniform(0, 2, channels).astype(pdt),
        }
    # What the gradient buffers hold before an 'add': earlier gradients, of any scale (dyadic in the exact regime).
    for q, req, s, t in zip(
        ("dx", "dgamma", "dbeta"), reqs, (shape, (channels,), (channels,)), (dtype, pdt, pdt), strict=True
    ):
        if req == "add":
            scale = 2.0 ** int(rng.integers(-6, 7)) if value_regime == "exact" else _log_uniform(rng, -2, 2)
            noise = rng.integers(-8, 9, s) if value_regime == "exact" else rng.standard_normal(s)
            arrays[f"prior_{q}"] = (scale * noise).astype(t)
    return arrays, eps


def sibling(case: Case, seed: int) -> Case:
    """A case with ``case``'s signature and regimes and other values: a partner to stack with it."""
    value_regime, _, head_regime = case.regime.partition("/")
    rng = np.random.default_rng(seed)
    eps = case.eps if value_regime == "exact" else None
    arrays, _ = _values(rng, case.shape, case.axis, case.dtype, value_regime, head_regime, case.grad_req, eps)
    return case.with_(**arrays)


def case_groups(*, max_size: int = 16, **case_options: object) -> st.SearchStrategy[list[Case]]:
    """Lists of 1 to ``max_size`` cases that share one signature, to run stacked in one MXNet call.

    ``case_options`` are those of cases(); the group shrinks towards one case, then that case shrinks.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    first_s = cases(**case_options)  # type: ignore[arg-type]
    size_s = st.integers(1, max_size)
    seed_s = st.integers(0, 2**32 - 1)

    @st.composite
    def group(draw: st.DrawFn) -> list[Case]:
        first = draw(first_s)
        size, seed = draw(size_s), draw(seed_s)
        if first.x.size > STACKED_ELEMENTS:
            size = 1  # a large case is a whole MXNet call's worth on its own
        return [first, *(sibling(first, seed + i) for i in range(1, size))]

    return group()


def epsilons() -> st.SearchStrategy[float]:
    """eps: the default 1e-3 about a third of the time, else 0 through tiny to large."""
    return st.one_of(
        st.just(DEFAULT_EPS),
        st.just(DEFAULT_EPS),
        st.sampled_from([0.0, SMALLEST_SUBNORMAL_F32, 1e-5]),
        st.floats(-12, 2).map(lambda e: float(10**e)),
    )


def momenta() -> st.SearchStrategy[float]:
    # BatchNormParam.momentum is a C++ float parsed with a range check: MXNet rejects values that
    # are not normal float32 numbers ("Out of range value for momentum"), subnormals included.
    return st.one_of(
        st.just(DEFAULT_MOMENTUM),
        st.sampled_from([0.0, 1.0]),
        st.floats(0, 1, width=32, allow_subnormal=False),
    )


def grad_requests() -> st.SearchStrategy[tuple[str, str, str]]:
    """grad_req for data, gamma and beta: all 'write' half the time, else any mix of write/add/null in which
    data or beta takes a gradient (so that every entry point, gluon's scale=False included, has one)."""
    mixed = st.tuples(*[st.sampled_from(GRAD_REQS)] * 3).filter(lambda r: r[0] != "null" or r[2] != "null")
    return st.one_of(st.just(WRITE_ALL), mixed)


def _validate_choice(name: str, values: Sequence[str] | None, allowed: Sequence[str]) -> tuple[str, ...]:
    return tuple(allowed) if values is None else validate_choices(name, values, allowed=allowed)


@functools.cache
def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    # Built once per range: constructing and validating strategies per draw costs more than the draw.
    return st.integers(lo, hi)


@st.composite
def shapes_and_axes(
    draw: st.DrawFn,
    *,
    min_ndim: int,
    max_ndim: int,
    max_channels: int,
    max_batch: int,
    max_side: int,
    max_elements: int,
) -> tuple[tuple[int, ...], int]:
    ndim = draw(_integers(min_ndim, max_ndim))
    axis = draw(_integers(-ndim, ndim - 1))
    caxis = axis % ndim
    budget = max_elements
    dims = []
    for i in range(ndim):
        cap = max_channels if i == caxis else (max_batch if i == 0 else max_side)
        d = draw(_integers(1, max(1, min(cap, budget))))
        budget = max(1, budget // d)
        dims.append(d)
    return tuple(dims), axis


_DECADES = st.sampled_from([3, 4, 5, 6])
#: Spatial sides of real feature maps, and depths of volumes.
_SIDES = (7, 8, 14, 16, 28, 32, 56, 64, 112)
_DEPTHS = (4, 8, 16, 32)


@st.composite
def large_shapes_and_axes(draw: st.DrawFn, *, max_channels: int) -> tuple[tuple[int, ...], int]:
    """Shapes of real layers with 10^3 to 2*10^6 elements per channel: conv maps (N, C, H, W), volumes
    (N, C, D, H, W) and dense activations (N, C), channels first or last."""
    kind = draw(st.sampled_from(["conv2d", "conv3d", "dense"]))
    # A decade, then a place within it: each decade from 10^3 to 10^6 as likely as another (Hypothesis
    # draws bounded numbers toward their simple ends), shrinking toward the small end.
    target = min(10 ** (draw(_DECADES) + draw(_integers(0, 100)) / 100), MAX_LARGE_ELEMENTS)
    # Shrinks toward few channels; capped so that the whole case stays within MAX_LARGE_ELEMENTS.
    channels = draw(_integers(1, max(1, min(max_channels, MAX_LARGE_ELEMENTS // int(target)))))
    if kind == "dense":
        spatial: tuple[int, ...] = ()
    elif kind == "conv2d":
        side = draw(st.sampled_from(_SIDES))
        spatial = (side, side)
    else:
        side = draw(st.sampled_from(_SIDES[:6]))
        spatial = (draw(st.sampled_from(_DEPTHS)), side, side)
    batch = max(1, round(target / max(1, int(np.prod(spatial)))))
    last = draw(st.booleans())
    shape = (batch, *spatial, channels) if last else (batch, channels, *spatial)
    return shape, (-1 if last else 1)


def cases(
    *,
    dtypes: Sequence[str] | None = None,
    value_regimes: Sequence[str] | None = None,
    head_regimes: Sequence[str] | None = None,
    min_ndim: int = MIN_NDIM,
    max_ndim: int = MAX_NDIM,
    max_channels: int = 6,
    max_batch: int = 8,
    max_side: int = 5,
    max_elements: int = 240,
    sizes: str = "small",
    fix_gamma: bool | None = None,
    use_global_stats: bool | None = None,
    output_mean_var: bool | None = None,
    eps: st.SearchStrategy[float] | None = None,
    momentum: st.SearchStrategy[float] | None = None,
    is_train: bool | None = None,
    grad_req: st.SearchStrategy[tuple[str, str, str]] | None = None,
) -> st.SearchStrategy[Case]:
    """BatchNorm cases; every argument narrows the space, and None means 'all of it'.

    A flag given as True/False is fixed; None draws both values.  ``sizes`` (see SIZES) chooses the
    shapes: the ``min_ndim`` .. ``max_elements`` limits apply to the small ones, ``max_channels`` to both.
    """
    dtypes_ = _validate_choice("dtypes", dtypes, DTYPES)
    values_ = _validate_choice("value_regimes", value_regimes, VALUE_REGIMES)
    heads_ = _validate_choice("head_regimes", head_regimes, HEAD_REGIMES)
    if not MIN_NDIM <= min_ndim <= max_ndim <= MAX_NDIM:
        raise ValueError(f"need {MIN_NDIM} <= min_ndim <= max_ndim <= {MAX_NDIM}, got {min_ndim}, {max_ndim}")
    for name, value in (
        ("max_channels", max_channels),
        ("max_batch", max_batch),
        ("max_side", max_side),
        ("max_elements", max_elements),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")

    def flag(value: bool | None) -> st.SearchStrategy[bool]:
        return st.booleans() if value is None else st.just(value)

    if sizes not in SIZES:
        raise ValueError(f"sizes must be one of {SIZES}, got {sizes!r}")
    small_s = shapes_and_axes(
        min_ndim=min_ndim,
        max_ndim=max_ndim,
        max_channels=max_channels,
        max_batch=max_batch,
        max_side=max_side,
        max_elements=max_elements,
    )
    large_s = large_shapes_and_axes(max_channels=max_channels)
    if sizes == "small":
        shape_s = small_s
    elif sizes == "large":
        shape_s = large_s
    else:
        # One draw in LARGE_SHARE is large; shrinking goes to the small ones.
        shape_s = st.integers(1, LARGE_SHARE).flatmap(lambda i: large_s if i == LARGE_SHARE else small_s)
    dtype_s, value_s, head_s = st.sampled_from(dtypes_), st.sampled_from(values_), st.sampled_from(heads_)
    fix_gamma_s, ugs_s, omv_s = flag(fix_gamma), flag(use_global_stats), flag(output_mean_var)
    eps_s = epsilons() if eps is None else eps
    momentum_s = momenta() if momentum is None else momentum
    seed_s = st.integers(0, 2**32 - 1)
    # Training is what most calls do; inference a quarter of the time.
    train_s = st.sampled_from([True, True, True, False]) if is_train is None else st.just(is_train)
    grad_req_s = grad_requests() if grad_req is None else grad_req

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        shape, axis = draw(shape_s)
        dtype = draw(dtype_s)
        value_regime = draw(value_s)
        head_regime = draw(head_s)
        ugs = draw(ugs_s)
        train = draw(train_s)
        reqs = draw(grad_req_s)
        seed = draw(seed_s)
        arrays, exact_eps = _values(np.random.default_rng(seed), shape, axis, dtype, value_regime, head_regime, reqs)
        return Case(
            **arrays,
            devices=(),
            axis=axis,
            eps=draw(eps_s) if exact_eps is None else exact_eps,
            momentum=draw(momentum_s),
            fix_gamma=draw(fix_gamma_s),
            use_global_stats=ugs,
            output_mean_var=draw(omv_s),
            is_train=train,
            grad_req=reqs,
            regime=f"{value_regime}/{head_regime}",
        )

    return build()

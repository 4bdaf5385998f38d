"""Hypothesis strategies for BatchNorm cases that reach the whole operator.

Shapes, axes, dtypes, eps, momentum, flags and value regimes are drawn by Hypothesis (so they
shrink); array contents come from a drawn seed through numpy, which is far cheaper than
``hypothesis.extra.numpy.arrays`` for whole arrays and still reproducible from the case's JSON.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from hypothesis import strategies as st

from bnprops.case import DEFAULT_EPS, DEFAULT_MOMENTUM, DTYPES, GRAD_REQS, WRITE_ALL, Case, param_dtype

#: How the data of a case is spread, each a numerical stress of its own.
VALUE_REGIMES = ("ordinary", "offset", "tiny_spread", "constant", "large", "nonfinite")
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
) -> dict[str, np.ndarray]:
    """Every array of a case, drawn from ``rng``: the data and head in their regimes, the parameters."""
    caxis = axis % len(shape)
    channels = shape[caxis]
    pdt = param_dtype(dtype)
    arrays = {
        "x": _data(rng, value_regime, shape, caxis, dtype),
        "dy": _head(rng, head_regime, shape, dtype),
        "gamma": rng.standard_normal(channels).astype(pdt),
        "beta": rng.standard_normal(channels).astype(pdt),
        "moving_mean": rng.standard_normal(channels).astype(pdt),
        "moving_var": rng.uniform(0, 2, channels).astype(pdt),
    }
    # What the gradient buffers hold before an 'add': earlier gradients, of any scale.
    for q, req, s, t in zip(
        ("dx", "dgamma", "dbeta"), reqs, (shape, (channels,), (channels,)), (dtype, pdt, pdt), strict=True
    ):
        if req == "add":
            arrays[f"prior_{q}"] = (_log_uniform(rng, -2, 2) * rng.standard_normal(s)).astype(t)
    return arrays


def sibling(case: Case, seed: int) -> Case:
    """A case with ``case``'s signature and regimes and other values: a partner to stack with it."""
    value_regime, _, head_regime = case.regime.partition("/")
    rng = np.random.default_rng(seed)
    return case.with_(**_values(rng, case.shape, case.axis, case.dtype, value_regime, head_regime, case.grad_req))


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
    if values is None:
        return tuple(allowed)
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must not be empty; choose from {tuple(allowed)}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"{name} has unknown values {unknown}; choose from {tuple(allowed)}")
    return values


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
    fix_gamma: bool | None = None,
    use_global_stats: bool | None = None,
    output_mean_var: bool | None = None,
    eps: st.SearchStrategy[float] | None = None,
    momentum: st.SearchStrategy[float] | None = None,
    is_train: bool | None = None,
    grad_req: st.SearchStrategy[tuple[str, str, str]] | None = None,
) -> st.SearchStrategy[Case]:
    """BatchNorm cases; every argument narrows the space, and None means 'all of it'.

    A flag given as True/False is fixed; None draws both values.
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

    shape_s = shapes_and_axes(
        min_ndim=min_ndim,
        max_ndim=max_ndim,
        max_channels=max_channels,
        max_batch=max_batch,
        max_side=max_side,
        max_elements=max_elements,
    )
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
        return Case(
            **_values(np.random.default_rng(seed), shape, axis, dtype, value_regime, head_regime, reqs),
            axis=axis,
            eps=draw(eps_s),
            momentum=draw(momentum_s),
            fix_gamma=draw(fix_gamma_s),
            use_global_stats=ugs,
            output_mean_var=draw(omv_s),
            is_train=train,
            grad_req=reqs,
            regime=f"{value_regime}/{head_regime}",
        )

    return build()

"""Hypothesis strategies for the cases the oneDNN graph rewrites of BatchNorm can run (fold, int8).

Both rewrites take 4-D or 5-D float32 data with channels on axis 1 after a convolution or a pooling layer; the
cases are the plain strategies', moved to that axis and narrowed by each member's unexpressible_reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st

from bnprops.model.case import Case
from bnprops.mx import folding, int8
from bnprops.search.strategies import VALUE_REGIMES, cases

#: Finite data only: a convolution mixes channels, and int8 has no NaN.
FINITE_REGIMES = tuple(r for r in VALUE_REGIMES if r != "nonfinite")


def channels_at_axis_one(case: Case) -> Case:
    """The same call with the channel axis moved to 1 (the axis a convolution's filters lie on)."""
    axis = case.channel_axis
    moved = {
        name: np.moveaxis(value, axis, 1)
        for name, value in (("x", case.x), ("dy", case.dy), ("prior_dx", case.prior_dx))
        if value is not None
    }
    return case.with_(**moved, axis=1)


def _rewrite_cases(unexpressible: Callable[[Case], str | None], options: dict[str, Any]) -> st.SearchStrategy[Case]:
    merged: dict[str, Any] = {"dtypes": ["float32"], "min_ndim": 4, "max_ndim": 5, "value_regimes": FINITE_REGIMES}
    merged |= {"output_mean_var": False} | options
    return cases(**merged).map(channels_at_axis_one).filter(lambda c: unexpressible(c) is None)


def cases_for_folding(**options: Any) -> st.SearchStrategy[Case]:
    """Cases the Convolution + BatchNorm fold runs (bnprops.search.strategies.cases' keyword options)."""
    return _rewrite_cases(folding.unexpressible_reason, options)


def cases_for_int8(**options: Any) -> st.SearchStrategy[Case]:
    """Cases the int8 BatchNorm runs: 4-D, axis 1, finite, inference (bnprops.search.strategies.cases' options)."""
    merged: dict[str, Any] = {"min_ndim": 4, "max_ndim": 4, "is_train": False} | options
    return _rewrite_cases(int8.unexpressible_reason, merged)


@st.composite
def _with_weight(draw: st.DrawFn, case: Case) -> tuple[Case, np.ndarray]:
    channels, k = case.channels, draw(st.sampled_from([1, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10 ** draw(st.integers(-2, 2))
    weight = (rng.standard_normal((channels, channels, k, k)) * scale).astype(np.float32)
    if draw(st.booleans()):  # sparse filters: fewer nonzero products per output
        weight *= rng.random(weight.shape) < 0.3
    return case, weight


def cases_with_convolution(**options: Any) -> st.SearchStrategy[tuple[Case, np.ndarray]]:
    """Inference cases of the fold with a drawn convolution in front (K = C filters, 1x1 or 3x3, 4-D only)."""
    merged: dict[str, Any] = {"min_ndim": 4, "max_ndim": 4, "is_train": False} | options
    # (large shapes take their own ndim: the 2-D convolution keeps the 4-D ones)
    return cases_for_folding(**merged).filter(lambda c: c.x.ndim == 4).flatmap(_with_weight)

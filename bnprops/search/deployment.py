"""Hypothesis strategies for the deployed and converted BatchNorms: the ONNX export, and AMP's graphs.

Built on the plain strategies (search.strategies.cases) with what each member can express: the channel axis
moved to 1 and inference for ONNX; channels last and bfloat16 values for AMP's bfloat16 graphs. Half the
ONNX cases carry the moving statistics a trained model would (the batch's own mean and variance), so that
x - moving_mean cancels as it does in deployment.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from bnprops.model.bfloat16 import to_bfloat16
from bnprops.model.case import WRITE_ALL, Case
from bnprops.mx import mixed_precision, onnx_export
from bnprops.search.strategies import cases

#: Every value regime but non-finite data (NaN and inf propagate by IEEE rules; the plain properties check that).
FINITE_REGIMES = ("ordinary", "offset", "tiny_spread", "constant", "large", "exact")
#: The bfloat16 AMP cases' eps: common ones, bfloat16 values and not (1e-3, 1e-5, 0.3 truncate; 2^-10 does not).
AMP_EPS = (1e-3, 1e-5, 2e-5, 0.3, 2.0**-10, 0.1)


def channels_at_axis_one(case: Case) -> Case:
    """The same call with the channel axis moved to 1 (x, dy and a prior dx moved alike)."""
    axis = case.channel_axis
    moved = {
        name: np.moveaxis(value, axis, 1)
        for name, value in (("x", case.x), ("dy", case.dy), ("prior_dx", case.prior_dx))
        if value is not None
    }
    return case.with_(**moved, axis=1)


def trained_statistics(case: Case) -> Case:
    """The case with moving statistics equal to its batch's mean and (biased) variance, rounded to their dtype."""
    x = case.x.astype(np.float64)
    mean = x.mean(axis=case.reduce_axes)
    var = x.var(axis=case.reduce_axes)
    dtype = case.moving_mean.dtype
    return case.with_(moving_mean=mean.astype(dtype), moving_var=var.astype(dtype))


def cases_for_onnx(**options: Any) -> st.SearchStrategy[Case]:
    """Inference cases the ONNX entry can run (float32, axis 1, at least 2-D), with the plain ``cases`` options."""
    options.setdefault("value_regimes", FINITE_REGIMES)
    base = cases(dtypes=["float32"], min_ndim=2, is_train=False, output_mean_var=False, **options)
    moved = base.map(channels_at_axis_one).filter(lambda c: onnx_export.unexpressible_reason(c) is None)
    return st.tuples(moved, st.booleans()).map(lambda pair: trained_statistics(pair[0]) if pair[1] else pair[0])


def channels_last(case: Case) -> Case:
    """The same call with the channel axis moved to the last one (x, dy and a prior dx moved alike)."""
    axis, last = case.channel_axis, case.x.ndim - 1
    moved = {
        name: np.moveaxis(value, axis, last)
        for name, value in (("x", case.x), ("dy", case.dy), ("prior_dx", case.prior_dx))
        if value is not None
    }
    return case.with_(**moved, axis=-1)


def bfloat16_data(case: Case) -> Case:
    """The case with x and dy rounded to bfloat16 values (float32 arrays): what AMP's casts leave of them."""
    return case.with_(x=to_bfloat16(case.x), dy=to_bfloat16(case.dy))


def cases_for_amp(entry: str, **options: Any) -> st.SearchStrategy[Case]:
    """Cases the AMP entry ``entry`` can run: float32, every gradient written, one output; for the bfloat16
    entries channels last and x, dy bfloat16 values."""
    options.setdefault("value_regimes", FINITE_REGIMES)
    if entry not in mixed_precision.BF16_ENTRIES:
        return cases(dtypes=["float32"], output_mean_var=False, grad_req=st.just(WRITE_ALL), **options)
    # (eps > 0: with eps 0 a constant channel's NaN, BatchNorm's legitimately, reaches every channel's dx through
    # the identity FullyConnected's backward, 0 * NaN; non-finite data is left out for the same reason)
    options.setdefault("eps", st.sampled_from(AMP_EPS))
    shaped = cases(dtypes=["float32"], min_ndim=2, output_mean_var=False, grad_req=st.just(WRITE_ALL), **options)
    return shaped.map(channels_last).map(bfloat16_data)

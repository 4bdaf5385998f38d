"""The fused engine's oracle and bounds, from the per-channel sums of the evaluation it is handed.

y and dx, and both models' bounds on them, by the reference's formulas (model.formulas), computed when
first read (model.lazy_outputs); the per-channel quantities and bounds through the reference's own
functions; and the per-channel coefficients of the per-element formulas, with the bounds' linear forms that
let the comparison kernel skip most exact bounds.

For float16 and float32 data every bound is at least ``2^-24`` of the magnitudes the per-channel sums'
differences move values by ``~2^-44`` (worst case ``2^-32``) of, so the fused and reference values and bounds
differ by far less than fused_sums.CLOSE of a bound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, Case, Outputs
from bnprops.model.error_model import (
    Exactness,
    Propagated,
    bound_inv,
    channel_terms,
    finished_bounds,
    gradient_sum_bounds,
    statistics_bounds,
    xhat_shift,
)
from bnprops.model.formulas import START, WIDTH, Oracle, Row, Terms, linear_forms
from bnprops.model.fused_sums import CLOSE, as_input, as_three, finite_sum, kernels, sweep
from bnprops.model.lazy_outputs import LazyOutputs
from bnprops.model.oracle import eps_as_applied, per_channel_outputs


class Sums(Protocol):
    """What the fused oracle reads of a case's evaluation (model.evaluation.FusedEvaluation): the passes' sums,
    the statistics and the error model's values, each computed once there and passed here."""

    @property
    def case(self) -> Case: ...

    @property
    def raw(self) -> dict[str, np.ndarray]: ...

    @property
    def xhat(self) -> dict[str, np.ndarray]: ...

    @property
    def statistics(self) -> tuple[np.ndarray, np.ndarray]: ...

    @property
    def exactness(self) -> Exactness: ...

    @property
    def per_channel(self) -> Outputs: ...

    @property
    def expected(self) -> Outputs: ...

    @property
    def undetermined(self) -> np.ndarray: ...

    @property
    def coefficients(self) -> np.ndarray: ...

    def propagated(self, model: str) -> Propagated: ...

    def model_bounds(self, model: str) -> ModelBounds: ...

    def arrays(self, which: int) -> list[np.ndarray]: ...


# --- the oracle --------------------------------------------------------------------------------------------


def prior_rows(case: Case) -> tuple[bool, np.ndarray]:
    """Does dx accumulate onto a prior ('add'), and the prior as (P, C, Q) (x's rows where not: never read)."""
    add = case.request("data") == "add" and case.prior_dx is not None
    return add, as_three(case, case.prior_dx if add and case.prior_dx is not None else case.x)


def arrays(ev: Sums, which: int) -> list[np.ndarray]:
    """Every element's y and its deterministic and sharp bounds (``which`` 0), or dx fresh, dx as requested and
    its two bounds (1), as the reference computes them."""
    case = ev.case
    k = kernels()
    coeffs, batch = ev.coefficients, case.uses_batch_stats
    add, prior3 = prior_rows(case)
    x3, dy3 = as_three(case, case.x), as_three(case, case.dy)
    out = np.empty((3 if which == 0 else 4, *x3.shape))

    def arguments(b: slice) -> tuple[Any, ...]:
        return as_input(x3[b]), as_input(dy3[b]), as_input(prior3[b]), coeffs, batch, add, which, b.start, out

    sweep(case, k.materialise, arguments)
    result = [np.reshape(a, case.shape) for a in out]
    for a in result:
        a.flags.writeable = False
    return result


#: Where each lazily computed array comes from: (_arrays' which, index).
_Y, _Y_BOUND, _Y_SHARP = (0, 0), (0, 1), (0, 2)
_DX_FRESH, _DX, _DX_BOUND, _DX_SHARP = (1, 0), (1, 1), (1, 2), (1, 3)


def _element(ev: Sums, where: tuple[int, int]) -> Callable[[], np.ndarray]:
    return lambda: ev.arrays(where[0])[where[1]]


def fresh_per_channel(ev: Sums) -> Outputs:
    """The oracle's per-channel quantities (oracle.fresh_reference's, from the fused sums)."""
    case = ev.case
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    mean, var = ev.statistics
    with ignoring("divide", "invalid", "over"):
        invstd = 1.0 / np.sqrt(var + eps_as_applied(case))
    sum_dy_xhat = ev.xhat["oracle_dot"]
    dbeta = finite_sum(ev.raw["dy_hi"], ev.raw["dy_lo"])
    out = per_channel_outputs(case, mean, var, invstd, dbeta, sum_dy_xhat)
    for value in out.values():
        value.flags.writeable = False
    # internal: the per-channel values the per-element formulas need
    out["_invstd"], out["_g"], out["_sum_dy_xhat"] = invstd, g, sum_dy_xhat
    return out


_ORDER = ("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var", "gamma")


def _public(values: Outputs) -> Outputs:
    return {k: v for k, v in values.items() if not k.startswith("_")}


def fresh_reference(ev: Sums) -> LazyOutputs:
    """oracle.fresh_reference on the fused path (y and dx computed when first looked at)."""
    per_channel = _public(ev.per_channel)
    eager = {q: per_channel[q] for q in _ORDER if q in per_channel}
    eager.update({q: v for q, v in per_channel.items() if q not in eager})
    return _ordered(eager, {"y": _element(ev, _Y), "dx": _element(ev, _DX_FRESH)})


def _ordered(eager: Outputs, lazy: dict[str, Callable[[], np.ndarray]]) -> LazyOutputs:
    """LazyOutputs with the reference's key order (y, dx first)."""
    result = LazyOutputs({}, {})
    for key in ("y", "dx"):
        if key in lazy:
            dict.__setitem__(result, key, None)
            result._lazy[key] = lazy[key]
    for key, value in eager.items():
        dict.__setitem__(result, key, value)
    return result


def reference(ev: Sums) -> LazyOutputs:
    """oracle.reference on the fused path: 'null' gradients absent, 'add' ones on top of their prior."""
    case = ev.case
    fresh = _public(ev.per_channel)
    eager: Outputs = {q: fresh[q] for q in _ORDER if q in fresh}
    eager.update({q: v for q, v in fresh.items() if q not in eager})
    lazy: dict[str, Callable[[], np.ndarray]] = {"y": _element(ev, _Y), "dx": _element(ev, _DX)}
    for target in GRAD_TARGETS:
        quantity = GRADIENT_OF[target]
        prior = case.prior(target)
        if case.request(target) == "null":
            eager.pop(quantity, None)
            lazy.pop(quantity, None)
        elif prior is not None and quantity != "dx":
            eager[quantity] = prior.astype(np.float64) + eager[quantity]
    return _ordered(eager, lazy)


# --- the bounds --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelBounds:
    per_channel: Outputs  # the bounds of the per-channel quantities, as error_model.bounds returns them
    terms: Terms  # the per-element bounds' terms, per channel (error_model.channel_terms)


def model_bounds(ev: Sums, model: str) -> ModelBounds:
    """error_model.bounds' per-channel parts for ``model`` (training_backward False, expected = the oracle's)."""
    case = ev.case
    fresh = _public(ev.per_channel)
    st = ev.propagated(model)
    inv = bound_inv(st)
    shift = xhat_shift(st, inv)
    dbeta, dgamma = fresh["dbeta"], ev.xhat["bound_dot"]
    e_dbeta, e_dgamma, out = gradient_sum_bounds(
        case,
        st,
        model,
        exact_dot=ev.exactness.dot_sum,
        dbeta=dbeta,
        sum_ady=ev.raw["dy_abs"],
        dgamma=dgamma,
        sum_adx=ev.xhat["abs_dot"],
        shift=shift,
        inv=inv,
    )
    terms = channel_terms(
        case, st, model, inv=inv, shift=shift, dbeta=dbeta, dgamma=dgamma, e_dbeta=e_dbeta, e_dgamma=e_dgamma
    )
    out.update(statistics_bounds(case, st, model, fresh))
    return ModelBounds(finished_bounds(case, out, ev.expected, model), terms)


def coefficients(ev: Sums) -> np.ndarray:
    """Per channel, a formulas.Row: every factor of the per-element formulas and both models' linear forms, laid
    out by formulas.START."""
    case = ev.case
    fresh = ev.per_channel
    m = case.reduction_length
    det, prob = ev.model_bounds("deterministic"), ev.model_bounds("probabilistic")
    invstd, g = fresh["_invstd"], fresh["_g"]
    with ignoring("invalid", "over", "divide"):
        oracle = Oracle(
            mean=ev.statistics[0],
            invstd=invstd,
            g=g,
            beta=case.beta.astype(np.float64),
            scale=g * invstd,
            dbeta_m=fresh["dbeta"] / m,
            dot_m=fresh["_sum_dy_xhat"] / m,
            inv=bound_inv(ev.propagated("deterministic")),
            ag=np.abs(g),
            judged=~np.asarray(ev.undetermined, dtype=bool),
        )
    batch, add = case.uses_batch_stats, prior_rows(case)[0]
    det_y, det_dx = linear_forms(oracle.ag, det.terms, batch, add)
    prob_y, prob_dx = linear_forms(oracle.ag, prob.terms, batch, add)
    row = Row(oracle, det.terms, prob.terms, det_y, det_dx, prob_y, prob_dx)
    co = np.empty((case.channels, WIDTH))
    for name, block in zip(row._fields, row, strict=True):
        for i, value in enumerate(block):
            co[:, START[name] + i] = value
    return co


def indeterminate_is_close(st: Propagated) -> bool:
    """Is error_model.indeterminate_channels' test near its edge in some channel (then the reference decides)?"""
    with ignoring("invalid", "over"):
        lhs = 2 * (st.e_var + st.e_eps)
        return bool((np.abs(lhs - st.s2) <= CLOSE * np.abs(st.s2)).any())


def bounds(ev: Sums) -> tuple[LazyOutputs, LazyOutputs]:
    """The deterministic and sharp bounds of the oracle's outputs (error_model.bounds and sharpest) on the fused
    path."""
    det = ev.model_bounds("deterministic").per_channel
    prob = ev.model_bounds("probabilistic").per_channel
    with ignoring("invalid"):
        sharp = {q: np.where(np.isfinite(b), np.minimum(b, det[q]), det[q]) for q, b in prob.items()}
    expected = ev.expected
    lazy_det = {q: _element(ev, i) for q, i in (("y", _Y_BOUND), ("dx", _DX_BOUND)) if q in expected}
    lazy_sharp = {q: _element(ev, i) for q, i in (("y", _Y_SHARP), ("dx", _DX_SHARP)) if q in expected}
    return _ordered(det, lazy_det), _ordered(sharp, lazy_sharp)

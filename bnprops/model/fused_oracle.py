"""The fused path's oracle and bounds: y and dx, and both models' bounds on them, by the reference's formulas
in its order of operations (so, given the same per-channel values, the reference's bits), computed when first
read (model.lazy_outputs); the per-channel quantities and bounds from the fused sums, as the evaluation
it is handed holds them, through the reference's own functions; and the per-channel coefficients of the
per-element formulas, with the bounds' linear forms that let the comparison kernel skip most exact bounds.

For float16 and float32 data every bound is at least ``2^-24`` of the magnitudes the per-channel sums'
differences move values by ``~2^-44`` (worst case ``2^-32``) of, so the fused and reference values and bounds
differ by far less than fused_sums.CLOSE of a bound.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, Case, Outputs
from bnprops.model.error_model import (
    SAFETY,
    Exactness,
    Propagated,
    _rounding_scale,
    accumulation_dtype,
    compute_dtype,
    finished_bounds,
    gradient_sum_bounds,
    statistics_bounds,
    subnormal_step,
    unit_roundoff,
)
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

    def compute() -> list[np.ndarray]:
        k = kernels()
        coeffs, batch = ev.coefficients, case.uses_batch_stats
        add, prior3 = prior_rows(case)
        x3, dy3 = as_three(case, case.x), as_three(case, case.dy)
        out = np.empty((3 if which == 0 else 4, *x3.shape))

        def arguments(b: slice) -> tuple[Any, ...]:
            return as_input(x3[b]), as_input(dy3[b]), as_input(prior3[b]), coeffs, batch, add, which, b.start, out

        sweep(case, k.materialise, arguments)
        arrays = [np.reshape(a, case.shape) for a in out]
        for a in arrays:
            a.flags.writeable = False
        return arrays

    return compute()


#: Where each lazily computed array comes from: (_arrays' which, index).
_Y, _Y_BOUND, _Y_SHARP = (0, 0), (0, 1), (0, 2)
_DX_FRESH, _DX, _DX_BOUND, _DX_SHARP = (1, 0), (1, 1), (1, 2), (1, 3)


def _element(ev: Sums, where: tuple[int, int]) -> Callable[[], np.ndarray]:
    return lambda: ev.arrays(where[0])[where[1]]


def fresh_per_channel(ev: Sums) -> Outputs:
    """The oracle's per-channel quantities (oracle.fresh_reference's, from the fused sums)."""
    case = ev.case

    def compute() -> Outputs:

        g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
        mean, var = ev.statistics
        raw = ev.raw
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            invstd = 1.0 / np.sqrt(var + eps_as_applied(case))
        sum_dy_xhat = ev.xhat["oracle_dot"]
        dbeta = finite_sum(raw["dy_hi"], raw["dy_lo"])
        out = per_channel_outputs(case, mean, var, invstd, dbeta, sum_dy_xhat)
        for value in out.values():
            value.flags.writeable = False
        # internal: the per-channel values the per-element formulas need
        out["_invstd"], out["_g"], out["_sum_dy_xhat"] = invstd, g, sum_dy_xhat
        return out

    return compute()


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
    coefficients: np.ndarray  # (C, MODEL): the per-element formulas' per-channel factors


def model_bounds(ev: Sums, model: str) -> ModelBounds:
    """error_model.bounds' per-channel parts for ``model`` (training_backward False, expected = the oracle's)."""
    case = ev.case

    def compute() -> ModelBounds:

        k = kernels()
        accumulated = ev.expected
        fresh = _public(ev.per_channel)
        st = ev.propagated(model)
        u = st.u
        r = _rounding_scale(model)
        u_data = r * unit_roundoff(case.dtype)
        tiny_data = r * subnormal_step(case.dtype)
        tiny_term = r * subnormal_step(compute_dtype(case.dtype))
        acc_dtype = accumulation_dtype(case.dtype)
        ua = r * unit_roundoff(acc_dtype)
        m = case.reduction_length
        g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
        ag = np.abs(g)
        s2, rel = st.s2, st.rel_inv
        raw, xhat = ev.raw, ev.xhat
        co = np.zeros((case.channels, k.MODEL))
        c = {name: i - k.FIRST for name, i in k.C_.items() if i >= k.FIRST}
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            inv = np.where(s2 > 0, 1 / np.sqrt(s2), 0.0)
            shift = st.e_mean * inv * (1 + rel)
            co[:, c["a1"]] = shift + tiny_term * (1 + inv)
            co[:, c["b1"]] = rel + 2 * u
            co[:, c["u"]] = u
            co[:, c["ty"]] = tiny_term * (1 + ag)
            co[:, c["ud"]] = u_data
            co[:, c["td"]] = tiny_data
            co[:, c["safety"]] = SAFETY if model == "deterministic" else 1.0
            out: Outputs = {}
            sum_ady = raw["dy_abs"]
            dbeta = fresh["dbeta"]
            dgamma = xhat["bound_dot"]
            e_dbeta, e_dgamma, gradients = gradient_sum_bounds(
                case,
                st,
                model,
                exact_dot=ev.exactness.dot_sum,
                dbeta=dbeta,
                sum_ady=sum_ady,
                dgamma=dgamma,
                sum_adx=xhat["abs_dot"],
                shift=shift,
                inv=inv,
            )
            out.update(gradients)
            if case.uses_batch_stats:
                t2 = np.abs(dbeta) / m
                co[:, c["k1"]] = np.abs(dgamma) / m
                co[:, c["k2"]] = e_dgamma / m
                co[:, c["t2"]] = t2
                co[:, c["e0"]] = e_dbeta / m + ua * t2
                co[:, c["agi"]] = ag * inv
                co[:, c["ua2"]] = 2 * ua
                co[:, c["u2"]] = 2 * u
                co[:, c["tiny3"]] = 3 * tiny_term
            co[:, c["tx"]] = tiny_term * (ag * np.maximum(1.0, inv))
        out.update(statistics_bounds(case, st, model, fresh))
        result = finished_bounds(case, out, accumulated, model)
        return ModelBounds(result, co)

    return compute()


def coefficients(ev: Sums) -> np.ndarray:
    """Per channel, every factor of the per-element formulas (fused_kernels.COEFFICIENTS)."""
    case = ev.case

    def compute() -> np.ndarray:

        k = kernels()
        fresh = ev.per_channel
        mean = ev.statistics[0]
        m = case.reduction_length
        det, prob = ev.model_bounds("deterministic"), ev.model_bounds("probabilistic")
        co = np.zeros((case.channels, k.WIDTH))
        invstd, g = fresh["_invstd"], fresh["_g"]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            co[:, k.C_["mean"]] = mean
            co[:, k.C_["invstd"]] = invstd
            co[:, k.C_["g"]] = g
            co[:, k.C_["beta"]] = case.beta.astype(np.float64)
            co[:, k.C_["scale"]] = g * invstd
            co[:, k.C_["dbeta_m"]] = fresh["dbeta"] / m
            co[:, k.C_["dot_m"]] = fresh["_sum_dy_xhat"] / m
            s2 = ev.propagated("deterministic").s2
            co[:, k.C_["inv"]] = np.where(s2 > 0, 1 / np.sqrt(s2), 0.0)
            co[:, k.C_["ag"]] = np.abs(g)
        co[:, k.C_["judged"]] = ~np.asarray(ev.undetermined, dtype=bool)
        co[:, k.FIRST : k.FIRST + k.MODEL] = det.coefficients
        co[:, k.FIRST + k.MODEL : k.LINEAR] = prob.coefficients
        add = prior_rows(case)[0]
        for model, start in ((det, k.LINEAR), (prob, k.LINEAR + 8)):
            co[:, start : start + 8] = _linear(model.coefficients, co[:, k.C_["ag"]], case.uses_batch_stats, add)
        return np.ascontiguousarray(co)

    return compute()


def _linear(model: np.ndarray, ag: np.ndarray, batch: bool, add: bool) -> np.ndarray:
    """One model's bounds on y and dx as linear forms in |xhat|, |y|, |dy|, |dx| and |dx as requested| (the same
    sums, expanded): y ~ a + b |xhat| + c |y|; dx ~ A + B |xhat| + D |dy| + F |dx| + G |dx as requested|.  All
    terms are non-negative, so the forms, evaluated in float64 and shrunk by SHRINK (2^-40, far above their
    and the bounds' few roundings), never exceed the bounds; NaN (never used) where a factor is not finite."""
    a1, b1, u, ty, ud, td, sf, k1, k2, t2, e0, agi, tx, ua2, u2, tiny3 = model.T
    with np.errstate(invalid="ignore", over="ignore"):
        forms = [sf * (ag * a1 + ty + td), sf * ag * (b1 + u), sf * (u + ud)]
        if batch:
            forms += [
                sf * (agi * (e0 + a1 * (k1 + k2) + tiny3 + u2 * t2) + tx + td),
                sf * agi * (b1 * (k1 + k2) + k2 + (ua2 + u2) * k1),
                sf * agi * u2,
            ]
        else:
            forms += [sf * (tx + td), 0 * sf, 0 * sf]
        forms += [sf * (b1 + ud), sf * ud if add else 0 * sf]
        linear = np.stack(forms, axis=1)
        usable = np.all(np.isfinite(linear) & (linear >= 0), axis=1, keepdims=True)
        return np.where(usable, linear, np.nan)


def indeterminate_is_close(st: Propagated) -> bool:
    """Is error_model.indeterminate_channels' test near its edge in some channel (then the reference decides)?"""
    with np.errstate(invalid="ignore", over="ignore"):
        lhs = 2 * (st.e_var + st.e_eps)
        return bool((np.abs(lhs - st.s2) <= CLOSE * np.abs(st.s2)).any())


def bounds(ev: Sums) -> tuple[LazyOutputs, LazyOutputs]:
    """The deterministic and sharp bounds of the oracle's outputs (error_model.bounds and sharpest) on the fused
    path."""
    det = ev.model_bounds("deterministic").per_channel
    prob = ev.model_bounds("probabilistic").per_channel
    with np.errstate(invalid="ignore"):
        sharp = {q: np.where(np.isfinite(b), np.minimum(b, det[q]), det[q]) for q, b in prob.items()}
    expected = ev.expected
    lazy_det = {q: _element(ev, i) for q, i in (("y", _Y_BOUND), ("dx", _DX_BOUND)) if q in expected}
    lazy_sharp = {q: _element(ev, i) for q, i in (("y", _Y_SHARP), ("dx", _DX_SHARP)) if q in expected}
    return _ordered(det, lazy_det), _ordered(sharp, lazy_sharp)

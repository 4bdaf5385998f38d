"""The per-element formulas of the oracle and of both error models' bounds, and the per-channel terms they take,
each declared once.

The formulas use only +, *, abs and branches on flags, and call only each other: numpy evaluates them on arrays
(the reference engine), numba compiles them into the fused kernels (the same operations in the same order, so
the same bits), and evaluated on LinearForm magnitudes they expand into the linear forms the fused comparison
scans with.  A change to a term is one edit here (or in error_model.channel_terms, which computes the terms),
and the fused engine's agreement tests (test_fused) check that both engines follow it.

The fused path's per-channel coefficient array is laid out from these declarations: Row's blocks, each a
NamedTuple's fields, in order (START, WIDTH); the kernels read it by name.
"""

from __future__ import annotations

import typing
from typing import Any, NamedTuple

import numpy as np

from bnprops.base.float_warnings import ignoring


class Oracle(NamedTuple):
    """Per channel: the factors of the oracle's y and dx, and what both models' bounds share."""

    mean: Any
    invstd: Any  # the oracle's 1/sqrt(var + eps)
    g: Any
    beta: Any
    scale: Any  # g invstd
    dbeta_m: Any  # dbeta / M
    dot_m: Any  # sum dy xhat / M
    inv: Any  # the bound's invstd (0 where var + eps <= 0)
    ag: Any  # |g|
    judged: Any  # 0 on an indeterminate channel, else 1


class Terms(NamedTuple):
    """Per channel, one model's terms of its bounds on y and dx (error_model.channel_terms)."""

    a1: Any  # xhat's error is a1 + b1 |xhat|: a1 = shift + tiny_term (1 + inv), the mean's error and subnormals
    b1: Any  # rel + 2 u: invstd's relative error and xhat's own roundings
    u: Any  # the compute type's unit roundoff
    ty: Any  # tiny_term (1 + |g|)
    ud: Any  # u of the data type: the result's rounding (and prior + gradient's under 'add')
    td: Any  # the data type's subnormal step
    sf: Any  # SAFETY in the deterministic model, 1 in the probabilistic one
    k1: Any  # |dgamma| / M
    k2: Any  # e_dgamma / M
    t2: Any  # |dbeta| / M
    e0: Any  # e_dbeta / M + ua t2
    agi: Any  # |g| inv
    tx: Any  # tiny_term |g| max(1, inv)
    ua2: Any  # 2 ua
    u2: Any  # 2 u
    tiny3: Any  # 3 tiny_term


class YForm(NamedTuple):
    """A bound on y as a linear form: one + axhat |xhat| + ay |y|."""

    one: Any
    axhat: Any
    ay: Any


class DxForm(NamedTuple):
    """A bound on dx as a linear form: one + axhat |xhat| + ad |dy| + af |dx| + aa |dx as requested|."""

    one: Any
    axhat: Any
    ad: Any
    af: Any
    aa: Any


class Row(NamedTuple):
    """A channel's row of the fused coefficient array: its blocks, in order."""

    oracle: Oracle
    det: Terms
    prob: Terms
    det_y: YForm
    det_dx: DxForm
    prob_y: YForm
    prob_dx: DxForm


#: Each block of Row and its NamedTuple, in order; where each starts in a row; a row's width.
BLOCKS: tuple[tuple[str, Any], ...] = tuple(typing.get_type_hints(Row).items())
_SIZES = [len(block._fields) for _, block in BLOCKS]
START: dict[str, int] = {name: sum(_SIZES[:i]) for i, (name, _) in enumerate(BLOCKS)}
WIDTH = sum(_SIZES)


def columns(block: str) -> slice:
    """Where ``block``'s fields lie in a row."""
    i = [name for name, _ in BLOCKS].index(block)
    return slice(START[block], START[block] + _SIZES[i])


# --- the formulas (numpy, numba and LinearForm evaluate them alike) ----------------------------------------


def normalised(x: Any, mean: Any, invstd: Any) -> Any:
    """xhat."""
    return (x - mean) * invstd


def oracle_y(xhat: Any, g: Any, beta: Any) -> Any:
    return g * xhat + beta


def oracle_dx(xhat: Any, d: Any, scale: Any, dbeta_m: Any, dot_m: Any, batch: bool) -> Any:
    """dx fresh: through the batch statistics, or (they are inputs) not."""
    if batch:
        return scale * ((d - dbeta_m) - xhat * dot_m)
    return scale * d


def xhat_error(axhat: Any, m: Terms) -> Any:
    return m.a1 + axhat * m.b1


def finished(b: Any, acc: Any, add: bool, m: Terms) -> Any:
    """A per-element bound made whole: a subnormal step of the output, under 'add' the rounding of prior +
    gradient, and the model's safety factor."""
    b = b + m.td
    if add:
        b = b + m.ud * abs(acc)
    return m.sf * b


def bound_y(axhat: Any, y: Any, ag: Any, m: Terms) -> Any:
    """y = g xhat + beta: |g| e_xhat + u (|g xhat| + |y|), the subnormals, the result's rounding."""
    gx = ag * axhat
    b = ag * xhat_error(axhat, m) + m.u * (gx + abs(y)) + m.ty
    b = b + m.ud * abs(y)
    return finished(b, y, False, m)


def bound_dx(axhat: Any, d: Any, fresh: Any, acc: Any, batch: bool, add: bool, m: Terms) -> Any:
    """dx = g invstd (dy - dbeta/M - xhat dgamma/M): the three terms' errors (dx_terms_error), rel + 2 u of |dx|
    for the scaling (alone where the statistics are inputs), the subnormals, the result's rounding."""
    scaling = abs(fresh) * m.b1
    b = m.agi * dx_terms_error(axhat, d, m) + scaling if batch else scaling
    b = b + (m.ud * abs(fresh) + m.tx)
    return finished(b, acc, add, m)


def dx_terms_error(axhat: Any, d: Any, m: Terms) -> Any:
    """The error of dy - dbeta/M - xhat dgamma/M: its terms' errors (the product's second-order term included)
    and 2 u of their magnitudes for the subtractions."""
    e_xhat = xhat_error(axhat, m)
    t3 = axhat * m.k1
    e_t3 = e_xhat * m.k1 + axhat * m.k2 + e_xhat * m.k2
    e_inner = m.e0 + e_t3 + m.ua2 * t3 + m.u2 * (abs(d) + m.t2 + t3)
    return e_inner + m.tiny3  # the float16 kernel rounds each of its three terms, maybe to a subnormal


def y_form(f: YForm, axhat: Any, ay: Any) -> Any:
    return f.one + f.axhat * axhat + f.ay * ay


def dx_form(f: DxForm, axhat: Any, ad: Any, af: Any, aa: Any) -> Any:
    return f.one + f.axhat * axhat + f.ad * ad + f.af * af + f.aa * aa


class V1Terms(NamedTuple):
    """Per channel, what BatchNorm_v1's kernel adds to BatchNorm's bound on dx (error_model.v1_terms): v1 forms
    dx as three terms, each with its own invstd factor and the reciprocal ``scale = float(C) / float(size)``,
    summed after they are rounded, so their roundings do not cancel as a common factor's would."""

    agi: Any  # |g| inv
    c0: Any  # per channel: (u + G_dy) mean|dy| + (5 u + rel_scale) |dbeta|/M + tmp's k1 (shift + G_c E|xhat|)
    cd: Any  # per |dy|: T1's invstd rounding, not shared with T3
    cx: Any  # per |xhat|: gvar's extra per-term roundings and T3's (7 u + rel_scale) |dgamma|/M
    sf: Any  # SAFETY in the deterministic model, 1 in the probabilistic one


def v1_dx_extra(axhat: Any, d: Any, m: V1Terms) -> Any:
    """BatchNorm_v1's dx beyond BatchNorm's bound (added to bound_dx's, for sym-v1 only)."""
    return m.sf * m.agi * (m.c0 + m.cd * abs(d) + m.cx * axhat)


#: The formulas that call one another (the kernels register them with numba).
SHARED = (normalised, oracle_y, oracle_dx, xhat_error, finished, bound_y, bound_dx, dx_terms_error, y_form, dx_form)


# --- linear forms ------------------------------------------------------------------------------------------


class LinearForm:
    """c[0] + c[1] v1 + ... + c[n] vn in magnitudes v (each >= 0): a bound formula evaluated on these gives its
    expansion, the same non-negative terms summed in another order.  Only sums and constant factors occur in
    the bounds (abs of a magnitude is itself); a coefficient that is still None is 0."""

    __array_ufunc__ = None  # numpy arrays defer to the reflected operators below

    def __init__(self, c: tuple[Any, ...]) -> None:
        self.c = c

    @classmethod
    def magnitudes(cls, n: int) -> list[LinearForm]:
        return [cls(tuple(1.0 if j == i else None for j in range(n + 1))) for i in range(1, n + 1)]

    def __add__(self, other: Any) -> LinearForm:
        if isinstance(other, LinearForm):
            return LinearForm(tuple(_sum(a, b) for a, b in zip(self.c, other.c, strict=True)))
        return LinearForm((_sum(self.c[0], other), *self.c[1:]))

    __radd__ = __add__

    def __mul__(self, factor: Any) -> LinearForm:
        return LinearForm(tuple(None if a is None else a * factor for a in self.c))

    __rmul__ = __mul__

    def __abs__(self) -> LinearForm:
        return self


def _sum(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else a + b


def linear_forms(ag: np.ndarray, m: Terms, batch: bool, add: bool) -> tuple[YForm, DxForm]:
    """One model's bounds on y and dx per channel as linear forms in the per-element magnitudes: bound_y and
    bound_dx expanded.  NaN (never used) on a channel where a factor is not finite."""
    with ignoring("invalid", "over"):
        axhat, ay = LinearForm.magnitudes(2)
        y = bound_y(axhat, ay, ag, m).c
        axhat, ad, af, aa = LinearForm.magnitudes(4)
        dx = bound_dx(axhat, ad, af, aa, batch, add, m).c
        both = np.zeros((len(y) + len(dx), len(ag)))
        for i, c in enumerate((*y, *dx)):
            if c is not None:
                both[i] = c
        usable = np.all(np.isfinite(both) & (both >= 0), axis=0)
        both = np.where(usable, both, np.nan)
    return YForm(*both[: len(y)]), DxForm(*both[len(y) :])

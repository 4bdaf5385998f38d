"""Exact metamorphic relations: two BatchNorm calls whose results must agree bit for bit, no oracle needed.

They check MXNet against itself where no error bound could: a float kernel with a fixed order of
operations scales *exactly* when its inputs scale by powers of two, as long as nothing rounds in the
subnormal range or overflows.  The relations: ``scale-data`` (x * 2^k with eps * 4^k), ``scale-head``
(dy * 2^k), ``scale-affine`` (gamma and beta * 2^k), ``permute-channels`` and ``repeat``.

Where a scaling would not be exact, ``scaling_range`` works out which k keep every intermediate of
the original and the scaled call in the normal range, and ``parameters`` admits only those; results
whose own last rounding is subnormal or overflows are left out, element by element (``check``).
Nothing else is excused.  What each relation keeps and scales is in the documentation's semantics page.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, PRIOR_FIELDS, QUANTITIES, Case, Outputs
from bnprops.model.scaling_range import FORMATS, Family, admissible_range, eps_as_kernel_reads, families

# ---------------------------------------------------------------------------------------------------
# Judging two results


@dataclasses.dataclass(frozen=True)
class Violation:
    """Where the second call's ``quantity`` is not what the relation makes of the first call's."""

    relation: str
    quantity: str
    count: int  # elements that break the relation
    size: int
    index: tuple[int, ...]  # the worst of them (largest distance in ulps)
    expected: float
    actual: float
    expected_bits: str
    actual_bits: str
    ulps: float
    detail: str = ""
    kind: str = "relation"

    def describe(self) -> str:
        if self.detail and not self.size:
            return f"{self.relation}: {self.quantity}: {self.detail}"
        apart = "signs of zero differ" if self.ulps == 0 else f"{self.ulps:g} ulps apart"
        return (
            f"{self.relation}: {self.quantity}: {self.count} of {self.size} elements break it; worst at index "
            f"{self.index} ({apart})\n"
            f"    expected: {self.expected!r} ({self.expected_bits})\n"
            f"    actual:   {self.actual!r} ({self.actual_bits})" + (f"\n    {self.detail}" if self.detail else "")
        )


def _bits(value: np.ndarray) -> str:
    width = value.dtype.itemsize * 2
    return f"0x{int(value.view(f'u{value.dtype.itemsize}')):0{width}x}"


def _ordered(arr: np.ndarray) -> np.ndarray:
    """Bit patterns as integers ordered like the floats they encode (adjacent floats differ by 1)."""
    size = arr.dtype.itemsize
    ints = arr.view(f"i{size}").astype(np.int64)
    magnitude = ints & ((1 << (8 * size - 1)) - 1)
    return np.where(ints < 0, -magnitude, magnitude)


def compare_scaled(
    relation: str,
    quantity: str,
    first: np.ndarray,
    second: np.ndarray,
    shift: int,
    *,
    prior: np.ndarray | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Violation | None:
    """Is ``second`` bit for bit ``first * 2^shift`` (after ``transform``, e.g. a permutation)?

    NaN must meet NaN, and +-inf the same infinity. With ``shift`` nonzero an element is not judged
    where the last rounding of either result falls short of twice the smallest normal number or the
    scaled value overflows (that rounding is not exact there); with a ``prior`` (grad_req 'add', the
    first call's buffer) also where the gradient added to it may have been subnormal or may overflow.
    """
    a = np.asarray(first)
    b = np.asarray(second)
    if transform is not None:
        a = transform(a)
        prior = None if prior is None else transform(prior)
    if a.shape != b.shape or a.dtype != b.dtype:
        detail = f"shape/dtype {b.dtype}{b.shape}, expected {a.dtype}{a.shape}"
        return Violation(relation, quantity, 0, 0, (), math.nan, math.nan, "", "", math.inf, detail)
    if a.size == 0:
        return None
    fmt = FORMATS[str(a.dtype)]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    with ignoring("over", "invalid"):
        scaled = np.ldexp(a64, shift)
        expected = scaled.astype(a.dtype)
    judged = np.ones(a.shape, dtype=bool)
    finite = np.isfinite(a64)
    if shift != 0:
        zone = 2 * fmt.normal_min
        tiny_a = finite & (a64 != 0) & (np.abs(a64) < zone)
        tiny_e = finite & (scaled != 0) & (np.abs(scaled) < zone)
        over = finite & (np.abs(scaled) > fmt.largest)
        under = finite & (a64 == 0) & (b64 != 0) & (np.abs(b64) < zone * max(1.0, 2.0**shift))
        # The first call's last rounding overflowed where the second's (2^shift times as large) did not.
        with ignoring("over"):
            back = np.abs(np.ldexp(b64, -shift))
        overflowed = np.isinf(a64) & np.isfinite(b64) & (np.sign(a64) == np.sign(b64))
        overflowed &= back >= fmt.largest * (1 - 2 * fmt.unit)
        judged &= ~(tiny_a | tiny_e | over | under | overflowed)
    if prior is not None and shift != 0:
        # out = prior + gradient: the gradient (out - prior, to within half an ulp of out) must be normal.
        p64 = prior.astype(np.float64)
        with ignoring("over", "invalid"):
            ulp = np.spacing(np.abs(a).astype(a.dtype)).astype(np.float64)
            fresh = np.abs(a64 - p64) - ulp
            top = (np.abs(a64 - p64) + ulp) * max(1.0, 2.0**shift)
        need = 2 * fmt.normal_min * max(1.0, 2.0**-shift)
        judged &= ~(finite & (p64 != 0) & ~((fresh >= need) & (top <= fmt.largest / 2)))
    same = (expected.view(f"u{a.dtype.itemsize}") == b.view(f"u{a.dtype.itemsize}")) | (np.isnan(a64) & np.isnan(b64))
    broken = judged & ~same
    if not broken.any():
        return None
    with ignoring("invalid"):
        distance = np.abs(_ordered(expected) - _ordered(b)).astype(np.float64)
    distance[np.isnan(a64) != np.isnan(b64)] = math.inf
    distance = np.where(broken, distance, -1.0)
    flat = int(np.argmax(distance))
    idx = tuple(int(i) for i in np.unravel_index(flat, a.shape))
    return Violation(
        relation,
        quantity,
        int(broken.sum()),
        int(a.size),
        idx,
        float(expected[idx]),
        float(b[idx]),
        _bits(expected[idx]),
        _bits(b[idx]),
        float(distance[idx]),
        detail=f"first call: {float(a[idx])!r} ({_bits(a[idx])}), scaled by 2^{shift}" if shift else "",
    )


# ---------------------------------------------------------------------------------------------------
# The relations


@dataclasses.dataclass(frozen=True)
class Scale:
    """The power of two a scaling relation multiplies by."""

    k: int

    def __str__(self) -> str:
        return f"k={self.k}"


@dataclasses.dataclass(frozen=True)
class Permutation:
    order: tuple[int, ...]

    def __str__(self) -> str:
        return f"channels in the order {list(self.order)}"


@dataclasses.dataclass(frozen=True)
class Again:
    def __str__(self) -> str:
        return "the same call again"


Params = Any

#: Arrays shaped like x (the rest are per channel).
PER_ELEMENT = frozenset({"x", "dy", "prior_dx", "y", "dx"})


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a relation makes of the first call's results: per quantity, the first call's array (its
    channels put in ``order``, if given) times 2^shift, bit for bit. ``priors`` are the first call's
    'add' buffers: where a gradient added to one may have been subnormal, the sum is not judged."""

    shifts: Mapping[str, int]
    priors: Mapping[str, np.ndarray]
    order: tuple[int, ...] | None = None
    channel_axis: int = 0

    def axis(self, name: str) -> int:
        """The axis ``order`` applies to in array ``name``: the channel axis, or 0 for per-channel arrays."""
        return self.channel_axis if name in PER_ELEMENT else 0

    def reorder(self, name: str, arr: np.ndarray) -> np.ndarray:
        return arr if self.order is None else np.take(arr, np.asarray(self.order), axis=self.axis(name))


class Relation:
    """Two calls: the case, and ``transform(case, params)``; ``check`` says where their results break it."""

    name: str = ""
    statement: str = ""

    def parameters(self, case: Case, choice: int = 0) -> Params | None:
        """The parameters numbered ``choice`` (modulo how many there are; 0 is the simplest) for ``case``,
        or None if the relation says nothing about the case (no exact instance of it exists)."""
        raise NotImplementedError

    def transform(self, case: Case, params: Params) -> Case:
        raise NotImplementedError

    def expectation(self, case: Case, params: Params) -> Expectation:
        raise NotImplementedError

    def check(self, case: Case, first: Outputs, second: Outputs, params: Params) -> list[Violation]:
        expected = self.expectation(case, params)
        found: list[Violation] = []
        for q in QUANTITIES:
            if q not in first and q not in second:
                continue
            if (q in first) != (q in second):
                which = "the second call" if q in first else "the first call"
                found.append(
                    Violation(
                        self.name, q, 0, 0, (), math.nan, math.nan, "", "", math.inf, f"{which} did not return it"
                    )
                )
                continue
            move = None if expected.order is None else functools.partial(expected.reorder, q)
            shift, prior = expected.shifts.get(q, 0), expected.priors.get(q)
            found += filter(
                None, [compare_scaled(self.name, q, first[q], second[q], shift, prior=prior, transform=move)]
            )
        return found


def _priors(case: Case) -> dict[str, np.ndarray]:
    return {GRADIENT_OF[t]: p for t in GRAD_TARGETS if (p := case.prior(t)) is not None}


class ScalingRelation(Relation):
    """A relation that multiplies some inputs by powers of two: 2^(e k) for each input's exponent e."""

    def inputs(self, case: Case) -> dict[str, int]:
        """The array fields it scales, with their exponents (prior gradient buffers included)."""
        raise NotImplementedError

    def shifts(self, case: Case) -> dict[str, int]:
        """Per quantity, e such that the quantity scales by 2^(e k)."""
        raise NotImplementedError

    def eps_exponent(self) -> int:
        return 0

    def _eps_scales(self, case: Case, k: int) -> bool:
        """Does MXNet read eps * 4^k as exactly 4^k times what it reads for eps (both the double and DType)?"""
        e = self.eps_exponent() * k
        if e == 0 or case.eps == 0:
            return True
        scaled = math.ldexp(case.eps, e)
        if not math.isfinite(scaled) or math.ldexp(scaled, -e) != case.eps:
            return False
        # (eps_as_kernel_reads keeps the values in use: parsing is most of what drawing a k costs)
        d0, t0 = eps_as_kernel_reads(case.eps, case.dtype)
        d1, t1 = eps_as_kernel_reads(scaled, case.dtype)
        if d1 != math.ldexp(d0, e) or t1 != math.ldexp(t0, e):
            return False
        # Normal in DType (float16 kernels may truncate instead of rounding: both scale exactly there).
        fmt = FORMATS[case.dtype]
        return all(t == 0 or 2 * fmt.normal_min <= abs(t) <= fmt.largest / 2 for t in (t0, t1))

    def candidates(self, case: Case) -> list[int]:
        """Every admissible k != 0, simplest (smallest |k|, positive first) first."""
        window = admissible_range(case, self.name, self.inputs(case))
        if window is None:
            return []
        ks = [k for k in range(window[0], window[1] + 1) if k != 0 and self._eps_scales(case, k)]
        return sorted(ks, key=lambda k: (abs(k), -k))

    def parameters(self, case: Case, choice: int = 0) -> Scale | None:
        ks = self.candidates(case)
        return Scale(ks[choice % len(ks)]) if ks else None

    def transform(self, case: Case, params: Scale) -> Case:
        changes: dict[str, Any] = {}
        for name, e in self.inputs(case).items():
            arr = getattr(case, name)
            if arr is None or e == 0:
                continue
            scaled = np.ldexp(arr.astype(np.float64), e * params.k).astype(arr.dtype)
            back = np.ldexp(scaled.astype(np.float64), -e * params.k)
            if not np.array_equal(back, arr.astype(np.float64), equal_nan=True):
                raise ValueError(f"{self.name}: {name} * 2^{e * params.k} is not exact in {arr.dtype}")
            changes[name] = scaled
        if self.eps_exponent():
            changes["eps"] = math.ldexp(case.eps, self.eps_exponent() * params.k)
        return case.with_(**changes)

    def expectation(self, case: Case, params: Scale) -> Expectation:
        return Expectation({q: e * params.k for q, e in self.shifts(case).items()}, _priors(case))


class ScaleData(ScalingRelation):
    """x * 2^k and eps * 4^k (moving_mean * 2^k and moving_var * 4^k too) leave y, dgamma and dbeta
    bit-identical and scale dx by 2^-k; mean and the moving mean scale by 2^k, invstd by 2^-k, the
    moving variance by 4^k. momentum is unchanged.

    Why exact: every value the kernels form from x is a product, quotient, square root or sum whose
    operands scale by powers of two: the mean by 2^k, x - mean by 2^k, the variance and var + eps by
    4^k, sqrt(var + eps) by 2^k, invstd by 2^-k; xhat = (x - mean) * invstd is then the very same
    real number and rounds to the same bits, and so are y, dgamma = sum(dy (x - mean)) invstd and
    the projection (x - mean) * sum(...) invstd^2 / M, while dx = (...) * invstd * gamma scales by
    2^-k. Rounding to nearest commutes with scaling by 2^k wherever the result is a normal number.

    Where not: eps reaches the kernel as ``str(eps)`` parsed by dmlc's not-correctly-rounded ParseFloat
    (then rounded to DType for var + eps): only k with parsed(eps 4^k) = 4^k parsed(eps) in both are
    drawn. A product, quotient or conversion whose result is subnormal in either call (float16's
    x - mean, (x - mean) dy and var + eps in the native kernel; invstd^2 or the moving statistics'
    products in float32) rounds differently: the kernels' intermediates must stay normal (``families``); an
    overflow anywhere, likewise; results whose last rounding is subnormal are not judged.
    """

    name = "scale-data"
    statement = "x * 2^k, eps * 4^k, moving_mean * 2^k, moving_var * 4^k: y, dgamma, dbeta same bits; dx * 2^-k"

    def inputs(self, case: Case) -> dict[str, int]:
        return {"x": 1, "moving_mean": 1, "moving_var": 2, "prior_dx": -1}

    def eps_exponent(self) -> int:
        return 2

    def shifts(self, case: Case) -> dict[str, int]:
        return {
            "dx": -1,
            "moving_mean": 1,
            "moving_var": 2,
            "forward_moving_mean": 1,
            "forward_moving_var": 2,
            "mean": 1,
            "invstd": -1,
        }


class ScaleHead(ScalingRelation):
    """dy * 2^k scales dx, dgamma and dbeta by 2^k and leaves the forward (y, mean, invstd, the moving
    statistics, gamma) bit-identical.

    Why exact: the backward is linear in dy and forms sum(dy), sum(dy (x - mean)), their products
    with invstd and 1/M, the projection (x - mean) * sum(...) invstd^2 / M, dy - mean(dy) - projection
    and its product with invstd * gamma: each scales by 2^k. Nothing the forward computes reads dy.

    Where not: dy * 2^k must be exact in DType; every product, quotient and conversion above must be
    normal in both calls (float16: (x - mean) dy, the projection and dy - mean(dy) are rounded to
    half_t); results whose last rounding is subnormal or overflows are not judged. A gradient
    accumulated into a buffer (grad_req 'add') scales only if the buffer does: its prior scales too.
    """

    name = "scale-head"
    statement = "dy * 2^k: dx, dgamma, dbeta * 2^k; the forward the same bits"

    def inputs(self, case: Case) -> dict[str, int]:
        return {"dy": 1, "prior_dx": 1, "prior_dgamma": 1, "prior_dbeta": 1}

    def shifts(self, case: Case) -> dict[str, int]:
        return {"dx": 1, "dgamma": 1, "dbeta": 1}


class ScaleAffine(ScalingRelation):
    """fix_gamma=False: gamma * 2^k and beta * 2^k scale y and dx by 2^k and leave dgamma, dbeta, the
    statistics and the moving statistics bit-identical (gamma itself comes back scaled).
    fix_gamma=True: gamma * 2^k changes no result at all: the kernels use 1 for gamma (and write 1.0
    into it). beta is left alone then, as y = xhat + beta is not a multiple of beta.

    Why exact: y = xhat * gamma + beta is formed from xhat (the same in both calls) by a product and a
    sum whose operands all scale by 2^k; dx = (...) * (invstd * gamma) likewise. dgamma = sum(dy
    (x - mean)) invstd and dbeta = sum(dy) never read gamma or beta.

    Where not: gamma, beta (float32 for float16 data) and the prior dx must scale exactly; xhat * gamma
    (half_t in the float16 kernel) and invstd * gamma must stay normal; y and dx whose last rounding is
    subnormal or overflows are not judged.
    """

    name = "scale-affine"
    statement = "gamma, beta * 2^k (fix_gamma=False): y, dx * 2^k; fix_gamma=True: gamma * 2^k changes nothing"

    def inputs(self, case: Case) -> dict[str, int]:
        if case.fix_gamma:
            return {"gamma": 1}
        return {"gamma": 1, "beta": 1, "prior_dx": 1}

    def shifts(self, case: Case) -> dict[str, int]:
        if case.fix_gamma:
            return {}
        return {"y": 1, "dx": 1, "gamma": 1}


class PermuteChannels(Relation):
    """Permuting the channels (x and dy along the channel axis; gamma, beta, the moving statistics and
    the prior gradients alike) permutes every result the same way: y and dx along the channel axis,
    every per-channel result by index.

    Why exact: each channel's statistics, gradients and updates read only that channel's elements and
    parameters, in an order fixed by the shape alone; no value crosses channels.

    Where not: nowhere in the arithmetic. A kernel that blocks channels (oneDNN's nChw8c/16c layouts)
    or splits work over threads by channel could sum a channel in an order that depends on its
    position: that would be a finding, not an exception.
    """

    name = "permute-channels"
    statement = "channels permuted: every result permuted the same way, bit for bit"

    def parameters(self, case: Case, choice: int = 0) -> Permutation | None:
        c = case.channels
        if c < 2:
            return None
        if choice == 0:
            return Permutation(tuple(range(c - 1, -1, -1)))
        order = tuple(int(i) for i in np.random.default_rng(choice).permutation(c))
        if order == tuple(range(c)):
            order = order[1:] + order[:1]
        return Permutation(order)

    def expectation(self, case: Case, params: Permutation) -> Expectation:
        return Expectation({}, {}, params.order, case.channel_axis)

    def transform(self, case: Case, params: Permutation) -> Case:
        move = self.expectation(case, params).reorder
        names = ("x", "dy", "gamma", "beta", "moving_mean", "moving_var", *PRIOR_FIELDS.values())
        return case.with_(**{n: move(n, a) for n in names if (a := getattr(case, n)) is not None})


class Repeat(Relation):
    """The same call twice gives the same bits, NaN for NaN.

    Why exact: the kernels are deterministic functions of their inputs (a fixed order of operations
    for a given shape and thread count). Where not: nowhere; a difference means state leaking from one
    call into the next (a reused executor, buffer or cache) or a nondeterministic reduction.
    """

    name = "repeat"
    statement = "the same call twice: the same bits"

    def parameters(self, case: Case, choice: int = 0) -> Again:
        return Again()

    def transform(self, case: Case, params: Again) -> Case:
        return case

    def expectation(self, case: Case, params: Again) -> Expectation:
        return Expectation({}, {})


RELATIONS: dict[str, Relation] = {
    r.name: r for r in (ScaleData(), ScaleHead(), ScaleAffine(), PermuteChannels(), Repeat())
}


# ---------------------------------------------------------------------------------------------------
# Running them


@dataclasses.dataclass(frozen=True)
class RelationOutcome:
    relation: str
    case: Case
    params: Params
    second_case: Case
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def message(self, *, label: str = "MXNet") -> str:
        relation = RELATIONS.get(self.relation)
        lines = [
            f"{label} breaks relation {self.relation!r} ({relation.statement if relation else ''}) with "
            f"{self.params} on",
            f"  first:  {self.case.describe()}",
            f"  second: {self.second_case.describe()}",
        ]
        lines += ["  " + v.describe().replace("\n", "\n  ") for v in self.violations]
        lines.append(
            f"The second case is bnprops.judging.relations.RELATIONS[{self.relation!r}]"
            f".transform(case, {self.params!r}) "
            "of the case below (Case.from_json):"
        )
        lines.append(self.case.to_json() if self.case.x.size <= 4096 else "(too large to print; see the description)")
        return "\n".join(lines)


def run_relation(relation: Relation, case: Case, params: Params, runner: Callable[[Case], Outputs]) -> RelationOutcome:
    """Run both calls through ``runner`` (the first, then the second) and check the relation."""
    second_case = relation.transform(case, params)
    first = runner(case)
    second = runner(second_case)
    found = relation.check(case, first, second, params)
    return RelationOutcome(relation.name, case, params, second_case, tuple(found))


__all__ = [
    "PER_ELEMENT",
    "RELATIONS",
    "Expectation",
    "Family",
    "Relation",
    "RelationOutcome",
    "Violation",
    "compare_scaled",
    "families",
    "run_relation",
]

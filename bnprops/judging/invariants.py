"""What must hold of BatchNorm's results whatever the error bounds say, checked on every case beside the oracle.

The bounds judge values; some failures are exact and no bound sees them, so they are checked exactly:

* **a moving variance is never negative** (it averages a variance with a non-negative prior);
* **an empty batch leaves the moving statistics exactly as they were** (nothing to average; the
  oracle's own mean of nothing is NaN, so without this a NaN update would pass);
* **finite in, finite out**, except where a correct kernel may legitimately produce NaN or inf;
* **a gradient requested with 'null' leaves its buffer alone**, bit for bit (``case.null_sentinel``);
* **fix_gamma=False leaves the gamma array alone**, bit for bit.

A violation is a mismatch of kind "invariant", and a known deviation may explain it.  Why each holds,
and each exclusion from finite-in-finite-out derived, is in the documentation's page on judging.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.comparator import Mismatch
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, NULL_BUFFER_OF, QUANTITIES, Case, Outputs
from bnprops.model.error_model import SAFETY, accumulation_dtype, unit_roundoff
from bnprops.model.evaluation import Evaluation, evaluate
from bnprops.model.exactness import channel_sum
from bnprops.model.oracle import eps_as_applied, overflow_threshold, per_channel

#: The results computed through invstd (dgamma only without fix_gamma).
_THROUGH_INVSTD = frozenset({"y", "dx", "dgamma", "invstd"})
#: Results that copy an input (or, gamma under fix_gamma, are the constant 1).
_COPIES = frozenset({"gamma", "forward_moving_mean", "forward_moving_var"})
_TARGET_OF = {q: t for t, q in GRADIENT_OF.items()}


def violations(case: Case, actual: Outputs, *, evaluation: Evaluation | None = None) -> list[Mismatch]:
    """Every invariant the results break: one mismatch per invariant and quantity (``evaluation``: the case's,
    if made; read only where a result is not finite)."""
    found: list[Mismatch] = []
    if "moving_var" in actual and 0 <= case.momentum <= 1:
        after = np.asarray(actual["moving_var"], dtype=np.float64)
        negative = (after < 0) & (case.moving_var >= 0)
        found += _mismatch("moving_var", negative, after, np.zeros_like(after), "a moving variance below 0")
    if case.reduction_length == 0:
        for q, before in (("moving_mean", case.moving_mean), ("moving_var", case.moving_var)):
            if q in actual:
                after = np.asarray(actual[q], dtype=np.float64)
                prior = before.astype(np.float64)
                changed = ~((after == prior) | (np.isnan(after) & np.isnan(prior)))
                found += _mismatch(q, changed, after, prior, "an empty batch changed the moving statistics")
    found += _finite_in_finite_out(case, actual, evaluation)
    for target in GRAD_TARGETS:
        key = NULL_BUFFER_OF[target]
        if case.request(target) == "null" and key in actual:
            what = f"grad_req 'null' for {target}, yet its buffer ({key}) lost the sentinel it was filled with"
            found += _kept(GRADIENT_OF[target], actual[key], case.null_sentinel(target), what)
    if not case.fix_gamma and "gamma" in actual:
        found += _kept("gamma", actual["gamma"], case.gamma, "fix_gamma=False, yet the call wrote the gamma array")
    return found


def _finite_in_finite_out(case: Case, actual: Outputs, evaluation: Evaluation | None) -> list[Mismatch]:
    found: list[Mismatch] = []
    ev = evaluation
    facts: _Facts | None = None
    for q in QUANTITIES:
        if q not in actual:
            continue
        after = np.asarray(actual[q])
        nonfinite = _nonfinite(after)
        if not nonfinite.any():  # the common case: one pass, nothing else computed
            continue
        if facts is None:
            facts = _Facts(ev or evaluate(case))
        expected = facts.evaluation.expected.get(q)
        if expected is None or expected.shape != after.shape:
            continue  # the comparator reports a quantity that should not be there or is misshapen
        bad = nonfinite & _finite_claimed(facts, q, expected, nonfinite)
        what = "non-finite from finite input, where the exact value ('must be') is finite and representable"
        found += _mismatch(q, bad, after.astype(np.float64), expected, what)
    return found


def _nonfinite(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float16:  # numpy's float16 isfinite is 7x slower than looking at the exponent bits
        return np.asarray(values.view(np.uint16) & 0x7C00 == 0x7C00)
    return np.asarray(~np.isfinite(values))


class _Facts:
    """The per-channel facts the finiteness invariant reads, each computed once, where a result is not finite."""

    def __init__(self, ev: Evaluation) -> None:
        self.evaluation, self.case = ev, ev.case

    @functools.cached_property
    def x_finite(self) -> np.ndarray:
        return _per_channel_all(self.case, ~_nonfinite(self.case.x))

    @functools.cached_property
    def dy_finite(self) -> np.ndarray:
        return _per_channel_all(self.case, ~_nonfinite(self.case.dy))

    @functools.cached_property
    def normaliser_in_range(self) -> np.ndarray:
        return _normaliser_in_range(self.evaluation)

    @functools.cached_property
    def accumulations(self) -> list[tuple[frozenset[str], np.ndarray]]:
        return _accumulations(self.evaluation)


def _finite_claimed(facts: _Facts, q: str, expected: np.ndarray, nonfinite: np.ndarray) -> np.ndarray:
    """Where ``q`` must be finite (see the module docstring), cheapest conditions first."""
    case = facts.case
    threshold = overflow_threshold(facts.evaluation.dtypes[q])
    with ignoring("invalid"):
        claim: np.ndarray = np.abs(expected) < threshold  # (c) without the bound: rounds to a finite number
    if not _copies_or_constant(case, q):
        gradient = q in _TARGET_OF
        claim &= _spread(case, _inputs_finite(facts, gradient=gradient), claim.shape)
        prior = case.prior(_TARGET_OF[q]) if gradient else None
        if prior is not None:
            claim &= np.isfinite(prior)
        if q in _THROUGH_INVSTD:
            claim &= _spread(case, facts.normaliser_in_range, claim.shape)
        if (claim & nonfinite).any():  # only then the sums, a few passes over the data
            claim &= _spread(case, ~_accumulation_overflows(case, q, facts.accumulations), claim.shape)
    if (claim & nonfinite).any():  # only then the bound, which costs as much as the comparison
        with ignoring("invalid", "over"):
            claim &= np.abs(expected) + facts.evaluation.bound[q] < threshold
    return claim


def _copies_or_constant(case: Case, q: str) -> bool:
    """Is ``q`` an input as it was (the moving statistics where nothing updates them) or a constant (dgamma
    under fix_gamma)? Then its exact value, prior included, decides alone."""
    moving = q in ("moving_mean", "moving_var") and not case.uses_batch_stats
    return q in _COPIES or moving or (q == "dgamma" and case.fix_gamma)


def _spread(case: Case, channels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A per-channel mask over a quantity of ``shape`` (x's shape, or one value per channel)."""
    if shape == case.shape:
        return np.broadcast_to(per_channel(case, channels).astype(bool), shape)
    return channels


def _per_channel_all(case: Case, mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask.all(axis=case.reduce_axes))  # an empty channel: True


def _inputs_finite(facts: _Facts, *, gradient: bool) -> np.ndarray:
    """(a), per channel: x (and dy for the gradients), the parameters the call reads, eps and momentum."""
    case = facts.case
    ok = facts.x_finite & facts.dy_finite if gradient else facts.x_finite
    for name in ("beta", "moving_mean", "moving_var") + (() if case.fix_gamma else ("gamma",)):
        ok = ok & np.isfinite(getattr(case, name))
    return np.asarray(ok & math.isfinite(case.eps) & math.isfinite(case.momentum))


def _normaliser_in_range(ev: Evaluation) -> np.ndarray:
    """(b), per channel: var + eps, as the kernel forms it from any variance and DType(eps) within their
    bounds, rounds to a positive finite number in the type it is formed in (float16 for float16 data,
    else AccReal)."""
    case = ev.case
    if case.uses_batch_stats and case.reduction_length == 0:
        return np.ones(case.channels, dtype=bool)  # nothing is normalised (invstd's 0/0 falls under (c))
    st = ev.propagated("deterministic")
    # The error model's bound on var and DType(eps), times its SAFETY (as the indeterminate channels'),
    # and the AccReal addition's own rounding.
    reach, ua = SAFETY * (st.e_var + st.e_eps), unit_roundoff(accumulation_dtype(case.dtype))
    kind = np.float16 if case.dtype == "float16" else np.dtype(accumulation_dtype(case.dtype)).type
    with ignoring("over", "invalid"):
        low = ((st.s2 - reach) * (1 - ua)).astype(kind)
        high = ((st.s2 + reach) * (1 + ua)).astype(kind)
        return np.asarray((low > 0) & np.isfinite(high))


def _accumulation_overflows(case: Case, q: str, sums: list[tuple[frozenset[str], np.ndarray]]) -> np.ndarray:
    """Per channel: may a sum (or xhat) that ``q`` is computed from overflow AccReal? (see the docstring)"""
    acc = accumulation_dtype(case.dtype)
    nu = case.reduction_length * unit_roundoff(acc)
    limit = float(np.finfo(acc).max) * (1 - nu) if nu < 1 else 0.0  # max / (1 + gamma_M)
    over = np.zeros(case.channels, dtype=bool)
    for feeds, total in sums:
        if q in feeds:
            over |= ~(total < limit)
    return over


def _accumulations(ev: Evaluation) -> list[tuple[frozenset[str], np.ndarray]]:
    """The AccReal sums' sums of |terms| (and the largest |xhat|) per channel, with the results each feeds."""
    case = ev.case
    if not case.x.size:
        return []  # no terms (and invstd is 0/0): nothing to overflow
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    axis = case.channel_axis
    mean, var = ev.statistics
    with ignoring("over", "invalid", "divide"):
        centred = np.abs(x - per_channel(case, mean))
        invstd = 1 / np.sqrt(var + eps_as_applied(case))
        dgamma = {"dgamma", "dx"} if not case.fix_gamma else {"dx"}
        found = [
            (frozenset({"dbeta", "dx"}), channel_sum(np.abs(dy), axis)),
            (frozenset(dgamma), channel_sum(centred * np.abs(dy), axis) * np.maximum(invstd, 1)),
            (frozenset({"y", "dx"} | dgamma), _largest(case, centred) * invstd),
        ]
        if case.uses_batch_stats:
            normalised = {"y", "dx", "invstd", "moving_var"} | dgamma
            found.append((frozenset(normalised | {"mean", "moving_mean"}), channel_sum(np.abs(x), axis)))
            found.append((frozenset(normalised), channel_sum(centred * centred, axis)))
    return found


def _largest(case: Case, values: np.ndarray) -> np.ndarray:
    return np.asarray(values.max(axis=case.reduce_axes))


def _kept(quantity: str, after: np.ndarray, before: np.ndarray, what: str) -> list[Mismatch]:
    """A mismatch unless ``after`` holds ``before``'s bits, element for element."""
    after = np.asarray(after)
    if after.shape != before.shape:
        return _mismatch(quantity, np.ones(before.shape, dtype=bool), np.full(before.shape, np.nan), before, what)
    if after.dtype != before.dtype:  # float64 holds every float16 and float32 value exactly
        after64, before64 = after.astype(np.float64), before.astype(np.float64)
        changed = after64.view(np.uint64) != before64.view(np.uint64)
    else:
        width = np.dtype(f"u{before.dtype.itemsize}")
        changed = np.ascontiguousarray(after).view(width) != np.ascontiguousarray(before).view(width)
    return _mismatch(quantity, changed, after.astype(np.float64), before.astype(np.float64), what)


def _mismatch(quantity: str, bad: np.ndarray, actual: np.ndarray, wanted: np.ndarray, what: str) -> list[Mismatch]:
    if not bad.any():
        return []
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    with ignoring("invalid", "over"):
        error = float(abs(actual[idx] - wanted[idx]))
    return [
        Mismatch(
            quantity,
            "invariant",
            int(bad.sum()),
            bad.size,
            idx,
            float(wanted[idx]),
            float(actual[idx]),
            error,
            0.0,
            what,
            where=bad,
        )
    ]

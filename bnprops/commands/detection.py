"""How well the bounds catch a 0.5% error (``bnprops tightness``'s detection): the share of well-conditioned
cases (CONDITION_LIMIT) in which the oracle, with one quantity scaled by 1.005, is flagged. No MXNet needed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence

import numpy as np

from bnprops.base.selection import validate_choices
from bnprops.commands.tightness_cases import (
    DECADES,
    DEFAULT_EPS,
    Progress,
    check_decades,
    decade_label,
    draw_shape,
    percent,
    rng_for,
    stream_key,
    training_case,
)
from bnprops.judging.comparator import compare
from bnprops.model.case import DTYPES, WRITE_ALL, Case, Outputs
from bnprops.model.oracle import eps_as_applied, output_dtypes, reference, statistics
from bnprops.search.strategies import _values

#: The quantities a planted error is put into, and the dtypes detection covers.
DETECTED = ("y", "dx", "dgamma", "dbeta")
DETECTION_DTYPES = ("float32", "float64")
#: The planted error: the quantity scaled by 1 + PLANTED_ERROR.
PLANTED_ERROR = 0.005
#: Well-conditioned: sum of |terms| <= CONDITION_LIMIT |sum|.
CONDITION_LIMIT = 10.0
#: Goal: the share of well-conditioned cases in which a planted 0.5% error is flagged.
DETECTION_GOAL = 0.99


def correlated_head(rng: np.random.Generator, x: np.ndarray, axis: int, eps: float) -> np.ndarray:
    """dy = a xhat + b + noise, with a, b and the noise's scale drawn per channel (float64)."""
    xf = x.astype(np.float64)
    red = tuple(i for i in range(x.ndim) if i != axis)
    view = [1] * x.ndim
    view[axis] = x.shape[axis]
    mean = xf.mean(axis=red, keepdims=True)
    xhat = (xf - mean) / np.sqrt(((xf - mean) ** 2).mean(axis=red, keepdims=True) + eps)
    channels = x.shape[axis]

    def magnitude() -> np.ndarray:
        return np.asarray(10 ** rng.uniform(-0.3, 0.3, channels)).reshape(view)

    a = rng.choice([-1.0, 1.0], channels).reshape(view) * magnitude()
    b = rng.choice([-1.0, 1.0], channels).reshape(view) * magnitude()
    noise: np.ndarray = magnitude() * rng.standard_normal(x.shape)
    return np.asarray(a * xhat + b + noise)


def draw_detection_case(rng: np.random.Generator, decade: int, dtype: str) -> Case:
    """An ordinary case (learnable gamma, training, every gradient written) with a head correlated with xhat."""
    shape = draw_shape(rng, decade)
    arrays, _ = _values(rng, shape, 1, dtype, "ordinary", "random", WRITE_ALL)
    arrays["dy"] = correlated_head(rng, arrays["x"], 1, DEFAULT_EPS).astype(dtype)
    return training_case(arrays, DEFAULT_EPS, "ordinary/correlated")


def conditioning(case: Case, expected: Outputs | None = None) -> dict[str, float]:
    """sum of |terms| / |sum| per quantity in DETECTED, at the element (channel) with the largest |value|.

    y: g xhat and beta; dbeta: the dy; dgamma: the dy xhat; dx: dy, dbeta/M and xhat dgamma/M, the
    three terms inside the parentheses of dx = g invstd (dy - dbeta/M - xhat dgamma/M).  inf where
    the sum is 0.
    """
    expected = reference(case) if expected is None else expected
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    red, m = case.reduce_axes, case.reduction_length
    view = [1] * x.ndim
    view[case.channel_axis] = case.channels
    mean, var = statistics(case)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        invstd = 1 / np.sqrt(var + eps_as_applied(case))
        xhat = (x - mean.reshape(view)) * invstd.reshape(view)
        g = case.gamma.astype(np.float64).reshape(view)
        beta = case.beta.astype(np.float64).reshape(view)
        dbeta = dy.sum(axis=red)
        dot = (dy * xhat).sum(axis=red)
        terms = {
            "y": (np.abs(g * xhat) + np.abs(beta), g * xhat + beta),
            "dbeta": (np.abs(dy).sum(axis=red), dbeta),
            "dgamma": (np.abs(dy * xhat).sum(axis=red), dot),
            "dx": (
                np.abs(dy) + np.abs(dbeta / m).reshape(view) + np.abs(xhat * (dot / m).reshape(view)),
                dy - (dbeta / m).reshape(view) - xhat * (dot / m).reshape(view),
            ),
        }
    result = {}
    for q, (magnitude, total) in terms.items():
        magnitude_b = np.broadcast_to(magnitude, total.shape)
        at = np.unravel_index(int(np.argmax(np.abs(expected[q]))), expected[q].shape)
        s, t = float(abs(total[at])), float(magnitude_b[at])
        result[q] = t / s if s > 0 and math.isfinite(t) else math.inf
    return result


def planted_subject(case: Case, quantities: Iterable[str], relative_error: float = PLANTED_ERROR) -> Outputs:
    """The oracle's outputs rounded to the output dtypes, with ``quantities`` scaled by 1 + relative_error first."""
    planted = set(quantities)
    dtypes = output_dtypes(case)
    with np.errstate(over="ignore"):
        return {
            q: (v * (1 + relative_error) if q in planted else v).astype(dtypes[q]) for q, v in reference(case).items()
        }


@dataclasses.dataclass(frozen=True)
class DetectionRow:
    quantity: str
    dtype: str
    decade: int
    #: Well-conditioned cases, and how many were drawn to find them.
    n: int
    drawn: int
    #: Flagged as a mismatch of any kind, and beyond the deterministic bound alone.
    flagged: int
    flagged_deterministic: int

    @property
    def rate(self) -> float:
        return self.flagged / self.n if self.n else math.nan

    @property
    def rate_deterministic(self) -> float:
        return self.flagged_deterministic / self.n if self.n else math.nan


def rates(
    *,
    decades: Sequence[int] = DECADES,
    dtypes: Sequence[str] = DETECTION_DTYPES,
    cases_per_cell: int = 200,
    top_decade_cases: int | None = 50,
    seed: int = 0,
    relative_error: float = PLANTED_ERROR,
    max_draws_factor: int = 4,
    progress: Progress | None = None,
) -> list[DetectionRow]:
    """Per quantity x dtype x decade: in how many well-conditioned cases a planted error is flagged.

    Cases are drawn until every quantity has ``cases_per_cell`` well-conditioned ones (``top_decade_cases``
    at decade 6, where a case costs a second), or ``max_draws_factor`` times that many were drawn.  Each
    case carries the error in all four quantities at once: the comparator judges every quantity on its own.
    """
    decades = check_decades(decades)
    dtypes = validate_choices("dtype", dtypes, allowed=DETECTION_DTYPES)
    if cases_per_cell < 1 or (top_decade_cases is not None and top_decade_cases < 1):
        raise ValueError("cases per cell must be at least 1")
    if not (math.isfinite(relative_error) and relative_error > 0):
        raise ValueError(f"relative_error must be a positive number, got {relative_error}")
    rows = []
    for dtype in dtypes:
        for decade in decades:
            wanted = cases_per_cell if decade < DECADES[-1] or top_decade_cases is None else top_decade_cases
            start = time.perf_counter()
            n = dict.fromkeys(DETECTED, 0)
            flagged = dict.fromkeys(DETECTED, 0)
            beyond = dict.fromkeys(DETECTED, 0)
            drawn = 0
            while min(n.values()) < wanted and drawn < max_draws_factor * wanted:
                case = draw_detection_case(rng_for(seed, *stream_key("detection", dtype, decade, drawn)), decade, dtype)
                drawn += 1
                expected = reference(case)
                good = [q for q, c in conditioning(case, expected).items() if c <= CONDITION_LIMIT and n[q] < wanted]
                if not good:
                    continue
                verdict = compare(case, planted_subject(case, good, relative_error), quantities=good)
                kinds = {m.quantity: m.kind for m in verdict.mismatches}
                for q in good:
                    n[q] += 1
                    flagged[q] += q in kinds
                    beyond[q] += kinds.get(q) in ("value", "nonfinite")
            rows += [DetectionRow(q, dtype, decade, n[q], drawn, flagged[q], beyond[q]) for q in DETECTED]
            if progress is not None:
                rates = ", ".join(f"{q} {flagged[q]}/{n[q]}" for q in DETECTED)
                progress(
                    f"detection {dtype} decade {decade}: {drawn} cases drawn in {time.perf_counter() - start:.1f} s; "
                    f"flagged {rates}"
                )
    order = {q: i for i, q in enumerate(DETECTED)}
    return sorted(rows, key=lambda r: (order[r.quantity], DTYPES.index(r.dtype), r.decade))


def format_detection(rows: Sequence[DetectionRow], *, relative_error: float = PLANTED_ERROR) -> str:
    head = f"{'quantity':<10}{'dtype':<9}{'M >=':>6}{'n':>6}{'drawn':>7}{'rate':>9}{'det only':>10}"
    lines = [
        f"Detection of a planted {relative_error:.3g} relative error (the oracle rounded to the output dtype, the "
        "quantity scaled), in well-conditioned cases",
        f"(n: cases where sum |terms| <= {CONDITION_LIMIT:g} |sum| at the largest element; rate: flagged as any "
        "mismatch, accuracy included; det only: beyond the deterministic bound)",
        head,
        "-" * len(head),
    ]
    previous = None
    for r in rows:
        if previous is not None and r.quantity != previous:
            lines.append("")
        previous = r.quantity
        lines.append(
            f"{r.quantity:<10}{r.dtype:<9}{decade_label(r.decade):>6}{r.n:>6}{r.drawn:>7}"
            f"{percent(r.rate):>9}{percent(r.rate_deterministic):>10}"
        )
    return "\n".join(lines)

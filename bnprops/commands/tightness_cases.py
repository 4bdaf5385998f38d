"""The cases ``bnprops tightness`` measures and plants errors into: per decade of the reduction length M, seeded
conv-like and dense training-mode shapes whose values come from the strategies.

Cases come from numpy generators seeded by (seed, stream, dtype, decade, index), so a cell's cases are the same
whichever other cells run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from bnprops.model.case import DTYPES, WRITE_ALL, Case
from bnprops.search.strategies import _values

#: Decades of M measured: 10^0 .. 10^6.
DECADES = tuple(range(7))
#: At most this many elements in a case (x and dy each; the float64 oracle holds a few copies).
MAX_ELEMENTS = 2_000_000
MAX_CHANNELS = 4
DEFAULT_EPS = 1e-3
MOMENTUM = 0.9

#: Spatial sides of feature maps (the strategies' large shapes use the same), and small ones for small M.
_SIDES = (1, 2, 3, 4, 5, 7, 8, 14, 16, 28, 32, 56, 64, 112)


Progress = Callable[[str], None]


def reduction_range(decade: int) -> tuple[int, int]:
    """The reduction lengths of a decade: ``lo <= M < hi`` (decade 6 stops at MAX_ELEMENTS)."""
    check_decades([decade])
    return 10**decade, min(10 ** (decade + 1), MAX_ELEMENTS + 1)


def check_decades(decades: Iterable[int]) -> tuple[int, ...]:
    values = tuple(decades)
    if not values:
        raise ValueError(f"no decade given; choose from {DECADES[0]}-{DECADES[-1]}")
    bad = [d for d in values if d not in DECADES]
    if bad:
        raise ValueError(
            f"decades {bad} are out of range: decade d holds 10^d <= M < 10^(d+1) elements per channel, and a case "
            f"holds at most {MAX_ELEMENTS:,} elements, so d is {DECADES[0]}-{DECADES[-1]}"
        )
    return tuple(dict.fromkeys(values))


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


#: Each kind of case draws from its own stream of seeds.
_STREAMS = {"ordinary": 0, "exact": 1, "detection": 2, "warm-up": 3}


def stream_key(stream: str, dtype: str, decade: int, index: int) -> tuple[int, ...]:
    return (_STREAMS[stream], DTYPES.index(dtype), decade, index)


def draw_shape(rng: np.random.Generator, decade: int) -> tuple[int, ...]:
    """A conv-like (N, C, H, W) or dense (N, C) shape whose M = N H W lies in the decade, with M C <= MAX_ELEMENTS."""
    lo, hi = reduction_range(decade)
    channels = int(rng.integers(1, min(MAX_CHANNELS, MAX_ELEMENTS // lo) + 1))
    hi = min(hi, MAX_ELEMENTS // channels + 1)
    target = int(10 ** rng.uniform(math.log10(lo), math.log10(hi)))
    target = min(max(target, lo), hi - 1)
    if rng.random() < 0.5:
        # The largest multiple of side^2 not above target must still be in the decade.
        sides = [s for s in _SIDES if s * s <= target and (target // (s * s)) * s * s >= lo]
        side = int(rng.choice(sides))
        return (target // (side * side), channels, side, side)
    return (target, channels)


def training_case(arrays: dict[str, np.ndarray], eps: float, regime: str) -> Case:
    """Training mode, learnable gamma, every gradient written, channels on axis 1."""
    return Case(
        **arrays,
        devices=(),
        axis=1,
        eps=eps,
        momentum=MOMENTUM,
        fix_gamma=False,
        use_global_stats=False,
        output_mean_var=False,
        is_train=True,
        grad_req=WRITE_ALL,
        regime=regime,
    )


def draw_case(rng: np.random.Generator, decade: int, dtype: str, regime: str) -> Case:
    """One training-mode case with learnable gamma and every gradient written, its values from the strategies."""
    shape = draw_shape(rng, decade)
    arrays, eps = _values(rng, shape, 1, dtype, regime, "random", WRITE_ALL)
    return training_case(arrays, DEFAULT_EPS if eps is None else eps, f"{regime}/random")


def decade_label(decade: int) -> str:
    _, hi = reduction_range(decade)
    return f"1e{decade}" if hi == 10 ** (decade + 1) else f"1e{decade}+"


def percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"

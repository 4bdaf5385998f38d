"""Draws an example makes by chance: a weighted coin, stored as one choice, then the draw it guards (or None).

The fuzz job draws a side family's parameters (a relation, a chain, a sequence, a member call) only on the
examples that run them: a coin that comes up True with the family's chance (one in N), so drawing costs what
runs. The coin is one boolean choice whose stored value decodes the same whatever its weight, so an example
stored under one chance replays, and shrinks, under any other (a family switched off included): the weight is
clamped to [UNLIKELY, LIKELY], never the 0 or 1 that would force the coin and make a stored value misalign.
Hypothesis shrinks a coin towards False, so a shrunk example keeps only the side draws its finding needs.
"""

from __future__ import annotations

from typing import Any, TypeVar

from hypothesis.internal.conjecture.utils import calc_label_from_name, combine_labels
from hypothesis.strategies import DrawFn, SearchStrategy

T = TypeVar("T")

#: A coin's weights at most and at least: Hypothesis forces a coin within 2^-64 of 1 or 0, and a stored value
#: a forced coin cannot take would no longer decode.
LIKELY = 1.0 - 2.0**-32
UNLIKELY = 2.0**-32


class Coin(SearchStrategy[bool]):
    """True with probability ``p`` (clamped to [UNLIKELY, LIKELY]) as generated; shrinks towards False.

    ``name`` labels its choice: Hypothesis's mutations copy a choice onto another of the same label, and would
    carry one family's coin onto another's."""

    def __init__(self, p: float, name: str) -> None:
        super().__init__()
        self.p, self.name = min(max(p, UNLIKELY), LIKELY), name

    def calc_label(self) -> int:
        return combine_labels(self.class_label, calc_label_from_name(f"bnprops-coin/{self.name}"))

    def do_draw(self, data: Any) -> bool:
        return bool(data.draw_boolean(self.p))

    def __repr__(self) -> str:
        return f"Coin({self.p!r}, {self.name!r})"


def sometimes(draw: DrawFn, strategy: SearchStrategy[T], *, chance: float, name: str) -> T | None:
    """Inside a composite strategy: a value of ``strategy`` when the coin ``name`` comes up (with ``chance`` as
    generated; as stored on replay and while shrinking), else None."""
    return draw(strategy) if draw(Coin(chance, name)) else None


def one_in(every: int) -> float:
    """The chance of what runs on one example in ``every`` (0: never)."""
    return 1.0 / every if every > 0 else 0.0

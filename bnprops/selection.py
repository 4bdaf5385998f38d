"""Parsing the user's choice of entry points, backends and dtypes (pytest options and the CLI)."""

from __future__ import annotations

from collections.abc import Sequence


def parse_choices(text: str, *, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'); 'all' -> every allowed value; anything unknown is a ValueError that lists the choices."""
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise ValueError(f"no {what} given; choose from {', '.join(allowed)} (or 'all')")
    if values == ("all",):
        return tuple(allowed)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)} (or 'all')")
    return tuple(dict.fromkeys(values))

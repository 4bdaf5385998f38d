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
    try:
        return validate_choices(what, values, allowed=allowed)
    except ValueError as exc:
        raise ValueError(f"{exc} (or 'all')") from None


def validate_choices(what: str, values: Sequence[str], *, allowed: Sequence[str]) -> tuple[str, ...]:
    """The values, each once, in order; none, or an unknown one, is a ValueError that lists the choices."""
    values = tuple(values)
    if not values:
        raise ValueError(f"no {what} given; choose from {', '.join(allowed)}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def parse_entries(text: str, *, plain: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """'nd,sym-relu' -> (('nd',), ('sym-relu',)): the plain entry points and the family members' entries chosen;
    'all' is every one of both; anything unknown is a ValueError that lists the choices."""
    from bnprops.base.family import MEMBER_ENTRIES

    chosen = parse_choices(text, allowed=(*plain, *MEMBER_ENTRIES), what="entry point")
    return tuple(e for e in chosen if e in plain), tuple(e for e in chosen if e in MEMBER_ENTRIES)

"""The registry of MXNet's known deviations: one module per deviation (or per small family sharing code).

Every module of this package declares ``DEVIATIONS``, a tuple of declarations (bnprops.judging.declarations)
with everything about them in one place: conditions, model, release scope, evidence, reproducer, upstream.
The registry discovers the modules, so adding a deviation is adding a module; it sorts by id, which
fixes the order in which the judgement consults overlapping regions.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from bnprops.judging.declarations import (
    Declaration,
    InputDeviation,
    KnownDeviation,
    LifecycleDeviation,
    NetworkDeviation,
    SequenceDeviation,
)


def modules() -> tuple[ModuleType, ...]:
    """Every module of this package, imported, in name order."""
    names = sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in names)


def _collect() -> tuple[Declaration, ...]:
    found: list[Declaration] = []
    for module in modules():
        declared = getattr(module, "DEVIATIONS", None)
        if not isinstance(declared, tuple) or not declared:
            raise TypeError(f"{module.__name__} declares no DEVIATIONS tuple")
        for d in declared:
            if not isinstance(
                d, KnownDeviation | InputDeviation | NetworkDeviation | SequenceDeviation | LifecycleDeviation
            ):
                raise TypeError(f"{module.__name__}: {d!r} is not a deviation declaration")
        found += declared
    ids = [d.id for d in found]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"deviation ids declared twice: {twice}")
    return tuple(sorted(found, key=lambda d: d.id))


#: Every declaration, by id.
ALL: tuple[Declaration, ...] = _collect()
KNOWN_DEVIATIONS = tuple(d for d in ALL if isinstance(d, KnownDeviation))
INPUT_DEVIATIONS = tuple(d for d in ALL if isinstance(d, InputDeviation))
NETWORK_DEVIATIONS = tuple(d for d in ALL if isinstance(d, NetworkDeviation))
SEQUENCE_DEVIATIONS = tuple(d for d in ALL if isinstance(d, SequenceDeviation))
LIFECYCLE_DEVIATIONS = tuple(d for d in ALL if isinstance(d, LifecycleDeviation))


def by_id(ident: str) -> Declaration:
    """The declaration of an id (KeyError for one no module declares)."""
    for d in ALL:
        if d.id == ident:
            return d
    raise KeyError(f"no deviation {ident!r}; known: {[d.id for d in ALL]}")

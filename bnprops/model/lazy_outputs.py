"""Outputs whose per-element arrays are computed when first read: the fused engine hands the oracle's y and dx
(and their bounds) this way, so that a case whose results agree never writes them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bnprops.model.case import Outputs


def forked(values: Outputs) -> Outputs:
    """A new dict of ``values`` for a caller to own (LazyOutputs stay lazy)."""
    return values.fork() if isinstance(values, LazyOutputs) else dict(values)


class LazyOutputs(dict[str, Any]):
    """Outputs whose per-element quantities are computed when first looked at (the rest are plain entries).

    A dict, so that Outputs' readers need not know; copying one (dict(), .copy()) materialises it."""

    def __init__(self, eager: Outputs, lazy: dict[str, Callable[[], np.ndarray]]) -> None:
        super().__init__(eager)
        self._lazy = dict(lazy)
        for key in lazy:
            super().__setitem__(key, None)

    def __getitem__(self, key: str) -> np.ndarray:
        value = super().__getitem__(key)
        if value is None and key in self._lazy:
            value = self._lazy.pop(key)()
            super().__setitem__(key, value)
        result: np.ndarray = value
        return result

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (dict.get would read the placeholder)

    def __iter__(self) -> Iterator[str]:  # defeats dict()'s fast copy, which would read the placeholders
        return iter(list(super().keys()))

    def values(self) -> Any:
        return [self[k] for k in self]

    def items(self) -> Any:
        return [(k, self[k]) for k in self]

    def copy(self) -> dict[str, np.ndarray]:
        return {k: self[k] for k in self}

    def fork(self) -> LazyOutputs:
        """A new LazyOutputs over the same values (dict() would compute them all)."""
        twin = LazyOutputs({}, {})
        for key in list(super().keys()):
            dict.__setitem__(twin, key, dict.__getitem__(self, key))
        twin._lazy = dict(self._lazy)  # (an evaluation computes each array once, for every fork)
        return twin

"""Small builders shared by the tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings

from bnprops.case import Case, param_dtype
from bnprops.runners import unavailable_reason


def budget(fraction: float) -> int:
    """A share of the profile's per-property budget (400 examples in dev and ci), so nightly scales it too."""
    return max(1, round(settings.default.max_examples * fraction))


def skip_unless_available(backend: str) -> None:
    """Skip, with the reason, where the backend cannot run here (no GPU, no worker process)."""
    reason = unavailable_reason(backend)
    if reason is not None:
        pytest.skip(reason)


def one_channel_case(
    values: list[float], *, dtype: str = "float64", dy: list[float] | None = None, **params: object
) -> Case:
    """A case with x of shape (M, 1), gamma 1.5, beta 0.25, moving statistics (0, 1) unless given."""
    x = np.asarray(values, dtype=dtype).reshape(-1, 1)
    pdt = param_dtype(dtype)
    head = np.linspace(-1, 1, x.size) if dy is None else np.asarray(dy)
    fields: dict[str, object] = {
        "gamma": np.full(1, 1.5, pdt),
        "beta": np.full(1, 0.25, pdt),
        "moving_mean": np.zeros(1, pdt),
        "moving_var": np.ones(1, pdt),
        "fix_gamma": False,
    }
    fields.update(params)
    return Case(x=x, dy=head.astype(dtype).reshape(x.shape), **fields)  # type: ignore[arg-type]

"""Small builders shared by the tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings

from bnprops.fuzzing.report.model import Report
from bnprops.model.case import Case, param_dtype
from bnprops.mx.backends import same_kernel_backend
from bnprops.mx.runners import BackendUnavailable, unavailable_reason
from bnprops.search.sequences import Sequence, fixed_sequence

#: Campaign options for tests of one part of the fuzz job: no chains, sequences or members (their own tests run those).
FOCUSED: dict[str, int] = {"network_every": 0, "sequence_every": 0, "member_every": 0}


def budget(fraction: float) -> int:
    """A share of the profile's per-property budget (400 examples in dev and ci), so nightly scales it too."""
    return max(1, round(settings.default.max_examples * fraction))


def skip_unless_available(backend: str) -> None:
    """Skip, with the reason, where the backend cannot run here (no GPU, no worker process)."""
    reason = unavailable_reason(backend)
    if reason is not None:
        pytest.skip(reason)


def backend_with_kernel_of(case: Case, backend: str = "onednn", *, entry: str | None = None) -> str:
    """``backend``, or the backend that runs ``case`` on the same kernel where this build lacks it (native for
    float16/float64 on a build without oneDNN); skips, with the reason, where no backend here has that kernel."""
    try:
        return same_kernel_backend(case, backend, entry=entry)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


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


def one_sequence(*rules: str, entry: str = "nd", dtype: str = "float64", **config: object) -> Sequence:
    """A sequence on one (3, 2) batch, or the same values in the ``x_shape`` given (bnprops.search.sequences)."""
    return fixed_sequence(*rules, entry=entry, dtype=dtype, **config)


def first_finding(report: Report) -> str:
    """The ident whose files stand for the first new cause (the report writes files per cause, not per signature)."""
    return next(c for c in report.causes() if c.new).smallest.signature.ident


def planted_search(max_examples: int) -> settings:
    """The settings a meta test searches for a planted fault with: derandomised, no database, generate and shrink."""
    return settings(
        max_examples=max_examples,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )

"""The cases BatchNorm_v1 can run: the strategies' float32 cases of 2 or 4 dimensions with channels on axis 1."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from bnprops.model.case import Case
from bnprops.mx.runners import v1_unexpressible_reason
from bnprops.search.strategies import cases


def cases_for_v1(**options: Any) -> st.SearchStrategy[Case]:
    """BatchNorm_v1's cases; ``options`` go to search.strategies.cases. With ``sizes="large"`` (or "all"), the
    real layers' shapes it runs: conv maps (N, C, H, W) and dense (N, C)."""
    if options.get("sizes", "small") != "small":
        return cases(**{"dtypes": ["float32"], **options}).filter(lambda case: v1_unexpressible_reason(case) is None)
    shaped = st.one_of(
        cases(**{"dtypes": ["float32"], **options, "min_ndim": 2, "max_ndim": 2}),
        cases(**{"dtypes": ["float32"], **options, "min_ndim": 4, "max_ndim": 4}),
    )
    return shaped.filter(lambda case: v1_unexpressible_reason(case) is None)

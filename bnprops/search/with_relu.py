"""The cases BatchNormWithReLU can run: the strategies' float32 4-D cases, channels moved to axis 1, training.

Inference-mode calls are left out: their backward reads a ReLU mask oneDNN never wrote (the BatchNormWithReLU
page of the docs), which no case of this strategy should stumble on.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from bnprops.model.case import Case, with_channel_axis
from bnprops.search.strategies import cases

#: The value regimes the operator can take (finite data: its NaN mask rule is documented, not drawn).
REGIMES = ("ordinary", "offset", "tiny_spread", "constant", "large", "exact")


def cases_for_with_relu(**options: Any) -> st.SearchStrategy[Case]:
    """BatchNormWithReLU's cases; ``options`` go to search.strategies.cases (they may narrow, not widen, these)."""
    chosen: dict[str, Any] = {
        "dtypes": ["float32"],
        "min_ndim": 4,
        "max_ndim": 4,
        "value_regimes": list(REGIMES),
        "is_train": True,
        **options,
    }
    return cases(**chosen).map(lambda c: with_channel_axis(c, 1))

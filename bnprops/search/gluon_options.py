"""Hypothesis strategies for gluon.nn.BatchNorm's options: the plain cases its layer can run, every dtype."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from bnprops.model.case import Case
from bnprops.mx import gluon_options
from bnprops.search.strategies import cases


def cases_for_gluon_options(**options: Any) -> st.SearchStrategy[Case]:
    """The plain ``cases`` (with their keyword options) that the options' layer can express."""
    return cases(output_mean_var=False, **options).filter(lambda c: gluon_options.unexpressible_reason(c) is None)

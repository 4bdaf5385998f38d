"""The strategies validate their arguments and reach every corner the operator has."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, find, settings

from bnprops.model.case import DEFAULT_EPS, Case
from bnprops.search.strategies import MAX_NDIM, cases

reach = settings(
    max_examples=2000, database=None, derandomize=True, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtypes": ["float8"]}, "unknown dtypes 'float8'; choose from float16, float32, float64"),
        ({"dtypes": []}, "no dtypes given; choose from"),
        ({"value_regimes": ["wild"]}, "unknown value_regimes 'wild'; choose from ordinary"),
        ({"min_ndim": 0}, "min_ndim"),
        ({"max_ndim": 6}, "max_ndim"),
        ({"max_channels": 0}, "max_channels must be at least 1"),
    ],
)
def test_bad_strategy_arguments_are_rejected_with_the_choices(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cases(**kwargs)  # type: ignore[arg-type]


def test_strategy_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        cases(["float32"])  # type: ignore[misc]


CORNERS: dict[str, Callable[[Case], bool]] = {
    "one dimension": lambda c: c.x.ndim == 1,
    "five dimensions": lambda c: c.x.ndim == MAX_NDIM,
    "a negative axis": lambda c: c.axis < 0,
    "the last axis": lambda c: c.channel_axis == c.x.ndim - 1 and c.x.ndim > 2,
    "one channel": lambda c: c.channels == 1 and c.x.ndim > 1,
    "a batch of one": lambda c: c.shape[0] == 1 and c.channel_axis != 0,
    "float16": lambda c: c.dtype == "float16",
    "float64": lambda c: c.dtype == "float64",
    "eps zero": lambda c: c.eps == 0,
    "a subnormal float32 eps": lambda c: 0 < c.eps < 1.2e-38,
    "a large eps": lambda c: c.eps >= 1,
    "momentum zero": lambda c: c.momentum == 0,
    "momentum one": lambda c: c.momentum == 1,
    "fix_gamma off with global statistics": lambda c: not c.fix_gamma and c.use_global_stats,
    "output_mean_var": lambda c: c.output_mean_var,
    "a constant channel": lambda c: c.regime.startswith("constant"),
    "a large offset": lambda c: c.regime.startswith("offset"),
    "a tiny spread": lambda c: c.regime.startswith("tiny_spread"),
    "large magnitudes": lambda c: c.regime.startswith("large") and float(abs(c.x).max()) > 1e3,
    "a scaled head gradient": lambda c: c.regime.endswith("scaled"),
}


@pytest.mark.parametrize("corner", sorted(CORNERS))
def test_the_strategy_reaches(corner: str) -> None:
    find(cases(), CORNERS[corner], settings=reach)


def test_the_default_eps_is_drawn_often() -> None:
    drawn: list[float] = []

    def record(case: Case) -> bool:
        drawn.append(case.eps)
        return len(drawn) >= 300

    find(cases(), record, settings=reach)
    assert drawn.count(DEFAULT_EPS) / len(drawn) > 0.25

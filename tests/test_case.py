"""The case: validated on construction, exact through JSON, and its own reproducer."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings

from bnprops.model.case import Case, dtype_name
from bnprops.mx.runners import run_symbolic
from bnprops.mx.snippets import snippet
from bnprops.search.strategies import cases
from tests.helpers import one_channel_case


@settings(max_examples=200, deadline=None)
@given(case=cases())
def test_a_case_survives_json_bit_for_bit(case: Case) -> None:
    back = Case.from_json(case.to_json())
    assert back == case
    for name in ("x", "gamma", "beta", "moving_mean", "moving_var", "dy"):
        before, after = getattr(case, name), getattr(back, name)
        assert after.dtype == before.dtype and after.shape == before.shape
        assert after.tobytes() == before.tobytes()
    assert back.eps == case.eps and back.momentum == case.momentum


def test_json_keeps_negative_zero_nan_and_infinities() -> None:
    case = one_channel_case([-0.0, float("nan"), float("inf"), -float("inf")], dtype="float32")
    back = Case.from_json(case.to_json())
    assert back.x.tobytes() == case.x.tobytes()


@pytest.mark.parametrize(
    ("text", "message"),
    [("not json", "does not parse"), ("[1, 2]", "must be an object"), ('{"format": "other"}', "not a bnprops case")],
)
def test_bad_case_json_is_rejected_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Case.from_json(text)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"axis": 2}, "axis=2 is out of range"),
        ({"gamma": np.ones(2, np.float32)}, "gamma must be float32 of shape"),
        ({"dy": np.ones((3, 1), np.float32)}, "dy must match x"),
        ({"moving_var": np.ones(1, np.float64)}, "moving_var must be float32"),
    ],
)
def test_an_inconsistent_case_is_rejected_on_construction(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        one_channel_case([1.0, 2.0], dtype="float32").with_(**changes)


def test_float16_cases_take_float32_parameters() -> None:
    case = one_channel_case([1.0, 2.0], dtype="float16")
    assert case.gamma.dtype == np.float32 and case.x.dtype == np.float16


def test_the_snippet_runs_alone_and_prints_what_the_runner_returns() -> None:
    case = one_channel_case([0.5, -1.25, 2.0], dtype="float32", output_mean_var=True)
    result = subprocess.run([sys.executable, "-c", snippet(case)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = run_symbolic(case)
    dgamma_line = next(line for line in result.stdout.splitlines() if line.startswith("dgamma "))
    printed = np.array(dgamma_line.split("[")[1].split("]")[0].split(), dtype=np.float32)
    assert printed.tobytes() == out["dgamma"].tobytes()


@pytest.mark.parametrize("name", ["float16", "float32", "float64", ">f4", "int64", "complex64", "bool"])
def test_a_dtypes_looked_up_name_is_its_str(name: str) -> None:
    assert dtype_name(np.dtype(name)) == str(np.dtype(name))

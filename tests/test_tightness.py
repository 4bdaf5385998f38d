"""bnprops tightness: the cases it draws, its tables, its bad-input errors, and detection that is not trivially 100%."""

from __future__ import annotations

import functools
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bnprops.commands import cli, detection, tightness, tightness_cases
from bnprops.model.case import Case
from bnprops.model.oracle import output_dtypes, reference
from bnprops.mx.runners import IN_PROCESS_BACKEND
from tests.planted import numpy_batchnorm
from tests.test_cli import run_cli


@pytest.mark.parametrize("decade", tightness_cases.DECADES)
def test_shapes_are_conv_like_or_dense_with_m_in_the_decade(decade: int) -> None:
    lo, hi = tightness_cases.reduction_range(decade)
    rng = np.random.default_rng(decade)
    for _ in range(40):
        shape = tightness_cases.draw_shape(rng, decade)
        channels, m = shape[1], math.prod(shape) // shape[1]
        assert len(shape) in (2, 4) and (len(shape) == 2 or shape[2] == shape[3])
        assert 1 <= channels <= tightness_cases.MAX_CHANNELS
        assert lo <= m < hi and m * channels <= tightness_cases.MAX_ELEMENTS


def test_cases_are_seeded_and_training_with_learnable_gamma() -> None:
    first = tightness_cases.draw_case(np.random.default_rng(7), 2, "float32", "exact")
    again = tightness_cases.draw_case(np.random.default_rng(7), 2, "float32", "exact")
    assert first == again
    assert first.is_train and not first.fix_gamma and first.grad_req == ("write", "write", "write")
    assert first.regime == "exact/random" and first.eps != tightness_cases.DEFAULT_EPS  # the exact regime chooses eps
    ordinary = tightness_cases.draw_case(np.random.default_rng(7), 2, "float16", "ordinary")
    assert ordinary.eps == tightness_cases.DEFAULT_EPS and ordinary.momentum == tightness_cases.MOMENTUM


def test_tables_have_a_row_per_cell_in_order() -> None:
    # A numpy subject stands in for MXNet: the tables' shape does not depend on the runner.
    dtypes, decades = ("float32", "float64"), (0, 1)
    measured = tightness.measure(decades=decades, dtypes=dtypes, cases_per_cell=2, runner=numpy_batchnorm)
    assert len(measured.records) == len(tightness.REGIMES) * len(dtypes) * len(decades) * 2
    rows = tightness.tightness_table(measured.records)
    expected = list(itertools.product(tightness.REGIMES, tightness.MEASURED, dtypes, decades))
    assert [(r.regime, r.quantity, r.dtype, r.decade) for r in rows] == expected
    assert all(r.n + r.exact == 2 for r in rows)
    assert all(r.n == 0 or r.probabilistic.median >= r.deterministic.median for r in rows)
    assert [c.decade for c in tightness.cost_table(measured.records)] == list(decades)
    text = tightness.format_tightness(rows)
    assert "det med" in text and "prob p99" in text
    shown = [line for line in text.splitlines() if line.startswith(tightness.REGIMES) and "|" in line]
    assert len(shown) == sum(r.n > 0 for r in rows)
    assert "MXNet ms/case" in tightness.format_cost(tightness.cost_table(measured.records))


def test_small_cases_on_mxnet_stay_within_both_bounds() -> None:
    measured = tightness.measure(
        decades=(0, 1, 2), dtypes=("float32", "float64"), cases_per_cell=1, backend=IN_PROCESS_BACKEND
    )
    assert not measured.findings, tightness.format_findings(measured.findings)
    assert all(r.error is None and r.runner_s > 0 and r.judge_s > 0 for r in measured.records)


def test_a_planted_fault_is_a_finding_with_its_case_saved(tmp_path: Path) -> None:
    runner = functools.partial(numpy_batchnorm, fault="dbeta_off_by_half_percent")
    measured = tightness.measure(
        decades=(2,), dtypes=("float64",), regimes=("ordinary",), cases_per_cell=3, runner=runner, findings_dir=tmp_path
    )
    assert measured.findings and {f.quantity for f in measured.findings} == {"dbeta"}
    saved = Path(str(measured.findings[0].case_file))
    assert Case.from_json(saved.read_text()).reduction_length >= 100
    assert "finding" in tightness.format_findings(measured.findings)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: tightness.measure(decades=(7,), runner=numpy_batchnorm), "out of range"),
        (lambda: tightness.measure(decades=(), runner=numpy_batchnorm), "no decade"),
        (lambda: tightness.measure(dtypes=("float8",), runner=numpy_batchnorm), "unknown dtype 'float8'"),
        (lambda: tightness.measure(regimes=("odd",), runner=numpy_batchnorm), "unknown regime 'odd'"),
        (lambda: tightness.measure(backend="cuda", runner=numpy_batchnorm), "unknown backend 'cuda'"),
        (lambda: tightness.measure(cases_per_cell=0, runner=numpy_batchnorm), "at least 1"),
        (lambda: detection.rates(dtypes=("float16",)), "unknown dtype 'float16'"),
        (lambda: detection.rates(relative_error=0.0), "positive"),
        (lambda: tightness.parse_decades("4-2"), "empty"),
        (lambda: tightness.parse_decades("one"), "expected decades"),
        (lambda: tightness.parse_decades("5-8"), "out of range"),
    ],
)
def test_bad_input_is_a_value_error_that_says_what_was_expected(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_decades_parse_as_ranges_and_lists() -> None:
    assert tightness.parse_decades("0-6") == tightness_cases.DECADES
    assert tightness.parse_decades("4-6") == (4, 5, 6)
    assert tightness.parse_decades("0-1, 5,1") == (0, 1, 5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--decades", "9"], "out of range"),
        (["--backend", "cuda"], "invalid choice"),
        (["--dtype", "float8"], "unknown dtype 'float8'"),
        (["--dtype", "float16", "--detection-only"], "detection covers float32 and float64"),
        (["--cases-per-cell", "0"], "expected a positive integer"),
        (["--detection-only", "--measure-only"], "not allowed with"),
        (["--seed", "-1"], "non-negative integer seed"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["tightness", *args], capsys)
    assert code == cli.EXIT_USAGE and message in err, err


def test_help_explains_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["tightness", "--help"], capsys)
    assert code == 0
    for word in ("--cases-per-cell", "--decades", "--backend", "--detection-only", "--json", "goals", "exit status"):
        assert word in out


def test_detection_only_prints_its_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out" / "tightness.json"
    args = ["tightness", "--detection-only", "--decades", "0-1", "--detection-cases", "5", "--json", str(path)]
    code, out, err = run_cli(args, capsys)
    assert code == cli.EXIT_OK
    assert "Detection of a planted" in out and "goals:" in out and "detection float32 decade 1" in err
    data = json.loads(path.read_text())
    assert data["format"] == "bnprops.tightness/1" and data["tightness"] == []
    assert len(data["detection"]) == len(detection.DETECTED) * 2 * 2


def test_conditioning_is_judged_at_the_largest_element() -> None:
    case = detection.draw_detection_case(np.random.default_rng(3), 2, "float64")
    cond = detection.conditioning(case)
    assert set(cond) == set(detection.DETECTED) and all(c >= 1 for c in cond.values())
    # dy constant in every channel: dgamma = sum(dy xhat) and dx cancel to rounding noise.
    flat = case.with_(dy=np.full_like(case.dy, 0.75))
    cond = detection.conditioning(flat)
    assert cond["dbeta"] == 1.0
    assert cond["dgamma"] > detection.CONDITION_LIMIT and cond["dx"] > detection.CONDITION_LIMIT


def test_the_planted_subject_is_the_rounded_oracle_with_only_the_chosen_quantities_scaled() -> None:
    case = detection.draw_detection_case(np.random.default_rng(4), 1, "float32")
    subject = detection.planted_subject(case, ["dgamma"])
    expected, dtypes = reference(case), output_dtypes(case)
    assert np.array_equal(subject["dx"], expected["dx"].astype(dtypes["dx"]))
    assert np.array_equal(subject["dgamma"], (expected["dgamma"] * 1.005).astype(dtypes["dgamma"]))


def test_a_half_percent_error_is_flagged_in_99_percent_of_well_conditioned_cases() -> None:
    rows = detection.rates(decades=(0, 1, 2, 3), cases_per_cell=100)
    assert len(rows) == len(detection.DETECTED) * 2 * 4
    for r in rows:
        assert r.n == 100, f"{r.quantity} {r.dtype} decade {r.decade}: only {r.n} well-conditioned in {r.drawn}"
        assert r.rate >= 0.99, f"{r.quantity} {r.dtype} decade {r.decade}: {r.flagged} of {r.n} flagged"


def test_an_error_below_float32_resolution_is_not_flagged() -> None:
    # 1e-9 relative is below half a float32 ulp: rounded, the subject is the oracle's own float32 result.
    rows = detection.rates(decades=(0, 1, 2, 3), dtypes=("float32",), cases_per_cell=30, relative_error=1e-9)
    assert all(r.n > 0 for r in rows)
    assert sum(r.flagged for r in rows) == 0, [r for r in rows if r.flagged]

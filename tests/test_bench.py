"""bnprops bench's per-decade table and drawing stage: their structure at tiny sizes (speed is measured, never
asserted here)."""

from __future__ import annotations

import pytest

from bnprops.commands import bench, cli


def test_the_decade_table_has_mxnet_and_both_judging_paths_per_decade() -> None:
    rows = bench.decades(top=3, reps=1)
    assert [r.decade for r in rows] == [2, 3]
    for r in rows:
        assert 10**r.decade <= r.m < 10 ** (r.decade + 1)
        assert set(r.judging_ms) == set(bench.PATHS)
        assert r.mxnet_ms > 0 and all(v > 0 for v in r.judging_ms.values())
    head, *lines = bench.format_decades(rows).splitlines()
    for column in ("MXNet ms", "reference ms", "reference/MXNet", "fused ms", "fused/MXNet", "fused-1t/MXNet"):
        assert column in head
    assert lines[0].startswith("10^2") and lines[1].startswith("10^3")
    assert "goal: <= 2x MXNet" in lines[-3]


def test_the_decade_shapes_cover_one_decade_each() -> None:
    for decade, shape in bench.DECADE_SHAPES.items():
        assert 10**decade <= bench.DecadeRow(decade, shape, 1.0, {}).m < 10 ** (decade + 1), (decade, shape)


def test_bench_prints_the_decade_table_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--decades-only", "--top-decade", "2", "--reps", "1"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "per decade of M" in out and "10^2" in out and "ceiling" not in out


def test_bench_help_explains_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    for option in ("--decades-only", "--top-decade", "--reps", "per decade of M", "fused"):
        assert option in out


def test_the_drawing_stage_counts_the_cases_of_the_fuzz_jobs_examples() -> None:
    stage = bench.fuzz_drawing(20)
    assert stage.name == "drawing" and stage.seconds > 0
    assert 20 <= stage.cases <= 20 * 32, f"20 examples of 1 to 32 cases each, got {stage.cases} cases"


def test_the_group_table_has_each_method_per_kind_of_group_scenario_and_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bench, "GROUP_SHAPES", {"small": (2, 2, 2)})
    monkeypatch.setattr(bench, "GROUP_SIZE", 3)
    rows = bench.groups(reps=1)
    assert [(r.scenario, r.path) for r in rows] == [(s, p) for s in bench.SCENARIOS for p in bench.GROUP_PATHS]
    for r in rows:
        assert set(r.ms) == set(bench.GROUP_METHODS) and all(v > 0 for v in r.ms.values())
    head, *lines = bench.format_groups(rows).splitlines()
    for column in ("alone ms/case", "before ms/case", "group ms/case", "before/group"):
        assert column in head
    assert lines[0].startswith("small 3x(2, 2, 2)") and "judge_group" in lines[-1]

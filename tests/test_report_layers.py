"""The report a maintainer reads in a minute: causes, not signatures; what changed; the history.

A planted 1% dbeta error shows under many signatures (entry points, flags, value regimes); the
report must make it one cause with one reproducer, say so on its first screen, and put the
per-signature detail in the appendix.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import planted_runners as planted
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bnprops.commands import cli
from bnprops.fuzzing import campaign, causes, history, plan
from bnprops.fuzzing.catalogue import _REDUCTION_RANK, KNOWN, MISMATCH, Catalogue, Entry, Signature, preferred, rank
from bnprops.fuzzing.report import markdown as report_markdown
from bnprops.fuzzing.report.model import Report
from bnprops.mx.runners import IN_PROCESS_BACKEND
from tests.helpers import one_channel_case

SUMMARY_LINES = 40  # "fits on one screen"


def planted_campaign(out: Path, **overrides: object) -> Report:
    params: dict[str, object] = dict(
        out=out,
        entries=("nd", "sym"),
        backends=(IN_PROCESS_BACKEND,),
        dtypes=("float64",),
        max_examples=60,
        chunk_size=30,
        seed=4,
        relation_every=0,
        network_every=0,
    )
    params.update(sequence_every=0, **overrides)
    return campaign.run(plan.CampaignConfig(**params), runner_factory=planted.dbeta_off_by_one_percent)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Report]:
    out = tmp_path_factory.mktemp("layers")
    return out, planted_campaign(out)


def test_many_signatures_of_one_fault_are_one_cause_with_one_reproducer(planted_run: tuple[Path, Report]) -> None:
    out, report = planted_run
    assert len(report.new) > 1, "the planted fault should show under several signatures"
    found = [c for c in report.causes() if c.new]
    assert [c.key for c in found] == [f"{MISMATCH}:dbeta"]
    [cause] = found
    assert cause.count == sum(e.count for e in report.new) and len(cause.entries) == len(report.new)
    data = json.loads((out / "report.json").read_text())
    [row] = [c for c in data["causes"] if c["new"]]
    assert row["signatures"] == [e.signature.ident for e in cause.entries]
    assert row["reproducer"] == f"findings/{cause.smallest.signature.ident}.py"
    # Every new signature points at the cause's one pair of files; no file per signature.
    assert {e["reproducer"] for e in data["catalogue"]["new"]} == {row["reproducer"]}
    files = {p.stem for p in (out / "findings").glob("*.py")}
    assert files == {Path(c["reproducer"]).stem for c in data["causes"] if c["reproducer"]}


def test_the_first_screen_says_the_verdict_the_rate_and_each_cause(planted_run: tuple[Path, Report]) -> None:
    out, report = planted_run
    summary = (out / "summary.md").read_text()
    assert len(summary.splitlines()) <= SUMMARY_LINES
    assert "**1 new deviation cause(s)**" in summary and "cases/s" in summary
    assert "**NEW** mismatch in `dbeta`" in summary
    markdown = (out / "report.md").read_text()
    assert markdown.startswith(summary.rstrip("\n"))
    body, appendix = markdown.split("<details>", 1)
    assert "## New deviations by cause (1)" in body and "### `" not in body  # signatures only in the appendix
    assert all(f"### `{e.signature.ident}`" in appendix for e in report.new[: report_markdown.NEW_DETAILED])
    assert all(f"`{e.signature.ident}`" in appendix for e in report.new[: report_markdown.APPENDIX_SIGNATURES])


def test_the_report_stays_short_however_many_signatures_a_run_finds(planted_run: tuple[Path, Report]) -> None:
    _, report = planted_run
    # 300 signatures of each kind, as a long night's known deviations split by flags would make.
    many = Catalogue(
        dataclasses.replace(e, signature=dataclasses.replace(e.signature, regime=f"{e.signature.regime}-{i}"))
        for i in range(300)
        for e in (report.new[0], report.known[0] if report.known else report.new[0])
    )
    markdown = report_markdown.markdown(dataclasses.replace(report, catalogue=many))
    assert len(markdown.splitlines()) < 400
    assert f"{300 - report_markdown.APPENDIX_SIGNATURES} more signature(s)" in markdown


def test_a_second_run_says_what_changed_and_the_history_grows(planted_run: tuple[Path, Report], tmp_path: Path) -> None:
    out, _ = planted_run
    again = tmp_path / "again"
    again.mkdir()
    for name in ("report.json", history.HISTORY_FILE):
        (again / name).write_bytes((out / name).read_bytes())
    fixed = campaign.run(
        plan.CampaignConfig(
            out=again,
            entries=("nd",),
            backends=(IN_PROCESS_BACKEND,),
            dtypes=("float64",),
            max_examples=20,
            seed=9,
            relation_every=0,
            network_every=0,
            sequence_every=0,
        )
    )
    assert not [c for c in fixed.causes() if c.new]
    summary = (again / "summary.md").read_text()
    assert "new causes appeared: none; gone: `mismatch:dbeta`" in summary and "Last 2 runs" in summary
    assert [len(r.new) for r in history.load_history(again)] == [1, 0]
    assert (again / "history.png").read_bytes().startswith(b"\x89PNG")


def test_a_baseline_that_is_not_a_report_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    with pytest.raises(plan.UsageError, match="not a readable bnprops report"):
        plan.CampaignConfig(out=tmp_path / "out", max_examples=1, baseline=bad)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["fuzz", "--max-examples", "1", "--baseline", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert stopped.value.code == 2 and "no report.json there" in capsys.readouterr().err


def test_a_damaged_history_starts_afresh_and_keeps_its_length(tmp_path: Path) -> None:
    (tmp_path / history.HISTORY_FILE).write_text("[1, 2")
    assert history.load_history(tmp_path) == []
    run = history.Run("t", 1, 1.0, (), {})
    runs: list[history.Run] = []
    for i in range(history.HISTORY_LENGTH + 5):
        runs = history.record(tmp_path, history.Run(f"t{i}", i, 1.0, (), {}), runs)
    assert len(history.load_history(tmp_path)) == history.HISTORY_LENGTH
    assert history.record(tmp_path, run, [run, run]) == [run]  # the same start is one run


def entry(kind: str, quantity: str, *, entry_point: str = "nd", dtype: str = "float64", deviation: str = "") -> Entry:
    sig = Signature(kind, quantity, entry_point, "onednn", dtype, (("fix_gamma", "False"),), "ordinary", deviation)
    return Entry(sig, 1, one_channel_case([1.0, 2.0]), "shrunk")


def test_signatures_are_one_cause_when_only_where_they_showed_differs() -> None:
    found = causes.causes(
        [
            entry(MISMATCH, "dx"),
            entry(MISMATCH, "dx", entry_point="gluon", dtype="float32"),
            entry(MISMATCH, "dgamma"),
            entry(KNOWN, "dx", deviation="empty-batch-nan"),
            entry(KNOWN, "moving_var", deviation="empty-batch-nan", entry_point="sym"),
        ]
    )
    assert sorted(c.key for c in found) == ["known:empty-batch-nan", "mismatch:dgamma", "mismatch:dx"]
    by_key = {c.key: c for c in found}
    assert by_key["mismatch:dx"].where("entry") == ("gluon", "nd")
    assert by_key["known:empty-batch-nan"].count == 2 and not by_key["known:empty-batch-nan"].new
    assert [c.new for c in found] == [True, True, False]  # new causes first


@given(
    sizes=st.lists(
        st.tuples(st.integers(1, 3), st.integers(1, 3), st.sampled_from(sorted(_REDUCTION_RANK))),
        min_size=2,
        max_size=2,
    ),
    eps=st.sampled_from([1e-3, 1e-5, 0.1]),
)
def test_an_entrys_example_is_preferred_as_its_rank_says(sizes, eps) -> None:  # type: ignore[no-untyped-def]
    sig = Signature(MISMATCH, "y", "sym", IN_PROCESS_BACKEND, "float64", "", "ordinary")
    entries = [
        Entry(sig, 1, one_channel_case([1.0] * (rows * cols), eps=eps), reduction) for rows, cols, reduction in sizes
    ]
    first, second = entries
    assert preferred(first, second) == (rank(first) < rank(second))

"""The bnprops command: usage errors, help, a tiny campaign end to end, repro, reproducer scripts, merge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import planted_runners as planted
import pytest

from bnprops.commands import cli
from bnprops.fuzzing import campaign, plan
from bnprops.fuzzing.catalogue import KNOWN, Entry, classify
from bnprops.fuzzing.reproducer import finding_json, script
from bnprops.judging.checks import check
from bnprops.judging.declarations import KnownDeviation
from bnprops.judging.deviations.native_zero_variance_eps0 import NATIVE_ZERO_VARIANCE_EPS0
from bnprops.mx.runners import IN_PROCESS_BACKEND, run_symbolic
from tests.helpers import FOCUSED, first_finding

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def known_entry(kd: KnownDeviation) -> Entry:
    """A catalogue entry for a known deviation's own reproducer case, judged through the symbolic runner."""
    case = kd.reproducer()
    sigs = classify(check(case, runner=run_symbolic, entry="sym"), backend="onednn")
    sig = next(s for s in sigs if s.kind == KNOWN and s.deviation == kd.id)
    return Entry(sig, 1, case, "smallest seen")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fuzz", "--time", "-1"], "positive number of seconds"),
        (["fuzz", "--time", "soon"], "expected a positive number of seconds"),
        (["fuzz", "--max-examples", "0"], "expected a positive integer"),
        (["fuzz", "--shard", "3/2"], "1 <= I <= N"),
        (["fuzz", "--shard", "first"], "expected I/N"),
        (["fuzz", "--workers", "0"], "expected a positive integer"),
        (["fuzz", "--seed", "-3"], "non-negative integer seed"),
        (["fuzz", "--entry", "nope"], "unknown entry point 'nope'"),
        (["fuzz", "--dtype", "float8"], "unknown dtype 'float8'"),
        (["fuzz", "--backend", "cuda"], "unknown backend 'cuda'"),
        (["fuzz", "--frobnicate"], "unrecognized arguments"),
        (["merge"], "the following arguments are required"),
        (["repro", "no-such-file.json"], "no such file"),
        (["launch"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_that_says_what_was_expected(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run_cli(args, capsys)
    assert code == cli.EXIT_USAGE
    assert message in err, err


def test_a_file_that_is_not_a_case_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    code, _, err = run_cli(["repro", str(bad)], capsys)
    assert code == cli.EXIT_USAGE and "not a bnprops finding or case" in err


def test_merge_of_a_folder_without_a_report_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["merge", str(tmp_path), "--out", str(tmp_path / "m")], capsys)
    assert code == cli.EXIT_USAGE and "holds no report.json" in err


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ([], ["fuzz", "repro", "merge", "bench"]),
        (["fuzz"], ["--max-examples", "--time", "--shard", "--workers", "exit status", "report.json", "Ctrl-C"]),
        (["repro"], ["FILE.json", "Exit status 1 while"]),
        (["merge"], ["DIR", "--out", "smallest"]),
        (["bench"], ["--examples", "--fuzz-seconds", "ceiling", "Hypothesis"]),
    ],
)
def test_help_explains_each_command(command: list[str], words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([*command, "--help"], capsys)
    assert code == 0
    for word in words:
        assert word in out, f"{word!r} missing from bnprops {' '.join(command)} --help"


def test_a_tiny_campaign_writes_a_valid_report_and_shows_progress(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bnprops", "fuzz", "--max-examples", "25", "--seed", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "cases/s" in result.stderr and "failures so far" in result.stderr
    assert "\r" not in result.stderr, "not a TTY: progress must be plain lines"
    data = json.loads((out / "report.json").read_text())
    assert data["format"] == "bnprops.report/1"
    assert data["cases"] == 25 == sum(c["cases"] for c in data["counts"])
    assert data["parameters"]["max_examples"] == 25 and data["parameters"]["seed"] == 3
    assert data["catalogue"]["new"] == []
    assert (out / "errors.png").read_bytes().startswith(b"\x89PNG")
    assert "# bnprops fuzz report" in (out / "report.md").read_text()
    assert str(out / "report.md") in result.stdout


def test_repro_explains_a_known_deviation_and_exits_1_while_it_persists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    finding = tmp_path / "finding.json"
    finding.write_text(finding_json(known_entry(NATIVE_ZERO_VARIANCE_EPS0)))
    code, out, _ = run_cli(["repro", str(finding)], capsys)
    assert code == cli.EXIT_FOUND
    assert f"moving_var matches the recorded deviation {NATIVE_ZERO_VARIANCE_EPS0.id}" in out
    assert "moving_var" in out and "FAILS" in out and "persists" in out


def test_repro_of_a_fault_that_is_not_in_mxnet_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = campaign.run(
        plan.CampaignConfig(out=tmp_path, dtypes=("float64",), max_examples=20, seed=1, **FOCUSED),
        runner_factory=planted.dbeta_off_by_one_percent,
    )
    finding = tmp_path / "findings" / f"{first_finding(report)}.json"
    code, out, _ = run_cli(["repro", str(finding)], capsys)
    assert code == cli.EXIT_OK
    assert "is gone" in out


@pytest.mark.parametrize(
    ("deviation", "quantity"), [(NATIVE_ZERO_VARIANCE_EPS0, "moving_var")], ids=[NATIVE_ZERO_VARIANCE_EPS0.id]
)
def test_the_reproducer_script_runs_alone_and_exits_1_while_the_deviation_persists(
    tmp_path: Path, deviation: KnownDeviation, quantity: str
) -> None:
    path = tmp_path / "repro.py"
    path.write_text(script(known_entry(deviation)))
    # -I: no PYTHONPATH, no user site, no current directory: bnprops cannot be imported.
    result = subprocess.run(
        [sys.executable, "-I", str(path)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{quantity}: DEVIATES" in result.stdout and "deviation persists" in result.stdout
    assert "matches the recorded deviation" in result.stdout


def test_the_reproducer_of_a_broken_null_buffer_checks_the_buffer(tmp_path: Path) -> None:
    x = [[1.0, 2.0], [4.0, -1.0], [0.5, 3.0]]
    case = NATIVE_ZERO_VARIANCE_EPS0.reproducer().with_(
        x=np.array(x, dtype="float32"),
        dy=np.array(x, dtype="float32")[::-1].copy(),
        eps=1e-3,
        gamma=np.ones(2, "float32"),
        beta=np.zeros(2, "float32"),
        moving_mean=np.zeros(2, "float32"),
        moving_var=np.ones(2, "float32"),
        grad_req=("null", "write", "write"),
    )
    backend = IN_PROCESS_BACKEND
    outcome = check(case, runner=planted.writes_null_buffers("sym", backend), entry="sym", backend=backend)
    [sig] = [s for s in classify(outcome, backend=backend) if s.quantity == "dx"]
    path = tmp_path / "repro.py"
    path.write_text(script(Entry(sig, 1, case, "smallest seen")))
    # MXNet itself leaves the buffer alone: the script, which checks it bit for bit, says the finding is gone.
    result = subprocess.run(
        [sys.executable, "-I", str(path)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0 and "deviation gone" in result.stdout, result.stdout + result.stderr


def test_the_reproducer_script_exits_0_when_mxnet_agrees(tmp_path: Path) -> None:
    entry = known_entry(NATIVE_ZERO_VARIANCE_EPS0)
    # The same call with eps > 0 is well defined, and MXNet gets it right.
    agreeing = Entry(entry.signature, 1, entry.case.with_(eps=1e-3), "smallest seen")
    path = tmp_path / "repro.py"
    path.write_text(script(agreeing))
    result = subprocess.run(
        [sys.executable, "-I", str(path)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "moving_var: agrees" in result.stdout and "deviation gone" in result.stdout


def test_merge_adds_up_the_shards_and_merges_the_catalogues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = []
    for i in (0, 1):
        config = plan.CampaignConfig(
            out=tmp_path / f"shard{i}",
            dtypes=("float64",),
            max_examples=30,
            chunk_size=15,
            seed=5,
            **FOCUSED,
            shard_index=i,
            shard_count=2,
        )
        shards.append(campaign.run(config, runner_factory=planted.dbeta_off_by_one_percent))
    merged_dir = tmp_path / "merged"
    code, _out, _ = run_cli(
        ["merge", str(tmp_path / "shard0"), str(tmp_path / "shard1"), "--out", str(merged_dir)], capsys
    )
    assert code == cli.EXIT_FOUND, "the merged catalogue holds the planted deviation"
    data = json.loads((merged_dir / "report.json").read_text())
    assert data["cases"] == 60
    assert {s["parameters"]["shard"] for s in data["shards"]} == {"1/2", "2/2"}
    counts: dict[str, int] = {}
    for shard in shards:
        for entry in shard.new:
            counts[entry.signature.ident] = counts.get(entry.signature.ident, 0) + entry.count
    assert {e["id"]: e["count"] for e in data["catalogue"]["new"]} == counts
    for e in data["catalogue"]["new"]:
        assert (merged_dir / e["reproducer"]).exists()
    assert (merged_dir / "errors.png").exists() and "## Shards" in (merged_dir / "report.md").read_text()


def test_bench_prints_every_stage_against_the_ceiling(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["bench", "--examples", "30", "--fuzz-seconds", "0", "--top-decade", "1"], capsys)
    assert code == 0
    for stage in ("ceiling", "empty", "property", "stacked"):
        assert any(line.startswith(stage) for line in out.splitlines()), f"{stage} missing from:\n{out}"
    assert "x ceiling" in out


def test_bench_rejects_a_negative_fuzz_time(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["bench", "--fuzz-seconds", "-1"], capsys)
    assert code == cli.EXIT_USAGE and "--fuzz-seconds" in err

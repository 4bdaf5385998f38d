"""The BatchNorm family's members in the fuzz job: a planted fault in one member's runner is found under the
member's own signature, with a reproducer that needs only mxnet and numpy, and the report lists each member."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnprops.base import reproduction
from bnprops.fuzzing import campaign, plan
from bnprops.fuzzing.catalogue import MEMBER
from bnprops.fuzzing.report.model import Report
from bnprops.model.case import Case, Outputs
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import Runner

FAULTY = "sym-relu"


def dx_off_by_half_percent(runner: Runner) -> Runner:
    def run(case: Case) -> Outputs:
        out = dict(runner(case))
        if "dx" in out:
            out["dx"] = (out["dx"].astype(np.float64) * 1.005).astype(out["dx"].dtype)
        return out

    return run


def planted_in_v1(entry: str, backend: str) -> Runner:
    runner = runner_for(entry, backend)
    return dx_off_by_half_percent(runner) if entry == FAULTY else runner


@pytest.fixture(scope="module")
def member_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("members")
    config = plan.CampaignConfig(
        out=out,
        entries=("sym",),
        backends=("onednn",),
        dtypes=("float32",),
        max_examples=400,  # cases: an example is a group of up to 32, and each runs one member call
        time_limit=10,  # (and shrinking what it found may take plan.SHRINK_GRACE_S more)
        chunk_size=100,
        seed=3,
        network_every=0,
        sequence_every=0,
        relation_every=0,
        member_every=1,
        members=(FAULTY, "sym-v1"),  # sym-v1 cannot run on onednn: skipped, with the reason
    )
    return out, campaign.run(config, runner_factory=planted_in_v1)


def member_finding(report: Report) -> str:
    """The ident whose files stand for the first new member cause (files are written per cause: a cause of several
    signatures has one pair, its smallest example's)."""
    return next(c for c in report.causes() if c.new and c.smallest.signature.kind == MEMBER).smallest.signature.ident


def test_a_planted_fault_in_a_member_is_a_member_finding_of_its_own(member_run) -> None:  # type: ignore[no-untyped-def]
    _, report = member_run
    found = [e for e in report.new if e.signature.kind == MEMBER]
    assert found, f"expected a member finding for {FAULTY}, got {[e.signature.describe() for e in report.new]}"
    assert {e.signature.entry for e in found} == {FAULTY}
    assert any(e.signature.quantity == "BatchNormWithReLU/mismatch:dx" for e in found), [
        e.signature.quantity for e in found
    ]
    assert not [e for e in report.new if e.signature.kind != MEMBER], "the plain entry has no fault"


def test_the_report_counts_each_member_and_its_findings(member_run) -> None:  # type: ignore[no-untyped-def]
    out, report = member_run
    assert report.member_checks.get(f"{FAULTY}/onednn", {}).get("failed", 0) > 0, report.member_checks
    text = (out / "report.md").read_text()
    assert "## The BatchNorm family's members" in text and f"| {FAULTY}/onednn |" in text
    assert "Family members" in (out / "summary.md").read_text()
    skipped = [s for s in report.skipped if s["entry"] == "sym-v1"]
    assert skipped and "oneDNN" in skipped[0]["reason"], report.skipped


def test_a_member_findings_reproducer_runs_the_members_call_and_persists(member_run) -> None:  # type: ignore[no-untyped-def]
    out, report = member_run
    script = out / "findings" / f"{member_finding(report)}.py"
    text = script.read_text()
    assert "mx.sym.contrib.BatchNormWithReLU(" in text and "import bnprops" not in text
    # The planted fault is not in MXNet: the reproducer, run on MXNet itself, finds the deviation gone.
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == reproduction.GONE, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith(reproduction.GONE_LINE)


def test_no_member_runs_when_none_is_chosen(tmp_path: Path) -> None:
    config = plan.CampaignConfig(out=tmp_path, entries=("nd",), dtypes=("float32",), max_examples=20, members=())
    report = campaign.run(config)
    assert report.member_checks == {}


def test_bnprops_repro_runs_a_member_finding_through_the_members_judge(  # type: ignore[no-untyped-def]
    member_run, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnprops.commands import cli

    out, report = member_run
    code = cli.main(["repro", str(out / "findings" / f"{member_finding(report)}.json")])
    printed = capsys.readouterr().out
    assert code == cli.EXIT_OK and "member entry 'sym-relu'" in printed and "is gone" in printed, printed

"""A campaign stops on every signal a scheduler sends: Ctrl-C and SIGTERM write the report with their own stop
reason, and no worker or helper process outlives the campaign, even one killed outright (SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnprops.fuzzing import campaign, plan
from tests.helpers import FOCUSED

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's")


def session_members(session: int) -> list[int]:
    """The live processes of a session (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found.append(int(stat.parent.name))
    return found


def started_campaign(out: Path) -> subprocess.Popen[bytes]:
    """A two-worker campaign in a session of its own, once its workers run (networks on: helper processes too)."""
    command = [sys.executable, "-m", "bnprops", "fuzz", "--time", "300", "--workers", "2", "--networks", "1"]
    proc = subprocess.Popen([*command, "--out", str(out)], start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while len(session_members(proc.pid)) < 5 and time.monotonic() < deadline:  # parent, 2 workers, helpers
        time.sleep(0.5)
    time.sleep(3)  # the workers judging
    return proc


def ended(proc: subprocess.Popen[bytes], *, within: float) -> int:
    try:
        return proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def assert_nothing_left(session: int) -> None:
    deadline = time.monotonic() + 15
    while session_members(session) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not session_members(session), f"campaign processes left: {session_members(session)}"


@pytest.mark.parametrize(
    ("signum", "to_group", "reason"),
    [(signal.SIGTERM, False, "terminated"), (signal.SIGTERM, True, "terminated"), (signal.SIGINT, True, "interrupted")],
    ids=["sigterm-to-the-campaign", "sigterm-to-its-group", "ctrl-c"],
)
def test_a_stopped_campaign_writes_its_report_and_leaves_no_process(
    tmp_path: Path, signum: int, to_group: bool, reason: str
) -> None:
    proc = started_campaign(tmp_path)
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    ended(proc, within=60)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stop_reason"] == reason
    assert_nothing_left(proc.pid)


def test_a_campaign_killed_outright_takes_its_workers_and_helpers_with_it(tmp_path: Path) -> None:
    proc = started_campaign(tmp_path)
    assert len(session_members(proc.pid)) >= 3
    os.kill(proc.pid, signal.SIGKILL)
    ended(proc, within=10)
    assert_nothing_left(proc.pid)


def test_a_ctrl_c_landing_while_progress_is_reported_still_stops_every_worker(tmp_path: Path) -> None:
    def progress(*totals: int) -> None:
        if not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the signal lands here, outside the wait for the workers' messages

    signalled: list[bool] = []
    config = plan.CampaignConfig(out=tmp_path, time_limit=300, workers=2, entries=("nd",), **FOCUSED)
    try:
        report = campaign.run(config, progress=progress)
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped the campaign instead of stopping its workers")
    assert signalled, "no progress was reported"
    assert report.stop_reason == "interrupted"
    assert report.elapsed_s < 60

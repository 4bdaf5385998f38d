"""``bnprops doctor`` and bnprops without MXNet: the build is named, what applies is said, what to install too."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bnprops.commands import cli, doctor
from bnprops.judging.deviations import ALL
from bnprops.mx import mxversion
from bnprops.mx.runners import ENTRY_POINTS


def test_the_doctor_names_the_build_and_says_what_applies(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith(f"MXNet {mxversion.running()} (") and "oneDNN:" in out and "engine:" in out
    for entry in ENTRY_POINTS:
        assert f"\n  {entry:<14}" in out, entry
    for d in ALL:
        line = next(row for row in out.splitlines() if row.strip().startswith(d.id + " "))
        assert line.endswith("applies") == d.releases.holds(mxversion.running()) or "needs the" in line, line


def test_the_doctor_gives_a_reason_for_everything_it_skips() -> None:
    for line in doctor.report():
        if "skipped" in line or "absent" in line:
            assert line.split("skipped:" if "skipped" in line else "absent", 1)[1].strip(), line


def test_without_mxnet_every_command_says_what_to_install() -> None:
    for argv in (["fuzz", "--time", "1"], ["doctor"], ["--help"]):
        code = (
            f"import sys; sys.modules['mxnet'] = None; from bnprops.commands import cli; sys.exit(cli.main({argv!r}))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == cli.EXIT_USAGE, (argv, done.stderr[-1000:])
        assert "pip install 'bnprops[mxnet]'" in done.stderr and "Traceback" not in done.stderr, argv

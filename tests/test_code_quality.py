"""ruff and mypy on the package are part of the test suite, so CI enforces them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "bnprops", "tests", "conftest.py"),
        ("ruff", "format", "--check", "bnprops", "tests", "conftest.py"),
        ("mypy", "bnprops"),
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_the_package_passes_static_checks(command: tuple[str, ...]) -> None:
    if shutil.which(command[0]) is None and run_tool(command[0], "--version").returncode != 0:
        pytest.fail(f"{command[0]} is not installed: install the dev extras with  pip install -e '.[dev]'")
    result = run_tool(*command)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"

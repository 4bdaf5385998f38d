"""Reports and findings are written atomically: the old file or the new one, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import pytest

from bnprops.base import atomic


def test_a_write_replaces_the_file_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    atomic.write_text(path, "old")
    before = os.stat(path).st_ino
    atomic.write_text(path, "new")
    assert path.read_text() == "new"
    assert os.stat(path).st_ino != before, "rewritten in place, not replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_a_write_that_fails_halfway_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "errors.png"
    atomic.write_bytes(path, b"old picture")

    def breaks_halfway(handle: IO[bytes]) -> None:
        handle.write(b"half a pic")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_with(path, breaks_halfway)
    assert path.read_bytes() == b"old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.png"]


def test_written_files_get_ordinary_permissions(tmp_path: Path) -> None:
    atomic.write_text(tmp_path / "a.md", "x")
    atomic.write_text(tmp_path / "a.py", "x", executable=True)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.md").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "a.py").stat().st_mode & 0o777 == 0o777 & ~mask

"""Atomic writes: a reader sees the old file or the new one, never half of either.

Each write goes to a temporary file in the destination's own folder (so the rename cannot cross
file systems), is flushed to disk, and replaces the destination with os.replace.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def replacing(path: Path, *, executable: bool = False) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``, on an error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private; give it the permissions a plain open() would have.
        os.chmod(tmp, (0o777 if executable else 0o666) & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as handle:
        handle.write(data)


def write_text(path: Path, text: str, *, executable: bool = False) -> None:
    with replacing(path, executable=executable) as handle:
        handle.write(text.encode("utf-8"))


def write_with(path: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Let ``writer`` fill a binary stream (np.savez, Figure.savefig) and put the result in place atomically."""
    with replacing(path) as handle:
        writer(handle)

"""The MXNet releases bnprops checks, and one isolated environment per release under a cache folder.

Each release installs the way it installs on Python 3.11: ``pip install mxnet==V 'numpy<1.24'``, and
1.3.1/1.4.1 with ``--no-deps`` (their metadata pins numpy < 1.15, which does not build on 3.11; they run
with numpy 1.23).  Then bnprops's runtime dependencies (hypothesis, pytest, matplotlib, requests); bnprops
itself is not installed there: it runs from this source tree through PYTHONPATH, so every release is
checked by the same code.  An environment that imports the right mxnet is reused; an install that fails
is reported with its reason, never raised.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bnprops.mx import mxversion

#: Every release from 1.3.1 to 1.9.1 that installs on Python 3.11 here (the newest patch of each minor).
RELEASES = ("1.3.1", "1.4.1", "1.5.1.post0", "1.6.0", "1.7.0.post2", "1.8.0.post0", "1.9.1")
#: Their metadata pins dependencies that do not install on 3.11; the code itself runs with numpy 1.23.
NO_DEPS = frozenset({"1.3.1", "1.4.1"})
#: numpy < 1.24: every 1.x release uses np.bool/np.int, removed in 1.24.
RUNTIME_DEPS = ("numpy<1.24", "requests", "hypothesis>=6.100", "pytest>=8", "matplotlib>=3.7")
#: Written into an environment once its install succeeded; its absence means "install again".
READY = "bnprops-ready"

Run = Callable[..., subprocess.CompletedProcess[str]]


def default_cache() -> Path:
    """BNPROPS_RELEASES_CACHE, else ~/.cache/bnprops/releases (XDG_CACHE_HOME honoured)."""
    explicit = os.environ.get("BNPROPS_RELEASES_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bnprops" / "releases"


def project_root() -> Path:
    """The folder holding the bnprops package: PYTHONPATH for every release's processes."""
    return Path(__file__).resolve().parent.parent


def resolve(name: str) -> str:
    """A release as pip spells it: '1.5.1' and '1.5' find '1.5.1.post0'. Raises ValueError for others."""
    if name in RELEASES:
        return name
    try:
        wanted = mxversion.parse(name)
    except ValueError as exc:
        raise ValueError(f"{exc}; known releases: {', '.join(RELEASES)}") from None
    parts = name.split(".")
    for release in RELEASES:
        have = mxversion.parse(release)
        if have == wanted or (len(parts) == 2 and have[:2] == wanted[:2]):
            return release
    raise ValueError(f"MXNet {name} is not one of the releases bnprops checks: {', '.join(RELEASES)}")


def install_commands(release: str, python: Path) -> list[list[str]]:
    """The pip commands that install ``release`` into the environment whose interpreter is ``python``."""
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    mxnet = [*pip, *(["--no-deps"] if release in NO_DEPS else []), f"mxnet=={release}", "numpy<1.24"]
    return [mxnet, [*pip, *RUNTIME_DEPS]]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process in a release's venv: this source tree first on the path, no user site."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join([str(project_root()), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONNOUSERSITE"] = "1"
    return env | (extra or {})


@dataclasses.dataclass
class Environment:
    """One release's environment: where it is and whether it is usable (else why not)."""

    release: str
    path: Path
    ok: bool
    reason: str = ""
    reused: bool = False
    install_s: float = 0.0

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def to_dict(self) -> dict[str, object]:
        return {
            "release": self.release,
            "path": str(self.path),
            "ok": self.ok,
            "reason": self.reason,
            "reused": self.reused,
            "install_s": round(self.install_s, 1),
        }


def _imports_mxnet(python: Path, release: str, run: Run) -> str | None:
    """None if ``python`` imports the release's mxnet and bnprops's dependencies, else why not."""
    if not python.exists():
        return f"no interpreter at {python}"
    code = "import mxnet, hypothesis, pytest, numpy; print(mxnet.__version__)"
    proc = run([str(python), "-c", code], capture_output=True, text=True, timeout=300, env=child_env(), check=False)
    if proc.returncode != 0:
        return _tail(proc.stderr) or f"exit status {proc.returncode}"
    found = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if mxversion.parse(found) != mxversion.parse(release):
        return f"imports mxnet {found!r}, not {release}"
    return None


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[:500]


def prepare(
    release: str,
    *,
    cache: Path,
    base_python: str = sys.executable,
    log: Path | None = None,
    run: Run = subprocess.run,
) -> Environment:
    """Create (or reuse) the environment of ``release`` under ``cache``; failures come back in the result."""
    path = cache / release
    env = Environment(release, path, ok=False)
    t0 = time.monotonic()
    if (path / READY).exists() and _imports_mxnet(env.python, release, run) is None:
        env.ok, env.reused = True, True
        return env
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if path.exists():
            shutil.rmtree(path)  # a half-made environment: start again rather than trust it
        steps = [[base_python, "-m", "venv", str(path)], *install_commands(release, path / "bin" / "python")]
        output: list[str] = []
        for command in steps:
            proc = run(command, capture_output=True, text=True, timeout=1800, check=False)
            output.append(f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}")
            if proc.returncode != 0:
                env.reason = f"`{' '.join(command[-3:])}` failed: {_tail(proc.stderr) or proc.returncode}"
                break
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("\n".join(output))
        if not env.reason:
            problem = _imports_mxnet(env.python, release, run)
            if problem is None:
                (path / READY).write_text(" && ".join(" ".join(c) for c in steps) + "\n")
                env.ok = True
            else:
                env.reason = f"installed, but does not import: {problem}"
    except (OSError, subprocess.SubprocessError) as exc:
        env.reason = f"{type(exc).__name__}: {exc}"
    env.install_s = time.monotonic() - t0
    return env


def requested(names: Sequence[str] | None) -> list[str]:
    """The releases named (resolved, in release order, each once), or every release."""
    if not names:
        return list(RELEASES)
    chosen = {resolve(n) for n in names}
    return [r for r in RELEASES if r in chosen]

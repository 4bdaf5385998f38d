"""The MXNet releases and builds bnprops checks, and one isolated environment per build under a cache folder.

A build is a distribution and a release: the ``mxnet`` CPU wheels 1.3.1-1.9.1, the separate oneDNN wheels
``mxnet-mkl`` of 1.3-1.6 (named ``mkl-V``) and ``mxnet-native`` 1.8.0 (no oneDNN, ``native-V``).  Each
installs the way it installs on Python 3.11: ``pip install DIST==V 'numpy<1.24'``, 1.3.1/1.4.1 with
``--no-deps`` (their metadata pins numpy < 1.15, which does not build on 3.11; they run with numpy 1.23).
Then bnprops's own runtime requirements (as its package metadata lists them, and pytest-xdist); bnprops
itself runs from this source tree through PYTHONPATH, so every build is checked by the same code.  An
environment that imports the right mxnet is reused; a failed install is reported with its reason, never raised.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
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
#: The other CPU builds on PyPI: oneDNN as a separate wheel before 1.7, and 1.8's build without it.
OTHER_BUILDS = ("mkl-1.3.1", "mkl-1.4.1", "mkl-1.5.1.post0", "mkl-1.6.0", "native-1.8.0.post0")
BUILDS = RELEASES + OTHER_BUILDS
#: A build's name before its release, and the distribution it installs.
DISTRIBUTIONS = {"mkl": "mxnet-mkl", "native": "mxnet-native"}
#: Their metadata pins dependencies that do not install on 3.11; the code itself runs with numpy 1.23.
NO_DEPS = frozenset({"1.3.1", "1.4.1"})
#: numpy < 1.24: every 1.x release uses np.bool/np.int, removed in 1.24 (also bnprops's own pin).
NUMPY = "numpy<1.24"
#: Besides bnprops's requirements: the pytest step spreads the suite over the cores, and the release probe's
#: old mxnet imports requests.
TEST_RUNTIME = ("pytest-xdist>=3.5", "requests")
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
    return Path(__file__).resolve().parents[2]


def split(build: str) -> tuple[str, str]:
    """A build's distribution and release: 'mkl-1.6.0' is ('mxnet-mkl', '1.6.0'), '1.6.0' ('mxnet', '1.6.0')."""
    prefix, _, release = build.rpartition("-")
    return DISTRIBUTIONS.get(prefix, "mxnet"), release


def resolve(name: str) -> str:
    """A build as bnprops names it: '1.5.1' and '1.5' find '1.5.1.post0', 'mkl-1.5' and 'mxnet-mkl==1.5.1'
    find 'mkl-1.5.1.post0'. Raises ValueError for others, listing the known builds."""
    if name in BUILDS:
        return name
    prefix, _, release = name.replace("==", "-").removeprefix("mxnet-").rpartition("-")
    if prefix and prefix not in DISTRIBUTIONS:
        raise ValueError(f"{name!r}: not a build bnprops installs; known builds: {', '.join(BUILDS)}")
    try:
        wanted = mxversion.parse(release)
    except ValueError as exc:
        raise ValueError(f"{exc}; known builds: {', '.join(BUILDS)}") from None
    for build in BUILDS:
        dist, have_release = split(build)
        have = mxversion.parse(have_release)
        if dist == DISTRIBUTIONS.get(prefix, "mxnet") and (
            have == wanted or (len(release.split(".")) == 2 and have[:2] == wanted[:2])
        ):
            return build
    raise ValueError(f"MXNet {name} is not one of the builds bnprops checks: {', '.join(BUILDS)}")


def runtime_requirements() -> list[str]:
    """bnprops's own requirements (its package metadata, so they are stated once, in pyproject), for a
    build's environment; falls back to the numpy pin where bnprops runs from a tree it was not installed from."""
    try:
        listed = importlib.metadata.requires("bnprops") or []
    except importlib.metadata.PackageNotFoundError:
        listed = []
    return [NUMPY, *(r for r in listed if "extra ==" not in r and not r.startswith("numpy")), *TEST_RUNTIME]


def install_commands(build: str, python: Path) -> list[list[str]]:
    """The pip commands that install ``build`` into the environment whose interpreter is ``python``."""
    dist, release = split(build)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    mxnet = [*pip, *(["--no-deps"] if release in NO_DEPS else []), f"{dist}=={release}", NUMPY]
    return [mxnet, [*pip, *runtime_requirements()]]


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


def _imports_mxnet(python: Path, build: str, run: Run) -> str | None:
    """None if ``python`` imports the build's mxnet and bnprops's dependencies, else why not."""
    release = split(build)[1]
    if not python.exists():
        return f"no interpreter at {python}"
    code = "import mxnet, hypothesis, pytest, numpy, numba, xdist; print(mxnet.__version__)"
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
    steps = [[base_python, "-m", "venv", str(path)], *install_commands(release, path / "bin" / "python")]
    recipe = " && ".join(" ".join(c) for c in steps[1:]) + "\n"  # not the interpreter that made the venv
    # Reused only if it was made by today's commands: a new requirement of bnprops means a new install.
    ready = path / READY
    if ready.exists() and ready.read_text() == recipe and _imports_mxnet(env.python, release, run) is None:
        env.ok, env.reused = True, True
        return env
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if path.exists():
            shutil.rmtree(path)  # a half-made or outdated environment: start again rather than trust it
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
                ready.write_text(recipe)
                env.ok = True
            else:
                env.reason = f"installed, but does not import: {problem}"
    except (OSError, subprocess.SubprocessError) as exc:
        env.reason = f"{type(exc).__name__}: {exc}"
    env.install_s = time.monotonic() - t0
    return env


def requested(names: Sequence[str] | None) -> list[str]:
    """The builds named (resolved, in the order of BUILDS, each once), or every build."""
    if not names:
        return list(BUILDS)
    chosen = {resolve(n) for n in names}
    return [b for b in BUILDS if b in chosen]

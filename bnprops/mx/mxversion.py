"""Which MXNet release runs here, which oneDNN it was built with, and in which releases a deviation holds.

Known deviations carry a :class:`Releases` scope (in their declarations, judging.deviations): the range
of releases in which it holds, and the releases in which ``bnprops versions`` ran its reproducer, with the result.
The judgement applies a deviation only where its scope holds; elsewhere it is *absent*, not stale.

Nothing here imports mxnet at module level: ``bnprops versions`` uses it to read other releases' results.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

#: Releases are compared by their numeric components; a post-release tag (1.5.1.post0) is the same code.
_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


@functools.lru_cache(maxsize=256)
def parse(version: str) -> tuple[int, int, int]:
    """'1.5.1.post0' -> (1, 5, 1); '1.9' -> (1, 9, 0). Raises ValueError on anything else."""
    match = _VERSION.match(version.strip())
    if match is None:
        raise ValueError(f"not an MXNet release number: {version!r} (expected e.g. 1.9.1 or 1.5.1.post0)")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def running() -> str:
    """mx.__version__ of the MXNet this process imports (tests monkeypatch this to play another release)."""
    import mxnet as mx

    return str(mx.__version__)


@functools.lru_cache(maxsize=1)
def onednn_built() -> bool:
    """Was this MXNet built with oneDNN (the MKLDNN feature)? The 1.3-1.6 'mxnet' wheels were not (mxnet-mkl was)."""
    import importlib

    try:
        runtime = importlib.import_module("mxnet.runtime")  # 1.5+: not an attribute of mxnet until imported
        return bool(runtime.Features().is_enabled("MKLDNN"))
    except (ImportError, AttributeError, RuntimeError):
        # 1.3/1.4 have no feature list: mxnet-mkl ships MKL-DNN's library beside libmxnet.so, 'mxnet' does not.
        package = importlib.import_module("mxnet")
        return any(Path(str(package.__file__)).parent.glob("lib*mkldnn.so*"))


_PROBE = """
import mxnet as mx
x = mx.nd.ones((1, 3, 4, 4))
mx.nd.Convolution(x, mx.nd.ones((8, 3, 3, 3)), no_bias=True, kernel=(3, 3), num_filter=8).wait_to_read()
"""
_VERBOSE_INFO = re.compile(r"(?:dnnl|mkldnn)_verbose,info,(?:[^,\n]*?)(v\d+\.\d+(?:\.\d+)?(?: \(commit [0-9a-f]+\))?)")


@functools.lru_cache(maxsize=1)
def onednn_version() -> str:
    """oneDNN's version as the library prints it in verbose mode ('oneDNN v2.4.4 (commit ...)').

    The wheels do not export dnnl_version(); a convolution in a child process with DNNL_VERBOSE=1 makes
    the library print its own banner (about 2 s, once per process).
    """
    if not onednn_built():
        return "not built (this MXNet has no MKLDNN feature)"
    env = {**os.environ, "DNNL_VERBOSE": "1", "MKLDNN_VERBOSE": "1", "MXNET_MKLDNN_ENABLED": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"built, version unknown ({type(exc).__name__})"
    for line in proc.stdout.splitlines():
        if ",info," in line and "_verbose" in line:
            found = _VERBOSE_INFO.search(line)
            if found:
                name = line.split(",info,", 1)[1].split(" v", 1)[0].strip() or "oneDNN"
                return f"{name} {found.group(1)}"
    return "built, version unknown (no verbose banner)"


#: What a build can lack although its release has it: a trait measured on the running MXNet, by name.
FLOAT16_TRUNCATES = "float16 conversion truncates"


@functools.lru_cache(maxsize=1)
def float16_conversion() -> str:
    """How this MXNet rounds float32 to float16: 'to nearest' (F16C's conversion) or 'toward zero'.

    A build made without F16C (USE_F16C=0, or a build host without it) converts in mshadow's software
    half_t, which truncates the mantissa and turns anything above 65504 into inf (mxnet-mkl 1.3.1 does).
    """
    import mxnet as mx
    import numpy as np

    probe = np.array([1e-6, 65519.0], dtype=np.float32)  # rounds up to nearest: 1.0133e-06, 65504
    got = mx.nd.array(probe, dtype="float32").astype("float16").asnumpy()
    return "to nearest" if np.array_equal(got, probe.astype(np.float16)) else "toward zero"


def build_traits() -> frozenset[str]:
    """The traits (FLOAT16_TRUNCATES, ...) the running MXNet build shows."""
    return frozenset({FLOAT16_TRUNCATES} if float16_conversion() == "toward zero" else set())


def environment() -> dict[str, str]:
    """What every report records about the software under test."""
    import mxnet as mx
    import numpy as np

    return {
        "mxnet": str(mx.__version__),
        "onednn": onednn_version(),
        "numpy": str(np.__version__),
        "python": sys.version.split()[0],
    }


@dataclasses.dataclass(frozen=True)
class Releases:
    """The MXNet releases a deviation holds in: ``since`` (inclusive) up to ``fixed`` (exclusive); None: open.

    ``probed`` is what ``bnprops versions`` measured: (release, reproduced) per release its reproducer ran
    in. The range must agree with every probe (test_versions checks it), so a scope is never
    assumed from the changelog alone.
    """

    since: str | None = None
    fixed: str | None = None
    probed: tuple[tuple[str, bool], ...] = ()
    #: The upstream issue or pull request that introduced or fixed it, where the scope is not 'every release'.
    why: str = ""
    #: Where the range comes from while no release was probed: the source history read (never a guess).
    basis: str = ""
    #: A build trait it needs besides the release (build_traits(); measured on the running MXNet): a deviation
    #: of one build of a release, not of every build of it. Empty: every build.
    trait: str = ""

    def __post_init__(self) -> None:
        for version in (self.since, self.fixed, *(v for v, _ in self.probed)):
            if version is not None:
                parse(version)
        if self.since and self.fixed and parse(self.since) >= parse(self.fixed):
            raise ValueError(f"since {self.since} must come before fixed {self.fixed}")

    def holds(self, version: str) -> bool:
        v = parse(version)
        if self.since is not None and v < parse(self.since):
            return False
        return self.fixed is None or v < parse(self.fixed)

    def holds_here(self) -> bool:
        """Does it hold in the running MXNet: its release, and the build trait it needs?"""
        return self.holds(running()) and (not self.trait or self.trait in build_traits())

    def contradictions(self) -> list[str]:
        """Probes that the range gets wrong (none, for a scope that was probed, not assumed)."""
        return [
            f"{version}: probed {'present' if seen else 'absent'}, scope says {'present' if not seen else 'absent'}"
            for version, seen in self.probed
            if self.holds(version) != seen
        ]

    def describe(self) -> str:
        build = f"; builds whose {self.trait}" if self.trait else ""
        if self.since is None and self.fixed is None:
            return "every release" + build
        parts = ([f">= {self.since}"] if self.since else []) + ([f"< {self.fixed}"] if self.fixed else [])
        return ", ".join(parts) + build

    def provenance(self) -> str:
        """What the range rests on: the releases probed and what each showed, or 'not probed' and the source read."""
        probed = ", ".join(f"{v} {'present' if seen else 'absent'}" for v, seen in self.probed)
        source = f"from the source history: {self.basis}" if self.basis else ""
        if probed:
            return f"probed: {probed}" + (f"; elsewhere not probed, {source}" if source else "")
        return "not probed" + (f"; {source}" if source else "")

    def to_dict(self) -> dict[str, object]:
        return {
            "since": self.since,
            "fixed": self.fixed,
            "scope": self.describe(),
            "probed": {v: seen for v, seen in self.probed},
            "why": self.why,
            "basis": self.basis,
            "trait": self.trait,
            "provenance": self.provenance(),
        }


EVERY_RELEASE = Releases()

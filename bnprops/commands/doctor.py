"""``bnprops doctor``: which MXNet build bnprops is about to check, and what of bnprops applies to it.

bnprops checks whatever MXNet is installed beside it (a CPU wheel, mxnet-mkl, mxnet-native, a CUDA build, a
source build).  Before trusting a run, a user should see which build that is and what it cannot run: each
entry point, backend, check family and recorded deviation, with the reason where it is skipped.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from collections.abc import Iterable

from bnprops.mx import mxversion

INSTALL_HINT = (
    "bnprops needs MXNet: install the 1.9.1 CPU wheel with  pip install 'bnprops[mxnet]'  (or, in a checkout, "
    "pip install -e '.[mxnet,dev]'), or install your own build first (mxnet-cu112, mxnet-native, mxnet-mkl, a "
    "source build): bnprops uses whichever mxnet it finds"
)
#: The file whose size tells the builds apart when two distributions installed the same mxnet package.
_LIBRARY = "mxnet/libmxnet.so"


def distribution(
    *, installed: Iterable[importlib.metadata.Distribution] | None = None, package_dir: str | None = None
) -> str:
    """The distribution whose files ``import mxnet`` loads (name and version), with a warning if two claim them.

    Every build installs the same ``mxnet`` package (mxnet, mxnet-mkl, mxnet-native, mxnet-cu112, ...), so the
    name is read from the metadata of the distributions that own files under mxnet/, not guessed from a list.
    When two do (pip installed one over the other: the files are the last one's, and uninstalling either
    breaks the other), the one whose recorded libmxnet.so size matches the file on disk is named.
    """
    dists = list(importlib.metadata.distributions() if installed is None else installed)
    owners = [d for d in dists if _installs_mxnet(d)]
    if not owners:
        return "no distribution metadata (a source build on the path?)"
    if len(owners) == 1:
        return _name(owners[0])
    here = package_dir if package_dir is not None else _package_dir()
    size = _size_on_disk(here)
    matching = [d for d in owners if size is not None and _recorded_size(d) == size]
    named = _name(matching[0]) if len(matching) == 1 else "which one is unclear"
    others = ", ".join(_name(d) for d in owners if not (len(matching) == 1 and d is matching[0]))
    return (
        f"{named}; WARNING: {len(owners)} distributions install the mxnet package ({others} too): "
        "pip installed one over the other; uninstall both and reinstall the build you mean to check"
    )


def _installs_mxnet(dist: importlib.metadata.Distribution) -> bool:
    files = dist.files or []
    if any(str(f).startswith("mxnet/") for f in files):
        return True
    top_level = dist.read_text("top_level.txt") or ""
    return "mxnet" in top_level.split()


def _name(dist: importlib.metadata.Distribution) -> str:
    return f"{dist.metadata['Name']} {dist.version}"


def _recorded_size(dist: importlib.metadata.Distribution) -> int | None:
    return next((f.size for f in dist.files or [] if str(f) == _LIBRARY), None)


def _package_dir() -> str | None:
    spec = importlib.util.find_spec("mxnet")
    return os.path.dirname(spec.origin) if spec is not None and spec.origin else None


def _size_on_disk(package_dir: str | None) -> int | None:
    if package_dir is None:
        return None
    try:
        return os.path.getsize(os.path.join(package_dir, os.path.basename(_LIBRARY)))
    except OSError:
        return None


#: The family members and graph rewrites by the name doctor gives them, with their entry points.
def member_reasons() -> dict[str, str | None]:
    """Why each family member entry cannot run on this build, on either CPU backend (None: it runs on one)."""
    from bnprops.base.family import MEMBER_ENTRIES
    from bnprops.mx import family

    reasons: dict[str, str | None] = {}
    for entry in MEMBER_ENTRIES:
        why = [family.skip_reason(entry, backend) for backend in ("onednn", "native")]
        reasons[entry] = None if None in why else why[0]
    return reasons


def _probed(releases: mxversion.Releases, version: str) -> str:
    """What ``bnprops versions`` measured in this release, if its reproducer ran here."""
    seen = [present for probed, present in releases.probed if mxversion.parse(probed) == mxversion.parse(version)]
    return "" if not seen else f" (probed on the mxnet {version} CPU wheel: {'present' if seen[0] else 'absent'})"


def _other_cpu_backend(here: str) -> str:
    from bnprops.mx.runners import BACKENDS, unavailable_reason

    others = [b for b in BACKENDS if b != here and unavailable_reason(b) is None]
    return f"the {others[0]} one in a worker process" if others else "the only one this build has"


def _status(reason: str | None) -> str:
    return "runs" if reason is None else f"skipped: {reason}"


def report() -> list[str]:
    """The build, then per entry point, backend, family and recorded deviation: runs, applies, or why not."""
    import mxnet as mx

    from bnprops.base.family import MEMBER_ENTRIES, spec_of
    from bnprops.judging.deviations import ALL
    from bnprops.mx import family, mxversion
    from bnprops.mx.runners import (
        ALL_BACKENDS,
        ENTRY_POINTS,
        IN_PROCESS_BACKEND,
        entry_unavailable_reason,
        network_unavailable_reason,
        sequence_unavailable_reason,
        unavailable_reason,
    )

    features = _features()
    version = mxversion.running()
    lines = [
        f"MXNet {version} ({distribution()}) at {os.path.dirname(mx.__file__)}",
        f"oneDNN: {mxversion.onednn_version() if mxversion.onednn_built() else 'not built in'}",
        f"CUDA: {_built(features, 'CUDA')}, cuDNN: {_built(features, 'CUDNN')}, GPUs: {_gpus(mx)}",
        f"features built in: {_feature_list(features)}",
        f"engine: {os.environ.get('MXNET_ENGINE_TYPE', 'ThreadedEnginePerDevice (MXNet default)')}; "
        f"this process runs the {IN_PROCESS_BACKEND} CPU backend, {_other_cpu_backend(IN_PROCESS_BACKEND)}",
        "",
        "entry points:",
        *(f"  {e:<14}{_status(entry_unavailable_reason(e))}" for e in ENTRY_POINTS),
        "backends:",
        *(f"  {b:<14}{_status(unavailable_reason(b))}" for b in ALL_BACKENDS),
        "check families (networks, training sequences) per entry point:",
        *(
            f"  {e:<14}networks {_status(network_unavailable_reason(e))}; sequences "
            f"{_status(sequence_unavailable_reason(e))}"
            for e in ENTRY_POINTS
        ),
        "the BatchNorm family's member entries, per CPU backend:",
        *(
            f"  {e:<14}{spec_of(e).name}: "
            + "; ".join(f"{b} {_status(family.skip_reason(e, b))}" for b in ("onednn", "native"))
            for e in MEMBER_ENTRIES
        ),
    ]
    members = member_reasons()
    lines.append(f"recorded deviations in MXNet {version}:")
    engine = os.environ.get("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice")
    for d in ALL:
        why = None if d.releases.holds(version) else f"absent in {version} (holds in {d.releases.describe()})"
        if why is None and d.releases.trait and not d.releases.holds_here():
            why = f"needs a build whose {d.releases.trait} (this one's does not)"
        needs = getattr(d, "needs_backend", None)
        if why is None and needs and unavailable_reason(needs) is not None:
            why = f"needs the {needs} backend: {unavailable_reason(needs)}"
        lacked = sorted(getattr(d, "entries", None) or ())
        if why is None and lacked and all(members.get(e) for e in lacked):
            why = f"needs {', '.join(lacked)}: {members[lacked[0]]}"
        needs_engine = getattr(d, "engine", None)
        if why is None and needs_engine and needs_engine != engine:
            why = f"needs MXNET_ENGINE_TYPE={needs_engine}; this run uses {engine}"
        status = "applies" if why is None else why
        lines.append(f"  {d.id:<56}{d.KIND:<13}{status}{_probed(d.releases, version)}")
    return lines


def _features() -> dict[str, bool]:
    """mx.runtime.Features: every compile-time feature and whether this build has it (none before 1.5)."""
    try:
        from mxnet import runtime

        return {name: bool(feature.enabled) for name, feature in runtime.Features().items()}
    except (ImportError, AttributeError, RuntimeError):
        return {}


def _built(features: dict[str, bool], name: str) -> str:
    if name not in features:
        return "unknown"
    return "built in" if features[name] else "not built in"


def _feature_list(features: dict[str, bool]) -> str:
    if not features:
        return "unknown (no mx.runtime.Features before MXNet 1.5)"
    return ", ".join(name for name, enabled in features.items() if enabled) or "none"


def _gpus(mx: object) -> str:
    try:
        return str(mx.context.num_gpus())  # type: ignore[attr-defined]
    except Exception as exc:  # a CPU-only build may raise instead of returning 0
        return f"none ({type(exc).__name__})"

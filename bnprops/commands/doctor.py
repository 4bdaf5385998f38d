"""``bnprops doctor``: which MXNet build bnprops is about to check, and what of bnprops applies to it.

bnprops checks whatever MXNet is installed beside it (a CPU wheel, mxnet-mkl, mxnet-native, a CUDA build, a
source build).  Before trusting a run, a user should see which build that is and what it cannot run: each
entry point, backend, check family and recorded deviation, with the reason where it is skipped.
"""

from __future__ import annotations

import importlib.metadata
import os

#: The distributions that install the ``mxnet`` package (the first found names the build).
DISTRIBUTIONS = ("mxnet", "mxnet-mkl", "mxnet-native", "mxnet-cu112", "mxnet-cu110", "mxnet-cu102", "mxnet-cu101")
INSTALL_HINT = (
    "bnprops needs MXNet: install the 1.9.1 CPU wheel with  pip install 'bnprops[mxnet]'  (or, in a checkout, "
    "pip install -e '.[mxnet,dev]'), or install your own build first (mxnet-cu112, mxnet-native, mxnet-mkl, a "
    "source build): bnprops uses whichever mxnet it finds"
)


def distribution() -> str:
    """The installed distribution that provides mxnet (its name and version), or how it was found."""
    for name in DISTRIBUTIONS:
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    found = [d.metadata["Name"] for d in importlib.metadata.distributions() if d.metadata["Name"].startswith("mxnet")]
    return found[0] if found else "no distribution metadata (a source build on the path?)"


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
        f"CUDA: {features.get('CUDA', 'unknown')}, cuDNN: {features.get('CUDNN', 'unknown')}, GPUs: {_gpus(mx)}",
        f"engine: {os.environ.get('MXNET_ENGINE_TYPE', 'ThreadedEnginePerDevice (MXNet default)')}; "
        f"this process runs the {IN_PROCESS_BACKEND} CPU backend, the other in a worker process",
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
        f"recorded deviations in MXNet {version}:",
    ]
    for d in ALL:
        why = None if d.releases.holds(version) else f"absent in {version} (holds in {d.releases.describe()})"
        needs = getattr(d, "needs_backend", None)
        if why is None and needs and unavailable_reason(needs) is not None:
            why = f"needs the {needs} backend: {unavailable_reason(needs)}"
        lines.append(f"  {d.id:<56}{d.KIND:<13}{'applies' if why is None else why}")
    return lines


def _features() -> dict[str, str]:
    try:
        from mxnet import runtime

        enabled = runtime.Features()
        return {name: ("built in" if enabled.is_enabled(name) else "not built in") for name in ("CUDA", "CUDNN")}
    except (ImportError, AttributeError, RuntimeError):
        return {}


def _gpus(mx: object) -> str:
    try:
        return str(mx.context.num_gpus())  # type: ignore[attr-defined]
    except Exception as exc:  # a CPU-only build may raise instead of returning 0
        return f"none ({type(exc).__name__})"

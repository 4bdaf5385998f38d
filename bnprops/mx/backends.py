"""Where each backend runs: the runner for an (entry point, backend) pair.

The in-process backend's runners are mx.runners's own functions; the other CPU backend's run
in a worker process (mx.worker), and the GPU backends on a GPU, where there is one.  This
module depends on both; neither depends on it, so the worker imports the runners and not the other
way round.
"""

from __future__ import annotations

import functools

import mxnet as mx

from bnprops.model.case import Case
from bnprops.mx import family, runners
from bnprops.mx.runners import Runner
from bnprops.mx.worker import worker_for


def runner_for(entry: str, backend: str) -> Runner:
    """The runner for an entry point on a backend.

    The in-process backend runs here; the other CPU backend goes to a long-lived worker process
    (bnprops.mx.worker) started with MXNET_MKLDNN_ENABLED set for it; GPU backends raise
    BackendUnavailable, with the reason, where no GPU is present.
    """
    if family.is_member(entry):
        return member_runner_for(entry, backend)
    known = runners.ENTRY_POINTS + runners.LEGACY_ENTRY_POINTS
    if entry not in known:
        raise ValueError(f"unknown entry point {entry!r}; choose from {list(known)}")
    if backend not in runners.ALL_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {list(runners.ALL_BACKENDS)}")
    missing = runners.entry_unavailable_reason(entry)
    if missing is not None:
        raise runners.EntryUnavailable(f"entry point {entry!r}: {missing}")
    if backend == "onednn" and not runners.ONEDNN_BUILT:
        raise runners.BackendUnavailable(f"backend 'onednn': {runners.unavailable_reason(backend)}")
    if backend in runners.GPU_BACKENDS:
        reason = runners.gpu_unavailable_reason()
        if reason is not None:
            raise runners.BackendUnavailable(f"backend {backend!r}: {reason}")
        return functools.partial(runners.ENTRY_FUNCTIONS[entry], ctx=mx.gpu(0), cudnn_off=backend == "cuda")
    if backend == runners.IN_PROCESS_BACKEND or entry in runners.LEGACY_ENTRY_POINTS:
        # A legacy operator has no oneDNN kernel: both CPU backends run the same code, here.
        return runners.ENTRY_FUNCTIONS[entry]
    return functools.partial(worker_for(backend).run, entry)


def member_runner_for(entry: str, backend: str) -> Runner:
    """A family member entry's runner on a backend: here if this process serves it, else in the backend's worker
    (which finds the entry's runner through mx.family); where the member cannot run, BackendUnavailable says why."""
    missing = family.unavailable_reason(entry)
    if missing is not None:
        raise runners.EntryUnavailable(f"entry {entry!r}: {missing}")
    reason = family.skip_reason(entry, backend)
    if reason is not None:
        raise runners.BackendUnavailable(f"entry {entry!r} on backend {backend!r}: {reason}")
    if backend == runners.IN_PROCESS_BACKEND:
        return family.runner(entry)
    return functools.partial(worker_for(backend).run, entry)


def same_kernel_backend(case: Case, backend: str, *, entry: str | None = None) -> str:
    """``backend`` where this build has it; on a build without oneDNN (mxnet-native, the 1.3-1.6 'mxnet' wheels),
    'native' for a case the onednn backend hands to the native kernel anyway (float16, float64, a legacy
    operator; before 1.8 float32 other than 4-D with axis 1; before 1.6 every plain call): the same kernel.
    Raises BackendUnavailable, with the reason, where the case needs a kernel this build lacks."""
    reason = runners.unavailable_reason(backend)
    if reason is None:
        return backend
    if backend == "onednn" and not runners.ONEDNN_BUILT and runners.kernel_for(case, "onednn", entry) == "native":
        return "native"
    raise runners.BackendUnavailable(f"backend {backend!r}: {reason}")

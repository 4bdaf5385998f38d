"""BatchNorm_v1 as a family member: the legacy operator old checkpoints' symbol files name (entry ``sym-v1``).

Its runner and what it cannot express are in mx.runners (run_symbolic_v1, v1_unexpressible_reason); its
semantics, verified in batch_norm_v1-inl.h, are on the family page of the docs.
"""

from __future__ import annotations

import mxnet as mx

from bnprops.model.case import Case
from bnprops.mx import runners, snippets

RUNNERS: dict[str, runners.Runner] = {"sym-v1": runners.run_symbolic_v1}

#: batch_norm_v1.cc has no oneDNN code: both CPU backends run its one mshadow kernel, checked once, as native.
KERNELS: dict[str, str | None] = {
    "onednn": "no oneDNN kernel: on the onednn backend it runs the same native code (checked as native)",
    "native": None,
}

unexpressible_reason = runners.v1_unexpressible_reason


def unavailable_reason() -> str | None:
    """Why this MXNet lacks BatchNorm_v1 (registered in every release bnprops checks), or None."""
    return None if hasattr(mx.sym, "BatchNorm_v1") else f"MXNet {mx.__version__} has no mx.sym.BatchNorm_v1"


def adapt(entry: str, case: Case) -> Case:
    """The case unchanged, or a ValueError with the reason it cannot run."""
    return runners.adapt(entry, case)


def snippet(case: Case, entry: str, *, backend: str = "native") -> str:
    return snippets.snippet(case, entry=entry, backend=backend)

"""The family's members as MXNet runs them: each member entry's runner, kernels and reasons, from its mx module.

The registry (base.family) names each member's mx module; this module resolves it and answers per entry:
the runner, why this release lacks the member, why a case cannot run, why a backend's kernel cannot run it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from bnprops.base.family import MEMBER_ENTRIES, resolve, spec_of
from bnprops.model.case import Case, Outputs
from bnprops.mx import runners


def module_of(entry: str) -> ModuleType:
    """The member's mx module for a member entry (its RUNNERS hold the entry, as the contract says)."""
    module = resolve(spec_of(entry).mx)
    if entry not in module.RUNNERS:
        raise AssertionError(f"{module.__name__}.RUNNERS lacks {entry!r}, which the registry lists")
    return module  # type: ignore[no-any-return]


def is_member(entry: str) -> bool:
    return entry in MEMBER_ENTRIES


def runner(entry: str) -> runners.Runner:
    """The member entry's in-process runner."""
    return module_of(entry).RUNNERS[entry]  # type: ignore[no-any-return]


def run_spec(spec: dict[str, Any]) -> Outputs:
    """A member call made in a helper process (judging.in_network's worker): ``spec`` holds the entry and the case."""
    return runner(spec["entry"])(spec["case"])


def unavailable_reason(entry: str) -> str | None:
    """Why this MXNet release (or build) lacks the member, or None."""
    module = module_of(entry)
    reason: str | None = module.unavailable_reason()
    if reason is None and hasattr(module, "entry_unavailable_reason"):  # one of its entries only
        reason = module.entry_unavailable_reason(entry)
    return reason


def unexpressible_reason(entry: str, case: Case) -> str | None:
    """Why the member cannot run ``case`` (as its entry adapts it), or None."""
    module = module_of(entry)
    reason = module.unexpressible_reason(case)
    if reason is None and hasattr(module, "adapt"):
        try:
            module.adapt(entry, case)
        except ValueError as exc:
            return str(exc)
    return reason  # type: ignore[no-any-return]


def adapt(entry: str, case: Case) -> Case:
    """The case as the member entry runs it (its module's adapt, if it has one)."""
    module = module_of(entry)
    return module.adapt(entry, case) if hasattr(module, "adapt") else case


def kernel_reason(entry: str, backend: str) -> str | None:
    """Why the member does not run on ``backend``'s kernel (its KERNELS), or None; GPUs are not checked yet."""
    kernels = module_of(entry).KERNELS
    if backend not in kernels:
        return f"{spec_of(entry).name} is checked on the CPU kernels only ({', '.join(kernels)})"
    return kernels[backend]  # type: ignore[no-any-return]


def skip_reason(entry: str, backend: str) -> str | None:
    """Why the member entry cannot run on ``backend`` here at all: release, build or kernel; None if it can."""
    return (
        unavailable_reason(entry)
        or kernel_reason(entry, backend)
        or (runners.unavailable_reason(backend) if backend in runners.ALL_BACKENDS else f"unknown backend {backend}")
    )


def snippet(case: Case, entry: str, *, backend: str) -> str:
    """The member's standalone call (mxnet and numpy only), leaving MXNet's results in ``actual``."""
    return module_of(entry).snippet(case, entry, backend=backend)  # type: ignore[no-any-return]


def like(entry: str) -> str | None:
    """The plain entry point whose code the member entry shares (its module's PLAIN), whose deviations apply."""
    return getattr(module_of(entry), "PLAIN", {}).get(entry)

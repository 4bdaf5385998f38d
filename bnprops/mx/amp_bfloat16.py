"""AMP's bfloat16 conversion as a family member: BatchNorm in a graph mx.contrib.amp cast to bfloat16.

The calls are mx.mixed_precision's; this module gives them the family contract for the bfloat16 entries
(oneDNN only: natively the graph's FullyConnected cannot run bfloat16).
"""

from __future__ import annotations

from collections.abc import Callable

from bnprops.model.case import Case, Outputs
from bnprops.mx import mixed_precision as amp

RUNNERS: dict[str, Callable[[Case], Outputs]] = {entry: amp.RUNNERS[entry] for entry in amp.BF16_ENTRIES}
KERNELS: dict[str, str | None] = {"onednn": None, "native": amp.NATIVE_BF16}
#: The plain entry point whose BatchNorm the converted graph keeps (its deviations apply too).
PLAIN = {"amp-sym": "sym", "amp-gluon": "gluon-hybrid"}


def unavailable_reason() -> str | None:
    return amp.unavailable_reason() or amp.bf16_unavailable_reason()


def unexpressible_reason(case: Case) -> str | None:
    return amp.unexpressible_reason(case, amp.BF16_ENTRIES[0])  # the same for both bfloat16 entries


def adapt(entry: str, case: Case) -> Case:
    return amp.adapt_entry(entry, case)


def snippet(case: Case, entry: str, *, backend: str = "onednn") -> str:
    return amp.snippet(case, entry, backend=backend)

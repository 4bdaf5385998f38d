"""AMP's float16 conversion as a family member: on CPU a lone BatchNorm stays float32 (no float16 producer runs).

The call is mx.mixed_precision's; this module gives it the family contract (both CPU kernels).
"""

from __future__ import annotations

from collections.abc import Callable

from bnprops.model.case import Case, Outputs
from bnprops.mx import mixed_precision as amp

RUNNERS: dict[str, Callable[[Case], Outputs]] = {amp.FP16_ENTRY: amp.RUNNERS[amp.FP16_ENTRY]}
KERNELS: dict[str, str | None] = {"onednn": None, "native": None}
#: The plain entry point whose BatchNorm the converted graph keeps, bit for bit (its deviations apply too).
PLAIN = {amp.FP16_ENTRY: "sym"}


def unavailable_reason() -> str | None:
    return amp.unavailable_reason()


def unexpressible_reason(case: Case) -> str | None:
    return amp.unexpressible_reason(case, amp.FP16_ENTRY)


def snippet(case: Case, entry: str, *, backend: str = "onednn") -> str:
    return amp.snippet(case, entry, backend=backend)

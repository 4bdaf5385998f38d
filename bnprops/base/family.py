"""The BatchNorm family's members by name: the one place a member is registered (issue 23).

A member is an operator users reach batch normalisation through besides ``BatchNorm`` itself. Each
provides, by the family contract, a module in the mx layer (its runners, reasons and kernels), a judge
in the judging layer and a strategy in the search layer; here it is listed with where each layer finds
its piece, by name, so that every layer resolves only its own piece and no layer imports upward.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class MemberSpec:
    """Where a member's pieces live: ``module:attribute`` names, resolved by the layer that owns each."""

    #: The member's name, as MXNet's documentation spells the operator.
    name: str
    #: The operator as a user calls it (each API, comma separated).
    operator: str
    #: Its entry names: unique to it, the member's dimension everywhere (deviation scopes, signatures, reports).
    entries: tuple[str, ...]
    #: The mx layer's module: RUNNERS, unexpressible_reason, unavailable_reason, KERNELS (and snippet, adapt).
    mx: str
    #: The judging layer's judge(case, outputs, *, entry, kernel, checked).
    judge: str
    #: The search layer's strategy of the cases the member can run (a function of keyword options).
    strategy: str
    #: Code a reproducer runs once ``expected`` and ``actual`` are defined, to bring MXNet's results into the
    #: form the judge judges (BatchNormWithReLU's y after the ReLU); empty for none.
    reproducer_view: str = ""


#: The registered members. Registering one is one entry here.
MEMBERS: tuple[MemberSpec, ...] = (
    MemberSpec(
        name="BatchNormWithReLU",
        operator="mx.nd.contrib.BatchNormWithReLU, mx.sym.contrib.BatchNormWithReLU, mx.gluon.nn.BatchNormReLU",
        entries=("nd-relu", "sym-relu", "gluon-relu"),
        mx="bnprops.mx.with_relu",
        judge="bnprops.judging.with_relu:judge_member",
        strategy="bnprops.search.with_relu:cases_for_with_relu",
        reproducer_view="bnprops.judging.with_relu:REPRODUCER_VIEW",
    ),
    MemberSpec(
        name="BatchNorm_v1",
        operator="mx.sym.BatchNorm_v1",
        entries=("sym-v1",),
        mx="bnprops.mx.v1",
        judge="bnprops.judging.v1:judge",
        strategy="bnprops.search.v1:cases_for_v1",
    ),
)

#: Every member entry, in registry order.
MEMBER_ENTRIES: tuple[str, ...] = tuple(e for m in MEMBERS for e in m.entries)


def spec_of(entry: str) -> MemberSpec:
    """The member an entry name belongs to; a ValueError that lists them if none does."""
    for member in MEMBERS:
        if entry in member.entries:
            return member
    raise ValueError(f"{entry!r} is no member entry; choose from {', '.join(MEMBER_ENTRIES)}")


def resolve(name: str) -> Any:
    """The object a ``module:attribute`` name (or a bare module name) stands for, imported on first use."""
    module, _, attribute = name.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded

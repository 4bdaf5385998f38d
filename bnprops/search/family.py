"""The BatchNorm family's members as values: each with its operator, entries and runners, kernels, reasons,
judge and strategy, resolved from the registry (base.family) in the one layer that sees all three pieces.

The pytest properties, the fuzz job, the release matrix and the docs' family table read MEMBERS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from hypothesis import strategies as st

from bnprops.base.family import MEMBERS as SPECS
from bnprops.base.family import MemberSpec, resolve, spec_of
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.mx import family as mx_family
from bnprops.mx.runners import Runner

#: judge(case, outputs, *, entry, kernel, checked) -> a value with ok, message() and outcome.
Judge = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of the family, every piece resolved."""

    spec: MemberSpec
    module: ModuleType
    judge: Judge
    strategy: Callable[..., st.SearchStrategy[Case]]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def operator(self) -> str:
        return self.spec.operator

    @property
    def entries(self) -> tuple[str, ...]:
        return self.spec.entries

    @property
    def runners(self) -> Mapping[str, Runner]:
        return self.module.RUNNERS  # type: ignore[no-any-return]

    @property
    def kernels(self) -> Mapping[str, str | None]:
        return self.module.KERNELS  # type: ignore[no-any-return]

    @property
    def reproducer_view(self) -> str:
        return str(resolve(self.spec.reproducer_view)) if self.spec.reproducer_view else ""

    def unavailable_reason(self) -> str | None:
        return self.module.unavailable_reason()  # type: ignore[no-any-return]

    def unexpressible_reason(self, entry: str, case: Case) -> str | None:
        return mx_family.unexpressible_reason(entry, case)

    def check(
        self, case: Case, *, entry: str, runner: Runner, kernel: str, checked: tuple[str, ...] = QUANTITIES
    ) -> Any:
        """Run ``case`` (adapted to the entry) through ``runner`` and judge it with the member's judge."""
        case = mx_family.adapt(entry, case)
        outputs: Outputs = runner(case)
        return self.judge(case, outputs, entry=entry, kernel=kernel, checked=checked)


def _resolved(spec: MemberSpec) -> Member:
    module = resolve(spec.mx)
    missing = [
        name
        for name in ("RUNNERS", "KERNELS", "unexpressible_reason", "unavailable_reason")
        if not hasattr(module, name)
    ]
    if missing or set(module.RUNNERS) != set(spec.entries):
        raise AssertionError(
            f"{spec.mx} does not keep the family contract for {spec.name}: missing {missing}, "
            f"RUNNERS {sorted(module.RUNNERS) if hasattr(module, 'RUNNERS') else None}, registered {list(spec.entries)}"
        )
    return Member(spec, module, resolve(spec.judge), resolve(spec.strategy))


#: The registered members, every piece resolved.
MEMBERS: tuple[Member, ...] = tuple(_resolved(spec) for spec in SPECS)


def member_of(entry: str) -> Member:
    """The member a member entry belongs to (a ValueError that lists them otherwise)."""
    name = spec_of(entry).name
    return next(m for m in MEMBERS if m.name == name)

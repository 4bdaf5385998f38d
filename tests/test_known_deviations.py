"""Each known deviation is real, reproduces from its own case, and explains nothing else."""

from __future__ import annotations

import pytest

from bnprops.case import QUANTITIES
from bnprops.checks import check
from bnprops.known_deviations import KNOWN_DEVIATIONS, KnownDeviation
from bnprops.runners import kernel_for, runner_for

IDS = [kd.id for kd in KNOWN_DEVIATIONS]


def entry_of(kd: KnownDeviation) -> str:
    """An entry point the deviation shows on: the symbolic one where it can."""
    return "sym" if kd.entries is None or "sym" in kd.entries else sorted(kd.entries)[0]


def test_known_deviation_ids_are_unique() -> None:
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("kd", KNOWN_DEVIATIONS, ids=IDS)
def test_every_known_deviation_is_documented(kd: KnownDeviation) -> None:
    assert kd.summary and kd.conditions and kd.evidence and kd.upstream
    assert kd.quantities <= set(QUANTITIES)


@pytest.mark.parametrize("kd", KNOWN_DEVIATIONS, ids=IDS)
def test_every_known_deviation_applies_to_its_reproducer(kd: KnownDeviation) -> None:
    case = kd.reproducer()
    expectation = kd.expectation(case, entry=entry_of(kd), kernel=kernel_for(case))
    assert expectation.quantities, f"{kd.id} does not apply to its own reproducer {case.describe()}"


@pytest.mark.parametrize("kd", KNOWN_DEVIATIONS, ids=IDS)
def test_every_reproducer_still_deviates_in_mxnet_exactly_as_recorded(kd: KnownDeviation) -> None:
    case = kd.reproducer()
    entry = entry_of(kd)
    outcome = check(case, runner=runner_for(entry, "onednn"), entry=entry, backend="onednn")
    failed = outcome.verdict.failed_quantities
    assert failed, f"{kd.id}: MXNet now matches the oracle on the reproducer; was it fixed? {case.describe()}"
    assert failed <= kd.quantities, f"{kd.id}: the reproducer also fails in {sorted(failed - kd.quantities)}"
    assert outcome.ok and kd in [explained for explained, _ in outcome.explained]

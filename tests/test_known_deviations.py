"""Each known deviation is real, MXNet matches its model on its reproducer, and a fault inside its region is caught."""

from __future__ import annotations

import numpy as np
import pytest

from bnprops.judging.checks import check
from bnprops.judging.comparator import disagreeing
from bnprops.judging.deviation_models import Prediction
from bnprops.judging.judgement import predictions
from bnprops.judging.known_deviations import KNOWN_DEVIATIONS, SEQUENCE_DEVIATIONS, KnownDeviation, SequenceDeviation
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.evaluation import evaluate
from bnprops.mx import mxversion
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import (
    ENTRY_POINTS,
    IN_PROCESS_BACKEND,
    LEGACY_ENTRY_POINTS,
    entry_unavailable_reason,
    kernel_for,
    unavailable_reason,
)
from bnprops.search.sequences import RULES

IDS = [kd.id for kd in KNOWN_DEVIATIONS]
#: oneDNN where this MXNet has it (the reproducers were recorded there), else the native kernel.
BACKEND = "onednn" if unavailable_reason("onednn") is None else IN_PROCESS_BACKEND


def backend_of(entry: str) -> str:
    """BACKEND, or for a family member's entry the CPU backend its KERNELS allow (BatchNorm_v1: native)."""
    from bnprops.base.family import MEMBER_ENTRIES
    from bnprops.judging.release_probe import member_backend

    return (member_backend(entry) or BACKEND) if entry in MEMBER_ENTRIES else BACKEND


def entry_of(kd: KnownDeviation) -> str:
    """An entry point the deviation shows on: the symbolic one where it can."""
    return "sym" if kd.entries is None or "sym" in kd.entries else sorted(kd.entries)[0]


def backend_for(kd: KnownDeviation) -> str:
    """The backend whose kernel a deviation's model is read on: the one it needs (a GPU deviation's, the native
    kernel's), else oneDNN's."""
    return kd.needs_backend or "onednn"


def predicted(kd: KnownDeviation, case: Case) -> list[Prediction]:
    # Whatever release runs: the model is the same in every release it holds in.
    return [
        p
        for k, p in predictions(case, entry=entry_of(kd), kernel=kernel_for(case, backend_for(kd)), scoped=False)
        if k is kd
    ]


def runnable(kd: KnownDeviation) -> str:
    """The entry point to run the reproducer on, or skip with the reason this release cannot."""
    entry = entry_of(kd)
    if entry not in ENTRY_POINTS + LEGACY_ENTRY_POINTS:
        pytest.skip(f"{kd.id}: a family member's deviation ({entry}); the member's own tests run its reproducer")
    needs = unavailable_reason(kd.needs_backend) if kd.needs_backend else None
    reason = entry_unavailable_reason(entry) or needs
    if reason:
        pytest.skip(f"{kd.id}: {reason}")
    return entry


def test_known_deviation_ids_are_unique() -> None:
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("kd", KNOWN_DEVIATIONS, ids=IDS)
def test_every_known_deviation_is_documented_with_its_model(kd: KnownDeviation) -> None:
    assert kd.summary and kd.conditions and kd.model and kd.evidence and kd.upstream
    assert kd.quantities <= set(QUANTITIES)


@pytest.mark.parametrize("kd", KNOWN_DEVIATIONS, ids=IDS)
def test_every_known_deviation_applies_to_its_reproducer(kd: KnownDeviation) -> None:
    case = kd.reproducer()
    assert predicted(kd, case), f"{kd.id} does not apply to its own reproducer {case.describe()}"


@pytest.mark.parametrize("kd", KNOWN_DEVIATIONS, ids=IDS)
def test_every_reproducer_still_matches_its_model_in_mxnet(kd: KnownDeviation) -> None:
    case = kd.reproducer()
    entry = runnable(kd)
    outcome = check(case, runner=runner_for(entry, backend_of(entry)), entry=entry, backend=backend_of(entry))
    failed = outcome.verdict.failed_quantities
    running = mxversion.running()
    if not kd.holds_in(running):
        # Recorded for other releases (kd.releases): here it must be absent, MXNet matching the oracle or a
        # deviation recorded here (mxnet-mkl 1.5.1 keeps an 'add' prior that 1.6's oneDNN overwrites).
        others = {k.id for k, _ in outcome.explained}
        assert (not failed or others) and outcome.ok, f"{kd.id} ({kd.releases.describe()}) shows in {running}: " + (
            outcome.message() or f"failed in {sorted(failed)}"
        )
        return
    assert failed, f"{kd.id}: MXNet now matches the oracle on the reproducer; was it fixed? {case.describe()}"
    assert failed <= kd.quantities, f"{kd.id}: the reproducer also fails in {sorted(failed - kd.quantities)}"
    assert outcome.ok, outcome.message()
    assert kd in [explained for explained, _ in outcome.explained]


def far_from_both(p: Prediction, index: tuple[int, ...], case: Case, out_dtype: str) -> float:
    """A finite value of the output dtype that matches neither the oracle nor the model at ``index``."""
    apparatus = evaluate(case)
    oracle, bound = apparatus.expected[p.quantity][index], apparatus.bound[p.quantity][index]
    values, tolerances = p.model(apparatus)
    model, tolerance = values[index], tolerances[index]
    largest = float(np.finfo(out_dtype).max)
    for candidate in (0.0, 1.0, -1.0, 3.0, -3.0, 1e3, -1e3, 3e4, -3e4, largest / 3):
        value = float(np.asarray(candidate).astype(out_dtype))
        one = np.array([value])
        if (
            disagreeing(np.array([oracle]), one, np.array([bound]), out_dtype)[0]
            and disagreeing(np.array([model]), one, np.array([tolerance]), out_dtype)[0]
        ):
            return value
    raise AssertionError(f"no value far from both the oracle ({oracle}) and the model ({model})")


@pytest.mark.parametrize("kd", KNOWN_DEVIATIONS, ids=IDS)
def test_a_fault_planted_inside_each_deviations_region_is_caught(kd: KnownDeviation) -> None:
    if not kd.holds_in(mxversion.running()):
        pytest.skip(f"{kd.id} is absent in MXNet {mxversion.running()} ({kd.releases.describe()}): no region here")
    case = kd.reproducer()
    entry = runnable(kd)
    real = runner_for(entry, backend_of(entry))(case)
    # Prefer an element where the model and the oracle differ: the heart of the region.
    chosen = predicted(kd, case)[0]
    index = tuple(int(i) for i in np.argwhere(chosen.where)[0])
    fault = far_from_both(chosen, index, case, evaluate(case).dtypes[chosen.quantity])

    def planted(c: Case) -> Outputs:
        out = {q: np.array(v, copy=True) for q, v in real.items()}
        out[chosen.quantity] = np.asarray(out[chosen.quantity], dtype=np.float64)
        out[chosen.quantity][index] = fault
        return out

    outcome = check(case, runner=planted, entry=entry, backend=backend_of(entry))
    caught = [m for m in outcome.unexpected if m.quantity == chosen.quantity]
    assert caught and caught[0].kind == "unrecorded", outcome.message() or "the planted fault passed"
    assert "not as recorded" in outcome.message()


@pytest.mark.parametrize("kd", SEQUENCE_DEVIATIONS, ids=[kd.id for kd in SEQUENCE_DEVIATIONS])
def test_every_sequence_deviation_is_documented_with_its_model_and_shortest_sequence(kd: SequenceDeviation) -> None:
    # tests/test_training.py's state machines hold MXNet to the model (bnprops/judging/state_model.py).
    # A shortest sequence can be one rule: its configuration (a frozen layer, fix_gamma) sets up the state.
    assert kd.summary and kd.conditions and kd.model and kd.evidence and kd.sequence and set(kd.sequence) <= set(RULES)

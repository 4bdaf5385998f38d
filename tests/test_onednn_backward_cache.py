"""onednn-backward-cache-ignores-mode: where it holds a step shows its model, and nothing else in that step hides.

MXNet 1.9.1 does not show it (fixed in 1.8), so the sequences here play 1.7.0 (mxversion.running) on an
emulation of it (tests.planted_sessions.CachedOtherModeBackward), and plant 0.5% faults on top.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bnprops.judging import release_probe
from bnprops.judging.deviations.onednn_backward_cache_ignores_mode import ONEDNN_BACKWARD_CACHE_IGNORES_MODE as KD
from bnprops.judging.deviations.onednn_backward_cache_ignores_mode import other_mode_dx
from bnprops.judging.deviations.retained_graph_backward_updates_again import RETAINED_GRAPH_UPDATES_AGAIN
from bnprops.model.case import Case
from bnprops.model.evaluation import evaluate
from bnprops.mx import mxversion
from bnprops.search.sequences import SequenceRun, run_sequence
from tests.helpers import one_sequence, skip_unless_available
from tests.planted_sessions import CachedOtherModeBackward, cached_other_mode

ORDERS = [("train_step", "inference_step"), ("inference_step", "train_step")]
#: oneDNN's 4-D path, the one releases before 1.8 take.
FOUR_D = {"x_shape": (3, 2, 1, 1)}


def emulated(rules: tuple[str, ...], *, entry: str = "nd", **faults: float) -> SequenceRun:
    """The rules on an emulation of the deviation (with ``faults``: CachedOtherModeBackward's scales)."""

    def factory(entry: str, **kwargs: Any) -> Any:
        session = cached_other_mode(entry, **kwargs)
        for name, value in faults.items():
            setattr(session, name, value)
        return session

    sequence = one_sequence(*rules, entry=entry, dtype="float32", **FOUR_D)
    return run_sequence(sequence, backend="onednn", session_factory=factory)


def skip_in_its_releases() -> None:
    skip_unless_available("onednn")
    if KD.holds_in(mxversion.running()):
        pytest.skip(f"MXNet {mxversion.running()} is in the deviation's scope: its own shortest sequence shows it")


@pytest.fixture
def release_1_7(monkeypatch: pytest.MonkeyPatch) -> None:
    skip_in_its_releases()  # there MXNet's own cache, per process, would mix with the emulation's
    monkeypatch.setattr(mxversion, "running", lambda: "1.7.0")


@pytest.mark.parametrize("rules", ORDERS, ids=" > ".join)
@pytest.mark.parametrize("entry", ["nd", "npx"])
def test_a_backward_after_one_in_the_other_mode_shows_the_recorded_model_where_it_holds(
    release_1_7: None, rules: tuple[str, ...], entry: str
) -> None:
    run = emulated(rules, entry=entry)
    assert not run.failed, run.message
    assert run.known == ((rules[1], KD.id),)


@pytest.mark.parametrize("rules", ORDERS, ids=" > ".join)
@pytest.mark.parametrize("fault", [{"dx_scale": 1.005}, {"dgamma_scale": 1.005}], ids=["dx", "dgamma"])
def test_a_fault_of_half_a_percent_in_that_step_is_still_caught(
    release_1_7: None, rules: tuple[str, ...], fault: dict[str, float]
) -> None:
    run = emulated(rules, **fault)
    quantity = next(iter(fault)).split("_")[0]
    assert run.failed and run.ran == rules, run.message
    assert f"  {quantity}: " in run.message.split("Replay with", 1)[0], run.message  # named among the step's failures
    assert KD.id not in {ident for _, ident in run.known}


@pytest.mark.parametrize("rules", ORDERS, ids=" > ".join)
def test_where_the_deviation_does_not_hold_its_model_is_a_finding(rules: tuple[str, ...]) -> None:
    skip_in_its_releases()
    run = emulated(rules)
    assert run.failed and run.quantity == "dx", run.message


def test_the_emulation_is_the_one_that_makes_the_difference() -> None:
    """Without the emulation (MXNet 1.9.1 itself) the same sequences follow the contract: the tests above see it."""
    skip_in_its_releases()
    assert CachedOtherModeBackward.dx_scale == 1.0
    for rules in ORDERS:
        run = run_sequence(one_sequence(*rules, entry="nd", dtype="float32", **FOUR_D), backend="onednn")
        assert not run.failed and not run.known, run.message


def test_the_release_probe_runs_each_sequence_deviations_shortest_sequence() -> None:
    """bnprops versions' probe: absent here (1.9.1), present for one that 1.9.1 shows."""
    skip_in_its_releases()
    assert release_probe.probe_sequence(KD)["status"] == release_probe.ABSENT
    assert release_probe.probe_sequence(RETAINED_GRAPH_UPDATES_AGAIN)["status"] == release_probe.PRESENT


#: mxnet-mkl 1.6.0 and 1.7.0, measured: an inference backward with data 'add' (prior 7) after a training one.
MEASURED_WRITTEN = [-0.84832, 0.63924, 0.0, -1.20436, 0.84832, 0.92643]


@pytest.mark.parametrize("version, prior", [("1.6.0", 0.0), ("1.7.0", 7.0)])
def test_its_model_is_what_mxnet_gave_and_adds_the_prior_where_onednn_honours_add(version: str, prior: float) -> None:
    """The evidence's call: before 1.7 oneDNN writes an 'add' (dx alone), from 1.7 it adds to the prior."""
    x = np.array([[1.0, 2.0], [4.0, -3.0], [0.5, 0.25]], np.float32).reshape(3, 2, 1, 1)
    case = Case(
        x=x,
        dy=(np.linspace(-1, 1, 6) + 0.3).astype(np.float32).reshape(x.shape),
        gamma=np.array([1.5, 0.5], np.float32),
        beta=np.array([0.25, -0.5], np.float32),
        moving_mean=np.array([0.5, -0.5], np.float32),
        moving_var=np.array([2.0, 0.5], np.float32),
        fix_gamma=False,
        is_train=False,
        grad_req=("add", "write", "write"),
        prior_dx=np.full(x.shape, 7.0, np.float32),
    )
    dx, bound = other_mode_dx(case, evaluate(case), entry="nd", version=version)
    assert np.abs(dx.ravel() - (prior + np.array(MEASURED_WRITTEN))).max() <= 1e-5 + bound.max()
    assert bound.max() < 1e-5, "a bound this wide could hide a 0.5% fault"

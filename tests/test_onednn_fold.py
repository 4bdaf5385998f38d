"""oneDNN's fold of BatchNorm into the Convolution before it matches the BatchNorm oracle within the fold's bound.

The cases run as a 1x1 identity convolution then BatchNorm (bnprops.mx.folding). Inference y is judged under
the fold's bound; gradients and training under the fold's known deviations. The bound is shown sound by a
search over correct float32 emulations of the fold, and a planted 0.5% error in y is caught.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from bnprops.judging.declarations import KnownDeviation
from bnprops.judging.deviations.onednn_fold_gradients_zero import ONEDNN_FOLD_GRADIENTS_ZERO, fold_reproducer
from bnprops.judging.deviations.onednn_fold_ignores_axis import ONEDNN_FOLD_IGNORES_AXIS
from bnprops.judging.deviations.onednn_fold_keeps_gamma import ONEDNN_FOLD_KEEPS_GAMMA
from bnprops.judging.deviations.onednn_fold_trains_on_moving_statistics import (
    ONEDNN_FOLD_TRAINS_ON_MOVING_STATISTICS,
)
from bnprops.judging.folding import ConvFoldEvaluation, FoldEvaluation, check_fold, judge_fold_conv
from bnprops.model.case import Case
from bnprops.mx import family, folding
from bnprops.search.rewrites import cases_for_folding, cases_with_convolution
from tests.emulated_conv_fold import VARIANTS as CONV_VARIANTS
from tests.emulated_conv_fold import emulated_conv_fold
from tests.emulated_fold import VARIANTS, emulated_fold
from tests.helpers import budget

QUICK = settings(max_examples=budget(0.05), deadline=None, suppress_health_check=list(HealthCheck), database=None)
SEARCH = settings(
    max_examples=budget(0.5), deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
DEVIATIONS = (
    ONEDNN_FOLD_GRADIENTS_ZERO,
    ONEDNN_FOLD_TRAINS_ON_MOVING_STATISTICS,
    ONEDNN_FOLD_IGNORES_AXIS,
    ONEDNN_FOLD_KEEPS_GAMMA,
)


def _available(entry: str = "fold-sym") -> None:
    reason = folding.unavailable_reason() or folding.entry_unavailable_reason(entry)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.property
@pytest.mark.parametrize("entry", sorted(folding.RUNNERS))
@QUICK
@given(case=cases_for_folding())
def test_the_folded_graph_matches_the_oracle_or_its_recorded_deviations(entry: str, case: Case) -> None:
    _available(entry)
    judged = check_fold(case, runner=folding.RUNNERS[entry], entry=entry)
    assert judged.ok, judged.message()


@pytest.mark.parametrize("entry", sorted(folding.RUNNERS))
@pytest.mark.parametrize("kd", DEVIATIONS, ids=[kd.id for kd in DEVIATIONS])
def test_each_fold_deviation_shows_on_its_reproducer_and_is_explained(entry: str, kd: KnownDeviation) -> None:
    _available(entry)
    if kd.entries is not None and entry not in kd.entries:
        pytest.skip(f"{kd.id} is not scoped to {entry}")
    case = kd.reproducer()
    judged = check_fold(case, runner=folding.RUNNERS[entry], entry=entry)
    assert judged.ok, judged.message()
    explained = {d.id for d, _ in judged.outcome.explained}
    assert kd.id in explained, f"{kd.id} did not show on {entry} for {case.describe()}: explained {explained}"


def test_a_fault_planted_inside_a_fold_deviation_is_caught() -> None:
    _available()
    case = fold_reproducer(is_train=True)
    real = folding.RUNNERS["fold-sym"](case)

    def planted(c: Case) -> dict[str, np.ndarray]:
        out = {q: np.array(v, copy=True) for q, v in real.items()}
        out["dx"] = out["dx"].astype(np.float64)
        out["dx"][0, 0, 0, 0] = 3.0  # neither 0 (the model) nor the oracle's value
        return out

    judged = check_fold(case, runner=planted, entry="fold-sym")
    assert not judged.ok and any(m.kind == "unrecorded" for m in judged.outcome.unexpected), judged.message()


def test_a_half_percent_error_in_the_folded_output_is_caught() -> None:
    runner = functools.partial(emulated_fold, fault="y_off_by_half_percent")

    def caught(case: Case) -> bool:
        return not check_fold(case, runner=runner, entry="subject", checked=["y"], kernel="subject").ok

    found = hypothesis_find(cases_for_folding(is_train=False), caught, settings=SEARCH)
    assert not check_fold(found, runner=runner, entry="subject", checked=["y"], kernel="subject").ok


@settings(max_examples=budget(0.1), deadline=None, derandomize=True, database=None)
@given(case=cases_for_folding(is_train=False))
def test_a_correct_fold_subject_passes(case: Case) -> None:
    _available()  # the subject is judged with the running release's deviations, as the fold would be
    judged = check_fold(case, runner=emulated_fold, entry="subject", checked=["y"], kernel="subject")
    assert judged.ok, judged.message()


@settings(max_examples=budget(1.0), deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=cases_for_folding(is_train=False, sizes="all"), variant=st.sampled_from(VARIANTS))
def test_no_correct_float32_fold_crosses_the_folds_bound(case: Case, variant: str) -> None:
    y = emulated_fold(case, variant=variant)["y"].astype(np.float64)
    ev = FoldEvaluation(case)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.abs(y - ev.expected["y"]) / ev.bound["y"]
    worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    target(worst)
    assert worst <= 1, f"{variant}: error/bound {worst:.3g} for {case.describe()}"


@pytest.mark.parametrize("entry", sorted(folding.RUNNERS))
def test_the_fold_reproducer_makes_the_runners_call(entry: str) -> None:
    _available(entry)
    case = fold_reproducer(is_train=True).with_(fix_gamma=True)
    scope: dict[str, object] = {}
    exec(folding.snippet(case, entry), scope)
    actual = scope["actual"]
    assert isinstance(actual, dict)
    ran = folding.RUNNERS[entry](case)
    for q, value in actual.items():
        np.testing.assert_array_equal(value, ran[q], err_msg=f"{entry}: {q}")


@pytest.mark.property
@QUICK
@given(drawn=cases_with_convolution())
def test_a_folded_drawn_convolution_matches_the_float64_conv_and_batchnorm(drawn: tuple[Case, np.ndarray]) -> None:
    _available()
    case, weight = drawn
    judged = judge_fold_conv(case, weight, folding.run_fold_conv(case, weight))
    assert judged.ok, judged.message()


def test_a_half_percent_error_after_a_drawn_convolution_is_caught() -> None:
    def caught(drawn: tuple[Case, np.ndarray]) -> bool:
        case, weight = drawn
        outputs = emulated_conv_fold(case, weight, fault="y_off_by_half_percent")
        return not judge_fold_conv(case, weight, outputs, kernel="subject").ok

    assert caught(hypothesis_find(cases_with_convolution(), caught, settings=SEARCH))


@settings(max_examples=budget(0.5), deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(drawn=cases_with_convolution(), variant=st.sampled_from(CONV_VARIANTS))
def test_no_correct_float32_convolution_fold_crosses_the_folds_bound(
    drawn: tuple[Case, np.ndarray], variant: str
) -> None:
    case, weight = drawn
    y = emulated_conv_fold(case, weight, variant=variant)["y"].astype(np.float64)
    ev = ConvFoldEvaluation(case, weight)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.abs(y - ev.expected["y"]) / ev.bound["y"]
    worst = float(np.nanmax(ratio)) if ratio.size else 0.0
    target(worst)
    assert worst <= 1, f"{variant}: error/bound {worst:.3g} for {case.describe()}, weights {weight.shape}"


@pytest.mark.parametrize("fault", ["largest_y_off_by_half_percent", "a_zero_made_negative"])
def test_a_fault_after_the_folded_relu_is_caught(fault: str) -> None:
    _available("fold-relu-sym")
    case = fold_reproducer()
    real = folding.RUNNERS["fold-relu-sym"](case)
    assert check_fold(case, runner=lambda c: real, entry="fold-relu-sym").ok

    def planted(c: Case) -> dict[str, np.ndarray]:
        y = np.array(real["y"], copy=True)
        flat = y.reshape(-1)
        if fault == "a_zero_made_negative":
            flat[int(np.argmin(np.abs(flat)))] = -1e-3
        else:
            flat[int(np.argmax(flat))] *= np.float32(1.005)
        return real | {"y": y}

    assert not check_fold(case, runner=planted, entry="fold-relu-sym").ok


def test_before_1_9_only_the_plain_bind_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folding.mxversion, "running", lambda: "1.8.0")
    assert "#19263" in (family.unavailable_reason("fold-sym") or "")
    assert family.unavailable_reason("fold-bind") == folding.unavailable_reason()
    monkeypatch.setattr(folding.mxversion, "running", lambda: "1.9.1")
    assert all(folding.entry_unavailable_reason(e) is None for e in folding.RUNNERS)

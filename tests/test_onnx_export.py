"""BatchNorm exported by mx.onnx.export_model and run by onnxruntime computes MXNet's inference BatchNorm.

The entry ``onnx`` needs the optional extra ``onnx`` (onnx < 1.19 and onnxruntime): without it the properties
skip with the reason. The folded form's bound is shown sound by a search over correct float32 emulations, and
sharp enough that a 0.5% error in y is caught; the exporter's dropped fix_gamma is a recorded deviation.
"""

from __future__ import annotations

import functools
import math

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from bnprops.judging.deviation_models import Context
from bnprops.judging.deviations import KNOWN_DEVIATIONS, by_id
from bnprops.judging.onnx_export import check_onnx, judge_onnx
from bnprops.model.case import Case
from bnprops.model.folded_inference import FoldedEvaluation
from bnprops.mx import onnx_export
from bnprops.search.deployment import cases_for_onnx
from tests.helpers import budget, planted_search
from tests.planted_folded import KERNELS, folded_subject


def _skip_without_onnx() -> None:
    reason = onnx_export.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.property
@settings(max_examples=budget(0.25), deadline=None, suppress_health_check=list(HealthCheck))
@given(case=cases_for_onnx())
def test_the_exported_batchnorm_computes_mxnets_inference(case: Case) -> None:
    _skip_without_onnx()
    judged = check_onnx(case, runner=onnx_export.run_onnx)
    assert judged.ok, judged.message()


def test_the_exporter_dropping_fix_gamma_is_the_recorded_deviation() -> None:
    _skip_without_onnx()
    deviation = by_id("onnx-fix-gamma-dropped")
    case = deviation.reproducer()  # type: ignore[operator, union-attr]
    judged = check_onnx(case, runner=onnx_export.run_onnx)
    assert judged.ok, judged.message()
    assert [kd.id for kd, _ in judged.outcome.explained] == [deviation.id], "the deviation did not show"
    unity = check_onnx(case.with_(gamma=np.ones(2, np.float32)), runner=onnx_export.run_onnx)
    assert unity.ok and not unity.outcome.explained, unity.message() or "a gamma of 1 needs no deviation"


def test_a_fault_inside_the_deviation_is_caught_as_unrecorded() -> None:
    case = by_id("onnx-fix-gamma-dropped").reproducer()  # type: ignore[operator, union-attr]
    stored = case.with_(fix_gamma=False)
    planted = {"y": folded_subject(stored)["y"] * np.float32(1.005)}
    judged = judge_onnx(case, planted)
    kinds = {m.kind for m in judged.outcome.unexpected}
    assert kinds == {"unrecorded"}, judged.message()


def test_plain_batchnorms_deviations_say_nothing_of_the_onnx_entry() -> None:
    """Only deviations scoped to ``onnx`` may explain its results (none of the plain operator's hides one)."""
    found: set[str] = set()

    @settings(max_examples=60, database=None, derandomize=True, deadline=None)
    @given(case=cases_for_onnx())
    def collect(case: Case) -> None:
        ctx = Context(case, "onnxruntime", FoldedEvaluation(case))
        found.update(kd.id for kd in KNOWN_DEVIATIONS if kd.predictions(ctx, entry="onnx"))

    collect()
    assert found <= {"onnx-fix-gamma-dropped"}, found


def test_the_onnx_entry_runs_only_what_it_can_express() -> None:
    case = by_id("onnx-fix-gamma-dropped").reproducer()  # type: ignore[operator, union-attr]
    assert onnx_export.unexpressible_reason(case) is None
    assert "axis" in str(onnx_export.unexpressible_reason(case.with_(axis=2)))
    wide = {f: getattr(case, f).astype(np.float64) for f in ("x", "dy", "gamma", "beta", "moving_mean", "moving_var")}
    assert "float32" in str(onnx_export.unexpressible_reason(case.with_(**wide)))
    assert "inference" in str(onnx_export.unexpressible_reason(case.with_(is_train=True)))
    assert onnx_export.KERNELS["onednn"] is None and onnx_export.KERNELS["native"]


@settings(max_examples=budget(0.5), deadline=None, derandomize=True, database=None)
@given(case=cases_for_onnx(), kernel=st.sampled_from(KERNELS))
def test_correct_float32_folded_kernels_stay_within_the_bound(case: Case, kernel: str) -> None:
    """The soundness search: the error/bound ratio of correct emulations, steered up, stays below 1."""
    judged = judge_onnx(case, folded_subject(case, kernel=kernel), entry="subject", kernel="subject")
    ratio = judged.outcome.verdict.ratios.get("y", 0.0)
    hypothesis.target(math.log10(ratio) if ratio > 0 else -20.0, label="y error/bound")
    assert judged.ok, judged.message()


@pytest.mark.parametrize("sizes", ["small", "large"])
def test_a_half_percent_error_in_y_is_caught(sizes: str) -> None:
    runner = functools.partial(folded_subject, fault="y_off_by_half_percent")

    def caught(case: Case) -> bool:
        return not check_onnx(case, runner=runner, entry="subject", kernel="subject").ok

    found = hypothesis_find(cases_for_onnx(sizes=sizes), caught, settings=planted_search(200))
    assert not check_onnx(found, runner=runner, entry="subject", kernel="subject").ok


@settings(max_examples=budget(0.03), deadline=None, derandomize=True, database=None)
@given(case=cases_for_onnx(sizes="large"))
def test_a_correct_folded_subject_passes_at_real_sizes(case: Case) -> None:
    judged = check_onnx(case, runner=folded_subject, entry="subject", kernel="subject")
    assert judged.ok, judged.message()

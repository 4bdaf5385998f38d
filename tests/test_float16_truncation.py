"""float16-truncating-normaliser: the conversion it models, its build scope, and a fault inside it caught.

This MXNet rounds to nearest, so a truncating build (mxnet-mkl 1.3.1) is played: its release and trait are
monkeypatched, and its outputs are this MXNet's with the model's values where the deviation covers them.
float16's own bounds are about 1% of y at these sizes (no check catches 0.5% there), so the planted fault is
four times the oracle's bound: caught outside any region, and it must be caught inside this one too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bnprops.judging.declarations import minimal
from bnprops.judging.deviation_models import float16_toward_zero
from bnprops.judging.deviations.float16_truncating_normaliser import FLOAT16_TRUNCATING_NORMALISER as TRUNCATING
from bnprops.judging.judgement import judge, predictions
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.evaluation import evaluate
from bnprops.mx import mxversion
from bnprops.mx.runners import kernel_for, run_symbolic


@pytest.fixture
def truncating_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mxversion, "running", lambda: "1.3.1")
    monkeypatch.setattr(mxversion, "build_traits", lambda: frozenset({mxversion.FLOAT16_TRUNCATES}))
    monkeypatch.setattr(mxversion, "float16_conversion", lambda: "toward zero")


def test_the_emulated_conversion_truncates_as_mshadows_software_half_does() -> None:
    # As mxnet-mkl 1.3.1 returned them (numpy rounds the first four to 1.0133e-06, 1.0002e-04, 5.96e-08, 65504).
    values = np.array([1e-6, -1e-4, 4.6e-8, 65519.0, 65504.0, 6e-8, np.nan, np.inf, 0.0], dtype=np.float32)
    got = float16_toward_zero(values).astype(np.float64)
    want = [9.5367431640625e-07, -9.995698928833008e-05, 0.0, np.inf, 65504.0, 5.960464477539063e-08, np.nan, np.inf, 0]
    np.testing.assert_array_equal(got, want)


def test_this_build_rounds_to_nearest_so_the_deviation_is_absent_here_and_its_reproducer_passes() -> None:
    assert mxversion.float16_conversion() == "to nearest"
    assert not TRUNCATING.releases.holds_here() and not TRUNCATING.holds_in("1.4.1")
    case = TRUNCATING.reproducer()
    outcome = judge(case, run_symbolic(case), entry="sym", kernel=kernel_for(case), checked=QUANTITIES)
    assert outcome.ok and TRUNCATING not in [kd for kd, _ in outcome.explained], outcome.message()


def _as_truncating_build(case: Case) -> Outputs:
    """This MXNet's outputs, with the model's values wherever the deviation covers an element."""
    out = {q: np.array(v, dtype=np.float64, copy=True) for q, v in run_symbolic(case).items()}
    ev = evaluate(case)
    for kd, p in predictions(case, entry="sym", kernel=kernel_for(case), evaluation=ev):
        if kd is TRUNCATING:
            out[p.quantity] = np.where(p.where, p.model(ev)[0], out[p.quantity])
    return out


LARGE = minimal([-255.875, 255.875, -256.0, 256.0], "float16")  # var + eps = 65504.009: truncated to inf
SUBNORMAL = minimal([0.0, 0.01, 0.0, 0.01], "float16", eps=0.0)  # var 2.5e-5: a float16 subnormal


@pytest.mark.parametrize(
    ("case", "quantity"), [(LARGE, "y"), (LARGE, "dgamma"), (SUBNORMAL, "y"), (SUBNORMAL, "dgamma"), (SUBNORMAL, "dx")]
)
def test_on_a_truncating_build_the_model_explains_it_and_a_fault_inside_is_caught(
    truncating_build: Any, case: Case, quantity: str
) -> None:
    kernel = kernel_for(case)
    assert any(kd is TRUNCATING for kd, _ in predictions(case, entry="sym", kernel=kernel)), case.describe()
    outputs = _as_truncating_build(case)
    outcome = judge(case, outputs, entry="sym", kernel=kernel, checked=QUANTITIES)
    assert outcome.ok and not outcome.stale, outcome.message()
    planted = {q: np.array(v, copy=True) for q, v in outputs.items()}
    planted[quantity].flat[0] += 4 * float(evaluate(case).bound[quantity].flat[0])
    caught = judge(case, planted, entry="sym", kernel=kernel, checked=QUANTITIES)
    kinds = [m.kind for m in caught.unexpected if m.quantity == quantity]
    assert kinds == ["unrecorded"], caught.message() or f"a fault of 4 bounds in {quantity} passed"


def test_the_reproducer_is_out_of_range_only_when_truncated(truncating_build: Any) -> None:
    case = TRUNCATING.reproducer()  # var + eps = 65504.009: rounds to 65504, truncates to inf
    assert case.x.tolist() == LARGE.x.tolist()
    found = {p.quantity: p for kd, p in predictions(case, entry="sym", kernel=kernel_for(case)) if kd is TRUNCATING}
    assert found and all(p.certain for p in found.values())
    np.testing.assert_array_equal(found["y"].model(evaluate(case))[0], np.full(case.shape, float(case.beta[0])))


def test_in_a_rounding_build_of_its_release_the_doctor_says_it_needs_a_truncating_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bnprops.commands import doctor

    monkeypatch.setattr(mxversion, "running", lambda: "1.3.1")  # the plain 1.3.1 wheel: F16C, rounds to nearest
    assert TRUNCATING.holds_in("1.3.1") and not TRUNCATING.releases.holds_here()
    [line] = [row for row in doctor.report() if row.strip().startswith(TRUNCATING.id + " ")]
    assert "needs a build whose float16 conversion truncates" in line, line


@pytest.mark.parametrize(
    "case",
    [
        minimal([-256.0, 256.0, -256.0, 256.0], "float16"),  # var + eps >= 65520: inf either way
        minimal([1.0, 2.0, 3.0, 4.0], "float16", eps=0.0, use_global_stats=True).with_(
            moving_var=np.array([1e-7], dtype=np.float32)  # float16-normaliser-subnormal's reproducer
        ),
    ],
)
def test_on_a_truncating_build_the_truncating_model_alone_covers_the_rounding_models_regions(
    truncating_build: Any, monkeypatch: pytest.MonkeyPatch, case: Case
) -> None:
    kernel = kernel_for(case)
    ids = {kd.id for kd, _ in predictions(case, entry="sym", kernel=kernel)}
    assert ids == {TRUNCATING.id}, ids
    monkeypatch.setattr(mxversion, "float16_conversion", lambda: "to nearest")  # a rounding build, unscoped
    rounding = {kd.id for kd, _ in predictions(case, entry="sym", kernel=kernel, scoped=False)}
    assert rounding & {"float16-normaliser-out-of-range", "float16-normaliser-subnormal"}, rounding

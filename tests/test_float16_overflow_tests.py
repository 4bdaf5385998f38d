"""The float16 deviations' quick tests (deviation_models.float16_products_fit, float16_normalised_fits,
float16_projection_fits): where one says no float16 term can overflow, the model's own element-by-element
emulation finds none, so the model may skip it; on each deviation's reproducer the quick test lets it run."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from bnprops.judging.deviation_models import (
    Context,
    float16_normalised_fits,
    float16_normaliser,
    float16_products_fit,
    float16_projection,
    float16_projection_fits,
    invstd_of,
)
from bnprops.judging.deviations import (
    float16_dx_projection_overflow,
    float16_gradient_product_overflow,
    float16_normalised_value_overflow,
)
from bnprops.judging.known_deviations import KnownDeviation
from bnprops.model.case import Case
from bnprops.model.evaluation import evaluate
from bnprops.search.strategies import cases
from tests.helpers import budget

#: Powers of two that carry the strategies' data toward float16's largest numbers (exact, or inf past them).
SCALES = [2.0**k for k in (0, 4, 8, 10, 12, 14)]


def _scaled(case: Case, kx: float, kdy: float) -> Case:
    with np.errstate(over="ignore"):
        return case.with_(
            x=(case.x * np.float16(kx)).astype(np.float16), dy=(case.dy * np.float16(kdy)).astype(np.float16)
        )


def _context(case: Case) -> Context:
    return Context(case, "native", evaluate(case, "reference"))


def _unshortened(monkeypatch: pytest.MonkeyPatch, module: object, name: str, ctx: Context) -> list[object]:
    """The deviation's predictions with its quick test made to say "may overflow": the full emulation."""
    monkeypatch.setattr(module, name, lambda *args: False)
    predict: Callable[[Context], list[object]] = getattr(module, module.__name__.rsplit(".", 1)[1])  # type: ignore[attr-defined]
    return predict(ctx)


@settings(max_examples=budget(0.5), deadline=None)
@given(case=cases(dtypes=["float16"], sizes="small"), kx=st.sampled_from(SCALES), kdy=st.sampled_from(SCALES))
def test_where_a_quick_test_says_nothing_overflows_the_full_emulation_finds_no_overflow(
    case: Case, kx: float, kdy: float
) -> None:
    case = _scaled(case, kx, kdy)
    ctx = _context(case)
    event(f"products fit: {float16_products_fit(ctx)}; projection fits: {float16_projection_fits(ctx)}")
    with pytest.MonkeyPatch.context() as mp:
        if float16_products_fit(ctx):
            found = _unshortened(mp, float16_gradient_product_overflow, "float16_products_fit", _context(case))
            assert found == [], f"float16_products_fit said no product overflows for {case.describe()}, got {found}"
        invstd = invstd_of(float16_normaliser(ctx)[1]).astype(np.float32)
        g = np.ones(case.channels, np.float32) if case.fix_gamma else case.gamma.astype(np.float32)
        if float16_normalised_fits(ctx, invstd, g):
            found = _unshortened(mp, float16_normalised_value_overflow, "float16_normalised_fits", _context(case))
            assert found == [], f"float16_normalised_fits said nothing overflows for {case.describe()}, got {found}"
    if float16_projection_fits(ctx) and case.x.size:
        overflow, _ = float16_projection(ctx)
        assert not overflow.any(), f"float16_projection_fits said nothing overflows for {case.describe()}"


@pytest.mark.parametrize(
    ("deviation", "module", "quick"),
    [
        (
            float16_gradient_product_overflow.FLOAT16_GRADIENT_PRODUCT_OVERFLOW,
            float16_gradient_product_overflow,
            "products",
        ),
        (
            float16_normalised_value_overflow.FLOAT16_NORMALISED_VALUE_OVERFLOW,
            float16_normalised_value_overflow,
            "normalised",
        ),
        (float16_dx_projection_overflow.FLOAT16_DX_PROJECTION_OVERFLOW, float16_dx_projection_overflow, "projection"),
    ],
)
def test_on_each_float16_overflow_reproducer_the_quick_test_lets_the_model_run(
    deviation: KnownDeviation, module: object, quick: str
) -> None:
    case = deviation.reproducer()
    ctx = _context(case)
    invstd = invstd_of(float16_normaliser(ctx)[1]).astype(np.float32)
    g = np.ones(case.channels, np.float32) if case.fix_gamma else case.gamma.astype(np.float32)
    fits = {
        "products": float16_products_fit(ctx),
        "normalised": float16_normalised_fits(ctx, invstd, g),
        "projection": float16_projection_fits(ctx),
    }[quick]
    assert not fits, f"the {quick} quick test says nothing overflows on {deviation.id}'s reproducer {case.describe()}"
    assert deviation.predict(ctx), f"{deviation.id} predicts nothing on its own reproducer {case.describe()}"

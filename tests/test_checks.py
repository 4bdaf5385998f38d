"""Judging: findings fail, known deviations are expected where they apply, and stale ones are reported."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnprops.fuzzing.catalogue import ACCURACY, UNRECORDED, classify
from bnprops.judging import comparator, judgement
from bnprops.judging.checks import assert_matches_oracle, check
from bnprops.judging.deviation_models import Context, Prediction
from bnprops.judging.deviations.native_zero_variance_eps0 import NATIVE_ZERO_VARIANCE_EPS0
from bnprops.model.case import QUANTITIES
from bnprops.model.evaluation import evaluate
from bnprops.model.oracle import reference
from bnprops.search.strategies import cases
from tests.helpers import budget, one_channel_case

ZERO_VARIANCE_EPS0 = NATIVE_ZERO_VARIANCE_EPS0


def oracle_runner(case):  # type: ignore[no-untyped-def]
    return reference(case)


def test_a_matching_runner_passes() -> None:
    outcome = check(one_channel_case([1.0, 2.0, 4.0]), runner=oracle_runner, entry="sym")
    assert outcome.ok and not outcome.explained


def test_a_wrong_quantity_is_a_finding_with_a_reproducer() -> None:
    def wrong_dbeta(case):  # type: ignore[no-untyped-def]
        out = reference(case)
        out["dbeta"] = out["dbeta"] + 1
        return out

    case = one_channel_case([1.0, 2.0, 4.0])
    with pytest.raises(AssertionError) as info:
        assert_matches_oracle(case, runner=wrong_dbeta, entry="test-double", quantities=("dbeta",))
    message = str(info.value)
    assert "dbeta" in message and "expected (oracle)" in message and "mx.sym.BatchNorm" in message


def test_a_quantity_outside_the_property_is_not_its_finding() -> None:
    def wrong_y(case):  # type: ignore[no-untyped-def]
        out = reference(case)
        out["y"] = out["y"] + 1
        return out

    outcome = check(one_channel_case([1.0, 2.0, 4.0]), runner=wrong_y, entry="sym", quantities=("dbeta",))
    assert outcome.ok


def test_a_known_deviation_is_expected_where_it_applies() -> None:
    case = ZERO_VARIANCE_EPS0.reproducer()

    def deviating(c):  # type: ignore[no-untyped-def]
        out = reference(c)
        out["moving_var"] = np.full_like(out["moving_var"], np.inf)
        return out

    outcome = check(case, runner=deviating, entry="sym", kernel="native", quantities=("moving_var",))
    assert outcome.ok and [kd.id for kd, _ in outcome.explained] == [ZERO_VARIANCE_EPS0.id]


def test_a_known_deviation_does_not_excuse_other_quantities() -> None:
    case = ZERO_VARIANCE_EPS0.reproducer()

    def deviating_everywhere(c):  # type: ignore[no-untyped-def]
        out = reference(c)
        out["moving_var"] = np.full_like(out["moving_var"], np.inf)
        out["moving_mean"] = out["moving_mean"] + 1
        return out

    outcome = check(case, runner=deviating_everywhere, entry="sym", kernel="native")
    assert [m.quantity for m in outcome.unexpected] == ["moving_mean"]


def test_a_value_inside_a_deviations_region_that_is_not_its_model_deviates_but_not_as_recorded() -> None:
    case = ZERO_VARIANCE_EPS0.reproducer()

    def deviating_otherwise(c):  # type: ignore[no-untyped-def]
        out = reference(c)
        out["moving_var"] = out["moving_var"] + 1  # neither the oracle's value nor the model's inf
        return out

    outcome = check(case, runner=deviating_otherwise, entry="sym", kernel="native")
    [mismatch] = outcome.unexpected
    assert mismatch.kind == "unrecorded" and mismatch.deviation == ZERO_VARIANCE_EPS0.id and mismatch.model == np.inf
    assert "not as recorded" in outcome.message()
    assert [(s.kind, s.deviation) for s in classify(outcome, backend="native")] == [(UNRECORDED, ZERO_VARIANCE_EPS0.id)]


def test_a_certain_known_deviation_that_no_longer_reproduces_is_stale() -> None:
    outcome = check(ZERO_VARIANCE_EPS0.reproducer(), runner=oracle_runner, entry="sym", kernel="native")
    assert not outcome.ok and outcome.stale == (ZERO_VARIANCE_EPS0,)
    assert "did not reproduce" in outcome.message()


def test_known_deviations_are_bound_to_their_kernel() -> None:
    outcome = check(ZERO_VARIANCE_EPS0.reproducer(), runner=oracle_runner, entry="sym", kernel="onednn")
    assert outcome.ok and not outcome.stale


def nudged_dbeta(factor: float):  # type: ignore[no-untyped-def]
    """The oracle's outputs with dbeta moved by ``factor`` times its probabilistic bound."""

    def run(case):  # type: ignore[no-untyped-def]
        out = reference(case)
        sharp = evaluate(case).bounds_of(out, model="probabilistic")["dbeta"]
        out["dbeta"] = out["dbeta"] + factor * sharp
        return out

    return run


def test_an_error_between_the_two_bounds_is_an_accuracy_finding_of_its_own_kind() -> None:
    case = one_channel_case([0.1 * i for i in range(1, 4001)], dy=[1.0 + 1e-3 * i for i in range(4000)])
    deterministic = evaluate(case).bound["dbeta"]
    sharp = evaluate(case).bounds_of(reference(case), model="probabilistic")["dbeta"]
    assert np.all(3 * sharp < deterministic)  # room between the two at M = 4000
    outcome = check(case, runner=nudged_dbeta(2.0), entry="test-double", quantities=("dbeta",))
    [mismatch] = outcome.unexpected
    assert mismatch.kind == "accuracy" and "loses" in outcome.message()
    assert [s.kind for s in classify(outcome, backend="onednn")] == [ACCURACY]
    assert check(case, runner=nudged_dbeta(0.5), entry="test-double", quantities=("dbeta",)).ok


def test_a_deviation_modelled_as_the_deterministic_bound_does_not_excuse_a_mismatch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    case = one_channel_case([0.1 * i for i in range(1, 4001)], dy=[1.0 + 1e-3 * i for i in range(4000)])

    def within_the_deterministic_bound(ctx: Context) -> list[Prediction]:
        where = np.ones(1, dtype=bool)
        return [Prediction("dbeta", where, ctx.expected["dbeta"], ctx.bound["dbeta"])]

    drift = dataclasses.replace(
        ZERO_VARIANCE_EPS0,
        id="test-drift",
        quantities=frozenset({"dbeta"}),
        predict=within_the_deterministic_bound,
        entries=None,
    )
    monkeypatch.setattr(judgement, "KNOWN_DEVIATIONS", (drift,))
    explained = check(case, runner=nudged_dbeta(2.0), entry="test-double", quantities=("dbeta",))
    assert explained.ok and explained.explained
    deterministic = evaluate(case).bound["dbeta"]
    far = nudged_dbeta(
        float(np.max(3 * deterministic / evaluate(case).bounds_of(reference(case), model="probabilistic")["dbeta"]))
    )
    outcome = check(case, runner=far, entry="test-double", quantities=("dbeta",))
    assert [m.kind for m in outcome.unexpected] == ["unrecorded"]


def _outputs_off_by(case, data) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """The oracle's outputs in each quantity's dtype, some elements moved: by a few bounds, to NaN or inf."""
    ev = evaluate(case, "reference")
    outputs = {}
    for q, expected in ev.expected.items():
        values = np.array(expected, dtype=np.float64)
        if values.size and data.draw(st.booleans(), label=f"touch {q}"):
            i = data.draw(st.integers(0, values.size - 1), label=f"element of {q}")
            bound = float(np.broadcast_to(ev.bound[q], values.shape).flat[i])
            how = data.draw(st.sampled_from(["bounds", "nan", "inf", "-inf"]), label=f"how {q}")
            change = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}
            moved = (
                values.flat[i] + data.draw(st.floats(-4, 4), label="bounds") * bound if how == "bounds" else change[how]
            )
            values.flat[i] = moved
        outputs[q] = values.astype(ev.dtypes[q])
    return outputs


def _assert_one_pass_judges_as_each_alone(case, outputs) -> None:  # type: ignore[no-untyped-def]
    ev = evaluate(case, "reference")
    verdict = comparator._verdict(ev, outputs, ev.expected, ev.bound, ev.sharp, QUANTITIES, {})
    alone, ratios, sharp = [], {}, {}
    for q in QUANTITIES:
        if q not in ev.expected:
            continue
        judged = comparator.judged_elements(case, q, ev.expected[q].shape, ev.undetermined)
        found = comparator._compare_one(
            q, ev.expected[q], np.asarray(outputs[q]), ev.bound[q], ev.dtypes[q], judged, ev.sharp[q]
        )
        alone += [] if found[0] is None else [found[0]]
        ratios[q], sharp[q] = found[1], found[2]
    assert [(m.quantity, m.kind, m.count, m.index) for m in verdict.mismatches] == [
        (m.quantity, m.kind, m.count, m.index) for m in alone
    ]
    assert verdict.ratios == ratios
    assert verdict.sharp_ratios == sharp


@settings(max_examples=budget(0.5), deadline=None)
@given(case=cases(max_elements=600), data=st.data())
def test_a_cases_quantities_judged_in_one_pass_are_judged_as_each_alone(case, data) -> None:  # type: ignore[no-untyped-def]
    _assert_one_pass_judges_as_each_alone(case, _outputs_off_by(case, data))


def test_one_pass_maps_an_inf_past_each_quantitys_own_overflow_threshold() -> None:
    # float16 y beyond 65520 (its overflow threshold) rounds to inf: MXNet's right answer, in one pass as alone.
    case = one_channel_case(
        [1.0, 2.0, 3.0, 4.0],
        dtype="float16",
        beta=np.full(1, 65000.0, np.float32),
        gamma=np.full(1, 1000.0, np.float32),
    )
    ev = evaluate(case, "reference")
    outputs = {q: np.asarray(v).astype(ev.dtypes[q]) for q, v in ev.expected.items()}
    assert np.isinf(outputs["y"]).any()
    assert comparator._verdict(ev, outputs, ev.expected, ev.bound, ev.sharp, QUANTITIES, {}).ok
    _assert_one_pass_judges_as_each_alone(case, outputs)


def test_one_pass_keeps_an_inf_below_a_quantitys_own_overflow_threshold_a_finding() -> None:
    # dgamma (float32 for float16 data) near 9e4: inf is wrong there, though it would be right for float16 y.
    case = one_channel_case([1.0, 2.0, 3.0, 4.0], dtype="float16", dy=[-30000.0, -10000.0, 10000.0, 30000.0])
    ev = evaluate(case, "reference")
    outputs = {q: np.asarray(v).astype(ev.dtypes[q]) for q, v in ev.expected.items()}
    assert 65520 < abs(float(ev.expected["dgamma"][0])) < 1e6
    outputs["dgamma"] = np.full(1, np.inf, np.float32)
    verdict = comparator._verdict(ev, outputs, ev.expected, ev.bound, ev.sharp, QUANTITIES, {})
    assert [m.quantity for m in verdict.mismatches] == ["dgamma"]
    _assert_one_pass_judges_as_each_alone(case, outputs)


@given(
    err=st.lists(st.floats(0, 1e300) | st.just(0.0), min_size=1, max_size=6),
    bounds=st.lists(st.floats(0, 1e300) | st.just(0.0) | st.just(float("nan")), min_size=1, max_size=6),
)
def test_an_error_over_no_positive_bound_is_infinite_and_none_is_zero(err: list[float], bounds: list[float]) -> None:
    n = min(len(err), len(bounds))
    e, b = np.array(err[:n]), np.array(bounds[:n])
    ratio = comparator._ratio(e, b)
    for x, y, r in zip(e, b, ratio, strict=True):
        assert r == (x / y if y > 0 else (np.inf if x > 0 else 0.0)), (x, y, r)

"""Judging: findings fail, known deviations are expected where they apply, and stale ones are reported."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bnprops.fuzzing.catalogue import ACCURACY, UNRECORDED, classify
from bnprops.judging import judgement
from bnprops.judging.checks import assert_matches_oracle, check
from bnprops.judging.deviation_models import Context, Prediction
from bnprops.judging.deviations.native_zero_variance_eps0 import NATIVE_ZERO_VARIANCE_EPS0
from bnprops.model.evaluation import evaluate
from bnprops.model.oracle import reference
from tests.helpers import one_channel_case

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

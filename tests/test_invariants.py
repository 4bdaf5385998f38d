"""The invariants hold whatever the bounds say, and each catches a planted fault that the bounds let through."""

from __future__ import annotations

import numpy as np

from bnprops.case import Case, Outputs
from bnprops.checks import check
from bnprops.known_deviations import empty_batch
from bnprops.oracle import reference
from tests.helpers import one_channel_case


def oracle_with(**changes: np.ndarray):  # type: ignore[no-untyped-def]
    def run(case: Case) -> Outputs:
        out = reference(case)
        out.update(changes)
        return out

    return run


def test_a_moving_variance_below_zero_is_a_finding_even_within_the_bound() -> None:
    # One value per channel, momentum 0: the moving variance is 0, and its bound is a few ulps of eps.
    case = one_channel_case([3.0], eps=1e-3, momentum=0.0)
    subject = oracle_with(moving_var=np.array([-1e-20]))
    outcome = check(case, runner=subject, entry="test-double", kernel="subject", quantities=("moving_var",))
    assert [(m.quantity, m.kind) for m in outcome.unexpected] == [("moving_var", "invariant")]
    assert "below 0" in outcome.message() and "must be at least: 0.0" in outcome.message()
    assert check(case, runner=oracle_with(moving_var=np.array([0.0])), entry="test-double", kernel="subject").ok


def test_an_empty_batch_must_leave_the_moving_statistics_alone() -> None:
    case = empty_batch("float64", fix_gamma=True)
    assert check(case, runner=oracle_with(), entry="test-double").ok  # the oracle follows the contract
    nan = np.full(case.channels, np.nan)
    outcome = check(case, runner=oracle_with(moving_mean=nan, moving_var=nan), entry="test-double")
    assert {m.quantity for m in outcome.unexpected} == {"moving_mean", "moving_var"}
    assert "invariant" in {m.kind for m in outcome.unexpected}


def test_mxnets_negative_moving_variance_is_the_recorded_deviation_and_nothing_else() -> None:
    from bnprops.runners import run_symbolic

    outcome = check(one_channel_case([0.6508470327725044], eps=1e-3, momentum=0.0), runner=run_symbolic, entry="sym")
    assert outcome.ok and [kd.id for kd, _ in outcome.explained] == ["recovered-variance-negative"]

"""The entry-point, agreement and backend properties catch planted faults.

The subject is pure numpy: the oracle's own results in MXNet's output dtypes (faithful), or with
one fault planted. It goes through the same check functions the properties use
(assert_matches_oracle, assert_agree), under labels no known deviation applies to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from bnprops.judging.checks import COUNTS, DEVIATION_HITS, assert_agree, assert_matches_oracle, disagreements
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.error_model import unit_roundoff
from bnprops.model.evaluation import evaluate
from bnprops.model.oracle import fresh_reference, output_dtypes, reference
from bnprops.mx.runners import Runner
from bnprops.search.strategies import cases

Subject = Callable[[Case], Outputs]


@pytest.fixture(autouse=True)
def _keep_the_summary_for_mxnet() -> Iterator[None]:
    # The subjects here are not MXNet; their cases must not show in the run's summary.
    saved = (COUNTS.copy(), DEVIATION_HITS.copy())
    yield
    for counter, before in zip((COUNTS, DEVIATION_HITS), saved, strict=True):
        counter.clear()
        counter.update(before)  # type: ignore[arg-type]


META = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # the first failure is the evidence; no shrinking needed
    suppress_health_check=list(HealthCheck),
)


def faithful(case: Case) -> Outputs:
    dtypes = output_dtypes(case)
    with np.errstate(over="ignore", invalid="ignore"):
        return {q: v.astype(dtypes[q]) for q, v in reference(case).items()}


def ignores_add(case: Case) -> Outputs:
    """grad_req 'add' treated as 'write': the prior is lost."""
    out = faithful(case)
    fresh = fresh_reference(case)
    for q in ("dx", "dgamma", "dbeta"):
        if q in out:
            out[q] = fresh[q].astype(out[q].dtype)
    return out


def updates_in_forward(case: Case) -> Outputs:
    """The moving statistics already updated between forward and backward."""
    out = faithful(case)
    out["forward_moving_mean"], out["forward_moving_var"] = out["moving_mean"], out["moving_var"]
    return out


def inference_with_batch_statistics(case: Case) -> Outputs:
    """is_train=False ignored: inference normalises with the batch."""
    return faithful(case.with_(is_train=True)) if not case.is_train else faithful(case)


def nan_dropped(case: Case) -> Outputs:
    """NaN in y silently replaced by 0."""
    out = faithful(case)
    out["y"] = np.nan_to_num(out["y"], nan=0.0, posinf=np.inf, neginf=-np.inf)
    return out


def wipes_gamma_prior(case: Case) -> Outputs:
    """The oneDNN fix_gamma + 'add' bug, in a subject that no known deviation covers."""
    out = faithful(case)
    if case.fix_gamma and "dgamma" in out:
        out["dgamma"] = np.zeros_like(out["dgamma"])
    return out


def nudged_within_bound(case: Case) -> Outputs:
    """dx moved by a quarter of its (sharper, probabilistic) error bound, rounded once: the oracle cannot
    see it, an identical computation must."""
    out = faithful(case)
    if "dx" in out:
        expected = reference(case)
        b = evaluate(case).bounds_of(expected, model="probabilistic")["dx"]
        # Less the rounding of the nudged value into the output dtype, which the bound includes once.
        b = np.maximum(b - 2 * unit_roundoff(case.dtype) * np.abs(expected["dx"]), 0)
        with np.errstate(invalid="ignore", over="ignore"):
            out["dx"] = (expected["dx"] + np.where(b < 1, b / 4, 0)).astype(out["dx"].dtype)  # b < 1: no overflow
    return out


def entry_point_property(subject: Runner) -> None:
    @META
    @given(case=cases())
    def prop(case: Case) -> None:
        assert_matches_oracle(case, runner=subject, entry="numpy", quantities=QUANTITIES, backend="numpy")

    prop()


def agreement_property(runners: dict[str, tuple[Runner, str, str]]) -> None:
    @META
    @given(case=cases())
    def prop(case: Case) -> None:
        assert_agree(case, runners)

    prop()


def test_the_faithful_subject_passes_the_entry_point_property() -> None:
    entry_point_property(faithful)


@pytest.mark.parametrize(
    "fault",
    [ignores_add, updates_in_forward, inference_with_batch_statistics, nan_dropped, wipes_gamma_prior],
    ids=lambda f: f.__name__,
)
def test_the_entry_point_property_catches_a_planted_fault(fault: Subject) -> None:
    with pytest.raises(AssertionError):
        entry_point_property(fault)


def test_the_entry_point_property_cannot_see_a_fault_within_the_bound() -> None:
    # What makes the agreement property worth having: this one only it catches.
    entry_point_property(nudged_within_bound)


def test_identical_computations_that_agree_pass_the_agreement_property() -> None:
    agreement_property({"a": (faithful, "numpy-a", "numpy"), "b": (faithful, "numpy-b", "numpy")})


def test_the_agreement_property_catches_a_fault_within_the_bound_in_one_entry_point() -> None:
    with pytest.raises(AssertionError, match="disagree"):
        agreement_property({"a": (faithful, "numpy-a", "numpy"), "b": (nudged_within_bound, "numpy-b", "numpy")})


def test_the_backend_property_catches_a_planted_fault_in_one_backend() -> None:
    with pytest.raises(AssertionError):
        agreement_property({"one": (faithful, "numpy", "one"), "two": (ignores_add, "numpy", "two")})


def test_backends_may_differ_within_twice_the_bound_but_not_beyond() -> None:
    x = np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3)
    case = Case(
        x=x,
        dy=np.ones_like(x) + x,
        gamma=np.ones(3, "float32"),
        beta=np.zeros(3, "float32"),
        moving_mean=np.zeros(3, "float32"),
        moving_var=np.ones(3, "float32"),
        fix_gamma=False,
    )
    good = faithful(case)
    b = evaluate(case).bound["dx"]
    near, far = dict(good), dict(good)
    near["dx"] = (good["dx"] + 0.9 * b).astype("float32")
    far["dx"] = (good["dx"] + 3 * b).astype("float32")
    assert not disagreements(case, {"one": good, "two": near})
    found = disagreements(case, {"one": good, "two": far})
    assert [m.quantity for d in found for m in d.verdict.mismatches] == ["dx"]
    # ... and elements a known deviation covers for either side are not compared, the others still are.
    everywhere, one_element = np.ones(x.shape, dtype=bool), np.zeros(x.shape, dtype=bool)
    one_element[0, 0] = True
    assert not disagreements(case, {"one": good, "two": far}, covered={"two": {"dx": everywhere}})
    assert disagreements(case, {"one": good, "two": far}, covered={"two": {"dx": one_element}})

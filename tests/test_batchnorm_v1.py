"""BatchNorm_v1, the legacy operator old checkpoints use, judged against the oracle (the sym-v1 entry point).

Only the cases it can express run: float32, 2-D or 4-D, channels on axis 1 (bnprops.mx.runners.adapt).
The planted-fault test shows that the property catches a 0.5% error in one gradient of a v1-shaped subject.
"""

from __future__ import annotations

import functools
import math

import hypothesis
import mxnet as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from bnprops.judging.checks import assert_matches_oracle, check
from bnprops.judging.comparator import Verdict, compare
from bnprops.judging.deviation_models import Context
from bnprops.judging.deviations import KNOWN_DEVIATIONS
from bnprops.model.case import QUANTITIES, Case
from bnprops.model.evaluation import evaluate
from bnprops.mx.runners import run_symbolic_v1, v1_unexpressible_reason
from bnprops.search.strategies import VALUE_REGIMES
from bnprops.search.v1 import cases_for_v1
from tests.emulated import V1_SUMMATIONS, emulate_v1
from tests.helpers import budget, planted_search
from tests.planted import numpy_batchnorm


def v1_cases(**options: object) -> st.SearchStrategy[Case]:
    """The strategies' cases that BatchNorm_v1 can express (the member's own strategy)."""
    return cases_for_v1(**options)


@pytest.mark.property
@settings(max_examples=budget(0.5), deadline=None, suppress_health_check=list(HealthCheck))
@given(case=v1_cases(sizes="all"))
def test_batchnorm_v1_matches_the_oracle(case: Case) -> None:
    """Small cases and, one in LARGE_SHARE, the sizes of real layers (v1's own error model: operator "v1")."""
    assert_matches_oracle(case, runner=run_symbolic_v1, entry="sym-v1", quantities=QUANTITIES)


#: The quantities v1's training branch forms, which emulate_v1 emulates.
EMULATED = ("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var")
#: What a correct kernel may never show (an accuracy finding is within the deterministic bound).
UNSOUND = ("value", "nonfinite", "missing", "shape")


def v1_training_cases(sizes: str) -> st.SearchStrategy[Case]:
    """Training calls with batch statistics and 'write' requests, finite data: what emulate_v1 forms."""
    regimes = [r for r in VALUE_REGIMES if r != "nonfinite"]
    write = st.just(("write", "write", "write"))
    return v1_cases(sizes=sizes, is_train=True, use_global_stats=False, grad_req=write, value_regimes=regimes)


def v1_verdict(case: Case, summation: str, operator: str = "v1") -> Verdict:
    outputs = emulate_v1(case, summation=summation)
    return compare(case, outputs, quantities=EMULATED, evaluation=evaluate(case, "reference", operator=operator))


@pytest.mark.parametrize("sizes", ["small", "large"])
def test_no_correct_v1_kernel_exceeds_v1s_deterministic_bound(sizes: str) -> None:
    """The soundness search of v1's terms: v1's arithmetic emulated (in mshadow's order, MXNet's own, and the
    other summation orders), steered toward the largest error/bound ratio, never beyond its deterministic bound."""
    examples = budget(0.25) if sizes == "small" else max(4, budget(0.02))

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=v1_training_cases(sizes), summation=st.sampled_from(V1_SUMMATIONS))
    def run(case: Case, summation: str) -> None:
        verdict = v1_verdict(case, summation)
        worst = max(verdict.ratios.values(), default=0.0)
        hypothesis.target(math.log10(worst) if worst > 0 else -30.0, label="worst error/bound")
        bad = [m for m in verdict.mismatches if m.kind in UNSOUND]
        assert not bad, f"{summation}: " + "\n".join(m.describe() for m in bad) + "\n" + case.to_json()

    run()


@settings(max_examples=budget(0.05), deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=v1_training_cases("small"))
def test_the_v1_emulation_in_mshadows_order_is_mxnets_kernel_bit_for_bit(case: Case) -> None:
    outputs = run_symbolic_v1(case)
    emulated = emulate_v1(case, summation="planes")
    for q in EMULATED:
        if q == "dgamma" and not case.fix_gamma:
            # Open: where dgamma's terms cancel to below one float32 ulp of their magnitude, its last bit is not
            # pinned down (float32[1, 1, 1, 2], terms ~1: MXNet 2.98e-8, the emulation 1.49e-8); cause unknown.
            # Everywhere else it is bit for bit.
            slack = np.spacing(np.float32(1)) * emulated["dgamma_magnitude"]
            cancelled = np.abs(emulated[q]) < slack
            np.testing.assert_array_equal(emulated[q][~cancelled], outputs[q][~cancelled], err_msg=case.describe())
            assert np.all(np.abs(emulated[q] - outputs[q])[cancelled] <= slack[cancelled]), case.describe()
            continue
        np.testing.assert_array_equal(emulated[q], outputs[q], err_msg=f"{q} of {case.describe()}")


def test_v1s_own_terms_are_needed_at_the_size_the_batchnorm_model_missed() -> None:
    """float32[16, 1, 8, 8], dy all ones: v1's dx (MXNet's, emulated bit for bit) is beyond BatchNorm's
    probabilistic bound, within v1's."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((16, 1, 8, 8)) * 2 + 1).astype(np.float32)
    case = Case(
        x=x,
        dy=np.ones_like(x),
        gamma=np.array([0.8356148], np.float32),
        beta=np.zeros(1, np.float32),
        moving_mean=np.zeros(1, np.float32),
        moving_var=np.ones(1, np.float32),
        fix_gamma=False,
    )
    assert [m.kind for m in v1_verdict(case, "planes", operator="batchnorm").mismatches] == ["accuracy"]
    assert not v1_verdict(case, "planes").mismatches


def test_batchnorm_v1_runs_only_what_it_can_express() -> None:
    case = next(iter([c for c in _examples() if c.x.ndim == 4]))
    assert v1_unexpressible_reason(case) is None
    assert v1_unexpressible_reason(case.with_(axis=-3)) is None  # axis -3 of a 4-D input is axis 1
    assert "axis" in str(v1_unexpressible_reason(case.with_(axis=2)))


def _examples() -> list[Case]:
    found: list[Case] = []

    @settings(max_examples=20, database=None, derandomize=True)
    @given(case=v1_cases())
    def collect(case: Case) -> None:
        found.append(case)

    collect()
    return found


def _off_by_half_percent_in_dgamma(case: Case) -> dict[str, np.ndarray]:
    """A correct float32 BatchNorm, v1-shaped, except that dgamma is scaled by 1.005."""
    outputs = numpy_batchnorm(case)
    if "dgamma" in outputs and not case.fix_gamma:
        outputs["dgamma"] = (outputs["dgamma"].astype(np.float64) * 1.005).astype(outputs["dgamma"].dtype)
    return outputs


def test_the_v1_property_catches_half_a_percent_in_dgamma() -> None:
    def judged(case: Case):  # type: ignore[no-untyped-def]
        return check(case, runner=_off_by_half_percent_in_dgamma, entry="sym-v1", kernel="subject")

    search = planted_search(300)
    found = hypothesis_find(v1_cases(), lambda case: not judged(case).ok, settings=search)
    assert judged(found).unexpected, f"flagged {found.describe()} only through a known deviation"
    assert v1_unexpressible_reason(found) is None


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(case=v1_cases(is_train=True))
def test_a_correct_v1_shaped_subject_passes(case: Case) -> None:
    # Training calls only: after an inference forward, sym-v1's dx deviates for certain (v1-inference-backward-trains).
    outcome = functools.partial(check, runner=numpy_batchnorm, entry="sym-v1", kernel="subject")(case)
    assert outcome.ok, outcome.message()


def test_batchnorm_v1s_third_output_is_the_variance_and_the_runner_reports_invstd() -> None:
    x = np.arange(8, dtype=np.float32).reshape(4, 2) ** 2
    sym = mx.sym.BatchNorm_v1(mx.sym.Variable("data"), name="bn", output_mean_var=True, fix_gamma=False)
    exe = sym.simple_bind(mx.cpu(), data=x.shape)
    exe.arg_dict["data"][:] = x
    exe.arg_dict["bn_gamma"][:] = 1
    _, mean, var = (o.asnumpy() for o in exe.forward(is_train=True))
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(var, x.var(axis=0), rtol=1e-6)  # biased, and not invstd
    case = _examples()[0].with_(output_mean_var=True, is_train=True, use_global_stats=False)
    outputs = run_symbolic_v1(case)
    assert outputs["invstd"].dtype == np.float64  # converted from the variance


def test_batchnorms_own_deviations_do_not_apply_to_batchnorm_v1() -> None:
    case = _examples()[0]
    ctx = Context(case, "native", evaluate(case))
    for kd in KNOWN_DEVIATIONS:
        if kd.entries is None:
            assert kd.predictions(ctx, entry="sym-v1", scoped=False) == [], kd.id


@pytest.mark.parametrize("shape", [(16, 3, 25, 25), (40, 3, 50, 50)], ids=["M=10^4", "M=10^5"])
def test_v1s_bound_still_catches_half_a_percent_in_dx_at_real_sizes(shape: tuple[int, ...]) -> None:
    """v1's terms widen dx's bound; a correct float32 subject with dx scaled by 1.005 must still be flagged."""
    rng = np.random.default_rng(5)
    x = (1.0 + rng.standard_normal(shape)).astype(np.float32)
    case = Case(
        x=x,
        dy=rng.standard_normal(shape).astype(np.float32),
        gamma=np.array([0.75, 1.5, 1.25], np.float32),
        beta=np.array([0.25, -0.5, 0.0], np.float32),
        moving_mean=np.zeros(3, np.float32),
        moving_var=np.ones(3, np.float32),
        fix_gamma=False,
    )

    def off_in_dx(c: Case) -> dict[str, np.ndarray]:
        outputs = numpy_batchnorm(c)
        outputs["dx"] = (outputs["dx"].astype(np.float64) * 1.005).astype(np.float32)
        return outputs

    outcome = check(case, runner=off_in_dx, entry="sym-v1", kernel="subject")
    assert [m.quantity for m in outcome.unexpected] == ["dx"], outcome.message() or "the planted dx passed"
    assert check(case, runner=numpy_batchnorm, entry="sym-v1", kernel="subject").ok


def test_v1s_dgamma_drift_is_predicted_from_the_sum_v1_forms_under_global_statistics() -> None:
    """float32[1000, 1] all 3.0, dy all ones, moving_var 2: v1 sums dy (x - mean) / sqrt(var + eps) in float32,
    element after element (batch_norm_v1-inl.h), and that sum drifts beyond the probabilistic bound while the
    unscaled (x - mean) dy sums exactly, so only a predict that tests v1's own terms explains it (once a
    false alarm: float32[100000, 3], offset regime, dgamma -17714090.0 against -17720525.3)."""
    x = np.full((1000, 1), 3.0, np.float32)
    case = Case(
        x=x,
        dy=np.ones_like(x),
        gamma=np.ones(1, np.float32),
        beta=np.zeros(1, np.float32),
        moving_mean=np.zeros(1, np.float32),
        moving_var=np.full(1, 2.0, np.float32),
        fix_gamma=False,
        use_global_stats=True,
        eps=1e-3,
    )
    outcome = check(case, runner=run_symbolic_v1, entry="sym-v1", quantities=QUANTITIES)
    f32 = np.float32
    terms = case.dy * (x - case.moving_mean) / np.sqrt(case.moving_var + f32(case.eps))
    emulated = np.cumsum(terms, axis=0, dtype=f32)[-1]
    actual = run_symbolic_v1(case)["dgamma"]
    np.testing.assert_array_equal(
        actual, emulated, err_msg="v1's dgamma is not the float32 sequential sum of its terms"
    )
    assert np.cumsum(case.dy * x, axis=0, dtype=f32)[-1] == 3000.0  # the unscaled sum does not drift
    ratio = outcome.verdict.sharp_ratios["dgamma"]
    assert ratio > 1, f"dgamma's error is {ratio:.2f} of the probabilistic bound: the case no longer shows the drift"
    assert outcome.ok, outcome.message()
    assert [kd.id for kd, _ in outcome.explained] == ["v1-sequential-sum-drift"]

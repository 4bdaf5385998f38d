"""Exact metamorphic relations hold bit for bit on every entry point and backend (bnprops/judging/relations.py).

No oracle: each property runs a case and a transformed case through MXNet and demands that the
results agree to the last bit (scaled by the power of two the relation says). Example counts are
shares of the profile's per-property budget, as in tests/test_entry_points.py. The meta tests below
show that each relation catches a planted fault, and that a correct float BatchNorm keeps them all.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from bnprops.judging.relations import (
    RELATIONS,
    Scale,
    ScalingRelation,
    compare_scaled,
    eps_as_kernel_reads,
    run_relation,
)
from bnprops.model.case import Case, Outputs
from bnprops.model.params import parsed
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND, adapt, run_symbolic
from bnprops.search.strategies import cases, epsilons
from tests.helpers import budget, planted_search, skip_unless_available
from tests.planted import numpy_batchnorm
from tests.planted_relations import FAULTS, faulty_batchnorm

#: Shares of settings.default.max_examples (400 in dev and ci: 40 cases per relation, entry point and
#: backend; 10 large ones per relation on the in-process backend).
SHARES = {"small": 0.1, "large": 0.025}
#: Parameter choices: an index into the relation's admissible parameters (0, the simplest, shrinks first).
CHOICES = st.integers(0, 2**16)


def examples(share: str) -> int:
    return budget(SHARES[share])


def assert_relation_holds(name: str, case: Case, choice: int, *, entry: str, backend: str) -> None:
    """Run the case and its transform through MXNet; raise AssertionError, with both cases, where they differ."""
    relation = RELATIONS[name]
    case = adapt(entry, case)
    params = relation.parameters(case, choice)
    assume(params is not None)  # no exact instance of the relation for this case (see its docstring)
    outcome = run_relation(relation, case, params, runner_for(entry, backend))
    if not outcome.ok:
        raise AssertionError(outcome.message(label=f"MXNet ({entry}, {backend})"))


def holds_everywhere(name: str, entry: str, backend: str) -> None:
    skip_unless_available(backend)

    @settings(max_examples=examples("small"))
    @given(case=cases(), choice=CHOICES)
    def relation_holds(case: Case, choice: int) -> None:
        assert_relation_holds(name, case, choice, entry=entry, backend=backend)

    relation_holds()


@pytest.mark.property
def test_scaling_x_by_2_to_the_k_and_eps_by_4_to_the_k_keeps_y_dgamma_dbeta_and_scales_dx_by_2_to_the_minus_k(
    bn_entry: str, bn_backend: str
) -> None:
    holds_everywhere("scale-data", bn_entry, bn_backend)


@pytest.mark.property
def test_scaling_dy_by_2_to_the_k_scales_dx_dgamma_and_dbeta_by_2_to_the_k(bn_entry: str, bn_backend: str) -> None:
    holds_everywhere("scale-head", bn_entry, bn_backend)


@pytest.mark.property
def test_scaling_gamma_and_beta_by_2_to_the_k_scales_y_and_dx_by_2_to_the_k(bn_entry: str, bn_backend: str) -> None:
    holds_everywhere("scale-affine", bn_entry, bn_backend)


@pytest.mark.property
def test_permuting_the_channels_permutes_every_result(bn_entry: str, bn_backend: str) -> None:
    holds_everywhere("permute-channels", bn_entry, bn_backend)


@pytest.mark.property
def test_the_same_call_twice_gives_the_same_bits(bn_entry: str, bn_backend: str) -> None:
    holds_everywhere("repeat", bn_entry, bn_backend)


@pytest.mark.property
@pytest.mark.parametrize("name", list(RELATIONS))
def test_every_relation_holds_at_the_sizes_of_real_layers(name: str, request: pytest.FixtureRequest) -> None:
    # 10^3 to 10^6 elements per channel, on the backend this process runs, through the chosen entry points.
    config = request.config
    if IN_PROCESS_BACKEND not in config.bn_backends:  # type: ignore[attr-defined]
        pytest.skip(f"--bn-backend leaves out {IN_PROCESS_BACKEND}, the in-process backend")
    entries = st.sampled_from(config.bn_entries)  # type: ignore[attr-defined]

    @settings(max_examples=examples("large"))
    @given(case=cases(sizes="large"), choice=CHOICES, entry=entries)
    def relation_holds_at_real_sizes(case: Case, choice: int, entry: str) -> None:
        assert_relation_holds(name, case, choice, entry=entry, backend=IN_PROCESS_BACKEND)

    relation_holds_at_real_sizes()


# ---------------------------------------------------------------------------------------------------
# The comparison itself


def test_a_result_scaled_exactly_passes_and_a_one_ulp_change_is_reported_with_both_bit_patterns() -> None:
    first = np.array([[1.5, -0.75], [np.nan, np.inf]], dtype=np.float32)
    assert compare_scaled("r", "dx", first, np.ldexp(first, 3).astype(np.float32), 3) is None
    second = np.ldexp(first, 3).astype(np.float32)
    second[0, 1] = np.nextafter(second[0, 1], np.float32(0))
    found = compare_scaled("r", "dx", first, second, 3)
    assert found is not None
    assert (found.count, found.index, found.ulps) == (1, (0, 1), 1.0)
    assert (found.expected_bits, found.actual_bits) == ("0xc0c00000", "0xc0bfffff")
    assert "dx: 1 of 4 elements break it; worst at index (0, 1)" in found.describe()


def test_nan_must_meet_nan_and_results_rounded_in_the_subnormal_range_are_not_judged() -> None:
    tiny = np.float32(2.0**-130)  # subnormal in float32: scaling it is not exact
    first = np.array([np.nan, 1.0, tiny, 0.0], dtype=np.float32)
    second = np.array([1.0, 2.0, np.float32(2.0**-129) * np.float32(1.5), 0.0], dtype=np.float32)
    found = compare_scaled("r", "y", first, second, 1)
    assert found is not None and found.count == 1 and found.index == (0,)


def test_scale_data_draws_only_powers_for_which_mxnet_reads_eps_times_4_to_the_k_exactly() -> None:
    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(case=cases(eps=epsilons()), choice=CHOICES)
    def only_exact_eps(case: Case, choice: int) -> None:
        params = RELATIONS["scale-data"].parameters(case, choice)
        if params is None:
            return
        scaled = math.ldexp(case.eps, 2 * params.k)
        assert parsed(scaled, "float64") == math.ldexp(parsed(case.eps, "float64"), 2 * params.k)
        (_, before), (_, after) = eps_as_kernel_reads(case.eps, case.dtype), eps_as_kernel_reads(scaled, case.dtype)
        assert after == math.ldexp(before, 2 * params.k)

    only_exact_eps()


def test_mxnet_does_break_scale_data_where_its_parser_misreads_eps_times_4_to_the_k_so_k_is_excluded() -> None:
    # dmlc's ParseFloat reads str(2.509312092804026 * 4^3) one ulp below 4^3 times what it reads for eps.
    eps, k = 2.509312092804026, 3
    assert parsed(math.ldexp(eps, 2 * k), "float64") != math.ldexp(parsed(eps, "float64"), 2 * k)
    rng = np.random.default_rng(0)
    case = Case(
        x=rng.standard_normal((6, 2, 2)),
        dy=rng.standard_normal((6, 2, 2)),
        gamma=np.array([1.5, -0.5]),
        beta=np.array([0.25, 1.0]),
        moving_mean=np.zeros(2),
        moving_var=np.ones(2),
        eps=eps,
        fix_gamma=False,
    )
    relation = RELATIONS["scale-data"]
    assert isinstance(relation, ScalingRelation)
    assert not {-k, k} & set(relation.candidates(case))
    forced = relation.transform(case, Scale(k))  # transform() itself does not refuse it
    broken = relation.check(case, run_symbolic(case), run_symbolic(forced), Scale(k))
    assert {v.quantity for v in broken} >= {"y", "dx"}


# ---------------------------------------------------------------------------------------------------
# Meta: each relation catches a planted fault, and a correct float BatchNorm keeps every relation

META = planted_search(300)


@st.composite
def instances(draw: st.DrawFn, name: str) -> tuple[Case, object] | None:
    case = draw(cases())
    return case, RELATIONS[name].parameters(case, draw(CHOICES))


def broken_by(name: str, subject: functools.partial[Outputs]) -> object:
    def broken(instance: tuple[Case, object] | None) -> bool:
        if instance is None or instance[1] is None:
            return False
        return not run_relation(RELATIONS[name], instance[0], instance[1], subject).ok

    return broken


def test_every_relation_has_a_planted_fault() -> None:
    assert {relation for relation, _ in FAULTS.values()} == set(RELATIONS)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_relation_catches_its_planted_fault(fault: str) -> None:
    name, _ = FAULTS[fault]
    subject = functools.partial(faulty_batchnorm, fault=fault)
    case, params = hypothesis_find(instances(name), broken_by(name, subject), settings=META)  # type: ignore[misc]
    outcome = run_relation(RELATIONS[name], case, params, subject)
    assert not outcome.ok
    message = outcome.message(label="the subject")
    assert f"breaks relation {name!r}" in message and "expected:" in message and "0x" in message


@pytest.mark.parametrize("name", list(RELATIONS))
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(case=cases(), choice=CHOICES)
def test_every_relation_holds_for_a_correct_float_batchnorm(name: str, case: Case, choice: int) -> None:
    params = RELATIONS[name].parameters(case, choice)
    assume(params is not None)
    outcome = run_relation(RELATIONS[name], case, params, numpy_batchnorm)
    assert outcome.ok, outcome.message(label="numpy_batchnorm")

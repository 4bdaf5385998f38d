"""The invariants hold whatever the bounds say, and each catches a planted fault that the bounds let through."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bnprops.judging.checks import check, check_group
from bnprops.judging.comparator import compare
from bnprops.judging.deviations.recovered_variance_negative import RECOVERED_VARIANCE_NEGATIVE
from bnprops.judging.invariants import violations
from bnprops.judging.known_deviations import empty_batch
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, NULL_BUFFER_OF, Case, Outputs, param_dtype, sentinel
from bnprops.model.oracle import output_dtypes, reference
from bnprops.mx.backends import runner_for
from bnprops.mx.batching import split, stack
from bnprops.mx.helper_process import environment_for
from bnprops.mx.runners import BACKENDS, ENTRY_POINTS, IN_PROCESS_BACKEND, adapt
from bnprops.mx.snippets import snippet
from tests.helpers import one_channel_case, skip_unless_available
from tests.planted_runners import turns_finite_into_nan, writes_gamma, writes_null_buffers


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
    from bnprops.mx.runners import run_symbolic

    outcome = check(one_channel_case([0.6508470327725044], eps=1e-3, momentum=0.0), runner=run_symbolic, entry="sym")
    assert outcome.ok and [kd for kd, _ in outcome.explained] == [RECOVERED_VARIANCE_NEGATIVE]


# Finite in, finite out. (Planted runners are judged under the label "planted": out of the run's summary.)


def finite_breaks(case: Case, actual: Outputs) -> list[str]:
    """The quantities in which ``actual`` breaks finite-in-finite-out."""
    return [m.quantity for m in violations(case, actual) if m.detail.startswith("non-finite")]


def nan_in(out: Outputs, *quantities: str) -> Outputs:
    out = dict(out)
    for q in quantities:
        out[q] = np.full_like(out[q], np.nan)
    return out


def two_channels(values: list[list[float]], *, dtype: str = "float64", **params: object) -> Case:
    """A case with x of shape (M, 2): each inner list is one channel's values."""
    x = np.asarray(values, dtype=np.float64).T.astype(dtype)
    pdt = param_dtype(dtype)
    fields: dict[str, object] = {
        "gamma": np.array([1.5, -0.5], pdt),
        "beta": np.array([0.25, 1.0], pdt),
        "moving_mean": np.zeros(2, pdt),
        "moving_var": np.ones(2, pdt),
        "fix_gamma": False,
    }
    fields.update(params)
    dy = np.linspace(-1, 1, x.size).reshape(x.shape).astype(dtype)
    return Case(x=x, dy=dy, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("quantity", ["y", "dx", "dbeta", "moving_mean"])
def test_a_runner_that_turns_a_finite_result_into_nan_is_caught(quantity: str) -> None:
    case = one_channel_case([1.0, 2.0, 4.0], dtype="float32")
    runner = turns_finite_into_nan(quantity)("sym", IN_PROCESS_BACKEND)
    outcome = check(case, runner=runner, entry="planted", quantities=(quantity,))
    assert (quantity, "invariant") in [(m.quantity, m.kind) for m in outcome.unexpected]
    assert "non-finite from finite input" in outcome.message()


def test_nan_in_one_channels_input_excuses_that_channel_and_no_other() -> None:
    case = two_channels([[1.0, np.nan, 4.0], [1.0, 2.0, 4.0]])
    out = reference(case)
    assert finite_breaks(case, out) == []  # the oracle's own NaNs are in the NaN channel only
    out["y"] = out["y"].copy()
    out["y"][0, 1] = np.nan
    assert finite_breaks(case, out) == ["y"]


def test_an_exact_value_beyond_the_dtypes_largest_number_may_be_inf() -> None:
    # float16, global statistics: xhat = 1e5, so y = xhat rounds to inf; dx = invstd dy = 100 dy fits.
    case = one_channel_case([1000.0, -1000.0], dtype="float16", use_global_stats=True, eps=0.0, fix_gamma=True)
    case = case.with_(moving_var=np.array([1e-4], np.float32), beta=np.zeros(1, np.float32))
    with np.errstate(over="ignore"):
        out = {q: v.astype(output_dtypes(case)[q]) for q, v in reference(case).items()}
    assert np.isinf(out["y"]).all() and finite_breaks(case, out) == []
    assert finite_breaks(case, nan_in(out, "dx")) == ["dx"]


def test_an_exact_value_within_its_bound_of_the_overflow_threshold_may_be_inf() -> None:
    # y = beta + xhat with beta = 65519: rounds to 65504, but a correct float16 kernel may round it up to inf.
    near = one_channel_case([1.0, 2.0], dtype="float16", fix_gamma=True).with_(beta=np.array([65519.0], np.float32))
    inf = np.full(near.shape, np.inf, np.float16)
    assert finite_breaks(near, {**reference(near), "y": inf}) == []
    far = near.with_(beta=np.array([60000.0], np.float32))
    assert finite_breaks(far, {**reference(far), "y": inf}) == ["y"]


@pytest.mark.parametrize(
    ("values", "dtype", "eps"),
    [
        ([[3.0], [1.0, 2.0]], "float64", 0.0),  # var + eps = 0 exactly
        ([[1.0, 1.0 + 2.0**-23], [1.0, 2.0]], "float32", 0.0),  # a variance within its error bound of 0
        ([[1.0], [1.0, 2.0]], "float16", 1e-8),  # float16's kernel rounds eps, and var + eps, to 0
        ([[-256.0, 256.0], [1.0, 2.0]], "float16", 1e-3),  # ... and var + eps = 65536 to inf
    ],
)
def test_results_computed_through_invstd_may_be_non_finite_where_var_plus_eps_leaves_the_kernels_range(
    values: list[list[float]], dtype: str, eps: float
) -> None:
    m = max(len(v) for v in values)
    case = two_channels([(v * m)[:m] for v in values], dtype=dtype, eps=eps)
    out = nan_in(reference(case), "y", "dx", "dgamma")
    nan_first = {q: out[q].copy() for q in ("y", "dx", "dgamma")}
    for q, value in nan_first.items():
        value[..., 1] = reference(case)[q][..., 1]  # the second channel is ordinary
    assert finite_breaks(case, {**out, **nan_first}) == []
    # The moving variance is not computed through invstd: it stays finite whatever var + eps does.
    assert finite_breaks(case, nan_in({**out, **nan_first}, "moving_var")) == ["moving_var"]
    assert finite_breaks(case, out) == ["y", "dx", "dgamma"]


def test_sums_that_overflow_the_accumulation_type_excuse_the_results_they_feed() -> None:
    # float32: each (x - mean)^2 = 2.25e38 fits, their sum does not, the variance 2.25e38 does.
    case = one_channel_case([-1.5e19, 1.5e19, -1.5e19, 1.5e19], dtype="float32")
    out = nan_in(reference(case), "y", "dx", "moving_var")
    assert finite_breaks(case, out) == []
    assert finite_breaks(case, nan_in(out, "dbeta")) == ["dbeta"]


def test_an_empty_batch_has_empty_sums_and_no_variance_to_excuse_them() -> None:
    case = empty_batch("float32", fix_gamma=False)
    out = reference(case)
    assert finite_breaks(case, out) == []  # mean and invstd are 0/0, y and dx empty
    assert finite_breaks(case, nan_in(out, "dgamma", "dbeta")) == ["dgamma", "dbeta"]


# 'null' gradients leave their buffers alone.

#: Where each entry point can give a 'null' request a buffer: a gluon Parameter with grad_req='null' has none.
NULL_BUFFERS = {entry: ("data", "gamma", "beta") for entry in ENTRY_POINTS} | {
    "gluon": ("data",),
    "gluon-hybrid": ("data",),
}


def null_case(target: str, **params: object) -> Case:
    reqs = tuple("null" if t == target else "write" for t in GRAD_TARGETS)
    return one_channel_case([1.0, 2.0, 4.0], dtype="float32", grad_req=reqs, **params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_mxnet_leaves_a_null_requests_buffer_alone_wherever_the_entry_point_has_one(entry: str, backend: str) -> None:
    skip_unless_available(backend)
    runner = runner_for(entry, backend)
    for target in GRAD_TARGETS:
        # fix_gamma=True too: oneDNN writes 0 into the gamma gradient under fix_gamma without looking at req.
        for case in (null_case(target), null_case(target, fix_gamma=True, is_train=False)):
            case = adapt(entry, case)
            out = runner(case)
            assert (NULL_BUFFER_OF[target] in out) == (target in NULL_BUFFERS[entry]), (entry, target)
            assert GRADIENT_OF[target] not in out
            assert violations(case, out) == [], (entry, backend, case.describe())


@pytest.mark.parametrize("target", GRAD_TARGETS)
def test_a_runner_that_writes_a_null_buffer_is_caught_under_the_gradients_name(target: str) -> None:
    case = null_case(target)
    outcome = check(case, runner=writes_null_buffers("sym", IN_PROCESS_BACKEND), entry="planted")
    quantity = GRADIENT_OF[target]
    assert [(m.quantity, m.kind) for m in outcome.unexpected] == [(quantity, "invariant")]
    assert f"grad_req 'null' for {target}" in outcome.message() and NULL_BUFFER_OF[target] in outcome.message()


def test_stacked_null_buffers_split_into_each_cases_own_sentinel() -> None:
    group = [null_case("data").with_(x=np.array([[1.0], [v], [4.0]], np.float32)) for v in (2.0, -3.0, 0.5)]
    stacked = stack(group)
    buffers = {key: stacked.null_sentinel(t) for t, key in NULL_BUFFER_OF.items()}
    for case, part in zip(group, split(stacked, buffers, [c.channels for c in group]), strict=True):
        for target, key in NULL_BUFFER_OF.items():
            assert part[key].tobytes() == case.null_sentinel(target).tobytes()
    outcomes = check_group(group, runner=writes_null_buffers("sym", IN_PROCESS_BACKEND), entry="planted")
    assert all(("dx", "invariant") in [(m.quantity, m.kind) for m in o.unexpected] for o in outcomes)
    assert all(o.ok for o in check_group(group, runner=runner_for("sym", IN_PROCESS_BACKEND), entry="sym"))


def test_the_sentinel_is_finite_non_zero_exact_and_varies_within_a_channel() -> None:
    for dtype in ("float16", "float32", "float64"):
        values = sentinel((3, 4, 5), 1, dtype)
        assert values.dtype == dtype and np.isfinite(values).all() and (values != 0).all()
        assert (values.astype(np.float64) == sentinel((3, 4, 5), 1, "float64")).all()
        assert len(np.unique(values[:, 0, :])) == 15 and (values == values[:, :1, :]).all()


def test_every_reproducer_fills_and_reports_the_null_buffers_as_the_runner_does() -> None:
    case = one_channel_case([1.0, 2.0, 4.0], dtype="float32", grad_req=("null", "null", "write"))
    checks = "\n".join(
        f"assert np.asarray(actual[{key!r}]).tobytes() == sentinel({shape!r}, {axis}, {dtype!r}).tobytes(), {key!r}"
        for key, shape, axis, dtype in (("null_dx", case.shape, 1, "float32"), ("null_dgamma", (1,), 0, "float32"))
    )
    scripts = []
    for entry in ENTRY_POINTS:  # npx last: its snippet switches the numpy semantics on for the process
        expected = checks if entry in ("sym", "nd", "npx") else checks.splitlines()[0]
        scripts.append(f"print('== {entry}')\n{snippet(case, entry=entry)}\n{expected}")
    proc = subprocess.run(
        [sys.executable, "-c", "\n".join(scripts)],
        capture_output=True,
        text=True,
        env=environment_for(IN_PROCESS_BACKEND),
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("== ")] == [f"== {e}" for e in ENTRY_POINTS]


# fix_gamma=False leaves the gamma array alone.


def test_a_runner_that_writes_the_gamma_array_is_caught() -> None:
    case = one_channel_case([1.0, 2.0, 4.0], dtype="float32")
    outcome = check(case, runner=writes_gamma("sym", IN_PROCESS_BACKEND), entry="planted", quantities=("gamma",))
    assert ("gamma", "invariant") in [(m.quantity, m.kind) for m in outcome.unexpected]
    assert "fix_gamma=False, yet the call wrote the gamma array" in outcome.message()
    # Under fix_gamma the call writes 1.0 there: the oracle judges that, not this invariant.
    fixed = case.with_(fix_gamma=True)
    assert not [m for m in violations(fixed, writes_gamma("sym", IN_PROCESS_BACKEND)(fixed)) if m.quantity == "gamma"]


def test_gamma_is_kept_bit_for_bit_so_a_negative_zero_over_zero_is_caught() -> None:
    case = one_channel_case([1.0, 2.0, 4.0]).with_(gamma=np.zeros(1))
    out = oracle_with(gamma=np.array([-0.0]))(case)
    assert compare(case, out).ok  # -0.0 == 0.0 for the comparator
    assert [(m.quantity, m.kind) for m in violations(case, out)] == [("gamma", "invariant")]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_mxnet_keeps_the_invariants_on_simple_cases(entry: str) -> None:
    runner = runner_for(entry, IN_PROCESS_BACKEND)
    for dtype in ("float16", "float32", "float64"):
        for is_train in (True, False):
            for fix_gamma in (False, True):
                case = two_channels(
                    [[1.0, 2.0, 4.0], [-3.0, 0.5, 0.25]],
                    dtype=dtype,
                    is_train=is_train,
                    fix_gamma=fix_gamma,
                    grad_req=("write", "null", "write") if fix_gamma else ("null", "write", "write"),
                )
                case = adapt(entry, case)
                assert violations(case, runner(case)) == [], (dtype, case.describe())

"""The fused engine against the numpy reference it replaces on large cases, through the evaluation interface.

Over the strategies the properties use: the oracle's values and both bounds agree with the reference's
far within CLOSE of the bound (bit for bit where a correct kernel's error is 0), and the judgement of
MXNet's results (mismatches, known deviations, findings) is the same; so are planted faults'.
"""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnprops.judging import fused
from bnprops.judging.comparator import _compare_one, judged_elements
from bnprops.judging.judgement import Outcome, judge
from bnprops.model import fused_sums
from bnprops.model.case import Case, Outputs
from bnprops.model.evaluation import Evaluation, FusedEvaluation, evaluate
from bnprops.model.formulas import BLOCKS, Row, columns, dx_form, y_form
from bnprops.model.oracle import output_dtypes, per_channel
from bnprops.mx.runners import kernel_for, run_symbolic
from bnprops.search.strategies import VALUE_REGIMES, cases
from tests.helpers import budget

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed")

#: How far the fused oracle's values and bounds may be from the reference's, as a share of the reference's
#: bound: far below CLOSE (2^-8), where the fused path hands a case to the reference.
AGREEMENT = 2.0**-20
FUSED_DTYPES = ("float16", "float32")


def _judged(case: Case, outputs: Outputs, mode: str, chunk: int | None = None) -> tuple[Evaluation, Outcome]:
    with fused.forced(mode, chunk=chunk):
        ev = evaluate(case)
        kernel = kernel_for(case, "onednn")
        outcome = judge(case, outputs, entry="sym", kernel=kernel, checked=list(outputs), evaluation=ev)
    return ev, outcome


def _signature(outcome: Outcome) -> tuple[object, ...]:
    def mismatches(found: tuple[object, ...]) -> list[tuple[object, ...]]:
        # (not the counts: an element within rounding of a bound may be counted on one path only, see fused.CLOSE)
        return [(m.quantity, m.kind, m.index, m.deviation) for m in found]  # type: ignore[attr-defined]

    return (
        outcome.ok,
        mismatches(outcome.verdict.mismatches),
        mismatches(outcome.unexpected),
        sorted((kd.id, sorted(qs)) for kd, qs in outcome.explained),
        sorted(kd.id for kd in outcome.stale),
    )


def _assert_close(name: str, fused_values: np.ndarray, ref: np.ndarray, scale: np.ndarray) -> None:
    """Equal NaN/inf patterns; finite values within AGREEMENT of ``scale`` (bit for bit where it is 0; anything
    where it is not finite)."""
    f, r = np.asarray(fused_values, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert f.shape == r.shape, name
    finite = np.isfinite(r)
    assert np.array_equal(np.isfinite(f), finite), name
    assert np.array_equal(f[~finite], r[~finite], equal_nan=True), name
    with np.errstate(invalid="ignore", over="ignore"):
        # (where the bound is not finite, an indeterminate channel's, nothing is judged: its pattern alone)
        allowed = np.where(np.isfinite(scale), AGREEMENT * scale, np.inf)
        off = np.abs(f - r)[finite] > allowed[finite]
    assert not off.any(), f"{name}: {np.abs(f - r)[finite][off][:3]} beyond {allowed[finite][off][:3]}"


def assert_same_judgement(case: Case, outputs: Outputs, *, chunk: int | None = None) -> tuple[Evaluation, Evaluation]:
    """The two engines agree on ``case``: oracle, bounds, sharp bounds, and the whole judgement."""
    a, ref_outcome = _judged(case, outputs, "never")
    b, fast_outcome = _judged(case, outputs, "always", chunk)
    assert a.engine == "reference"
    assert b.engine == ("fused" if case.dtype in FUSED_DTYPES and case.x.size > 0 else "reference")
    assert _signature(fast_outcome) == _signature(ref_outcome)
    assert set(a.expected) == set(b.expected) and set(a.bound) == set(b.bound)
    assert np.array_equal(a.undetermined, b.undetermined)
    for q in a.expected:
        scale = np.asarray(a.bound[q]) if q in a.bound else np.zeros_like(a.expected[q])
        _assert_close(f"expected {q}", b.expected[q], a.expected[q], scale)
    for q in a.bound:
        _assert_close(f"bound {q}", b.bound[q], a.bound[q], np.asarray(a.bound[q]))
        _assert_close(f"sharp {q}", b.sharp[q], a.sharp[q], np.asarray(a.sharp[q]))
    # error/bound: the errors differ by AGREEMENT of the bound at most, and the bounds by AGREEMENT of themselves
    for found, other in ((ref_outcome.verdict, fast_outcome.verdict),):
        for table, fast_table in ((found.ratios, other.ratios), (found.sharp_ratios, other.sharp_ratios)):
            for q, ratio in table.items():
                assert fast_table[q] == ratio or abs(fast_table[q] - ratio) <= 3 * AGREEMENT * (1 + ratio), q
    return a, b


_SETTINGS = settings(max_examples=budget(0.25), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(case=cases(dtypes=FUSED_DTYPES))
def test_the_fused_path_judges_as_the_reference_does(case: Case) -> None:
    assert_same_judgement(case, run_symbolic(case))


@_SETTINGS
@given(case=cases(dtypes=FUSED_DTYPES, value_regimes=["exact"]))
def test_in_the_exact_regime_the_fused_path_is_the_reference_bit_for_bit(case: Case) -> None:
    ref, fast = assert_same_judgement(case, run_symbolic(case))
    for q, value in ref.expected.items():
        assert np.array_equal(fast.expected[q], value, equal_nan=True), q
    for a, b in zip(ref.statistics, fast.statistics, strict=True):
        assert np.array_equal(a, b, equal_nan=True)
    for q, bound in ref.bound.items():
        assert np.array_equal(fast.bound[q], bound, equal_nan=True), q


@_SETTINGS
@given(case=cases(dtypes=FUSED_DTYPES, value_regimes=["nonfinite"], fix_gamma=False))
def test_nan_and_inf_data_are_judged_alike(case: Case) -> None:
    assert_same_judgement(case, run_symbolic(case))


@settings(max_examples=budget(0.05), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(dtypes=FUSED_DTYPES, sizes="large", max_channels=3), chunk=st.sampled_from([None, 4096]))
def test_large_cases_are_judged_alike(case: Case, chunk: int | None) -> None:
    assert_same_judgement(case, run_symbolic(case), chunk=chunk)


@settings(max_examples=budget(0.1), deadline=None)
@given(case=cases(dtypes=["float64"]))
def test_float64_data_stay_on_the_reference_path(case: Case) -> None:
    with fused.forced("always"):
        assert evaluate(case).engine == "reference"


@_SETTINGS
@given(case=cases(dtypes=FUSED_DTYPES), spread=st.floats(0.0, 3.0), seed=st.integers(0, 2**32 - 1))
def test_the_compiled_comparison_sorts_every_element_as_numpy_does(case: Case, spread: float, seed: int) -> None:
    """MXNet's values moved by up to ``spread`` bounds from the oracle: the kernel's counts, worst ratios, their
    positions and the elements beyond each bound are numpy's on the same oracle values and bounds, exactly
    (its scan sorts most elements by the bounds' linear forms, and only the ones near a bound exactly)."""
    with fused.forced("always"):
        apparatus = evaluate(case)
        if not isinstance(apparatus, FusedEvaluation):
            return
        rng = np.random.default_rng(seed)
        actual: Outputs = {}
        for q in ("y", "dx"):
            if q in apparatus.expected:
                with np.errstate(invalid="ignore", over="ignore"):
                    moved = apparatus.expected[q] + spread * rng.uniform(-1, 1, case.shape) * apparatus.bound[q]
                    actual[q] = moved.astype(case.dtype)
        found = fused.compare(apparatus, actual)
    for q, compared in found.items():
        expected, bound, sharp = apparatus.expected[q], apparatus.bound[q], apparatus.sharp[q]
        judged = judged_elements(case, q, case.shape, apparatus.undetermined)
        mismatch, worst, worst_sharp = _compare_one(
            q, expected, actual[q], bound, output_dtypes(case)[q], judged, sharp
        )
        if compared.pattern:
            assert mismatch is not None and mismatch.kind == "nonfinite", q
            continue
        assert (compared.worst, compared.worst_sharp) == (worst, worst_sharp), q
        a = actual[q].astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            err = np.where(judged & np.isfinite(a) & np.isfinite(expected), np.abs(a - expected), 0.0)
            ratio = np.where(bound > 0, err / bound, np.where(err > 0, np.inf, 0.0))
            sharp_ratio = np.where(sharp > 0, err / sharp, np.where(err > 0, np.inf, 0.0))
        assert np.array_equal(compared.over, ratio > 1), q
        assert np.array_equal(compared.over_sharp, sharp_ratio > 1), q
        assert (compared.bad, compared.bad_sharp) == (int((ratio > 1).sum()), int((sharp_ratio > 1).sum())), q
        assert compared.worst_at == int(np.argmax(ratio)) or worst == 0, q
        assert compared.worst_sharp_at == int(np.argmax(sharp_ratio)) or worst_sharp == 0, q
        if mismatch is not None:
            assert mismatch.count == (compared.bad or compared.bad_sharp), q


@_SETTINGS
@given(case=cases(dtypes=FUSED_DTYPES))
def test_the_linear_forms_bracket_the_bounds(case: Case) -> None:
    """What the kernel's scan rests on: per element, the linear forms lie in [bound / _ABOVE, bound] for both
    bounds of y and dx (or are NaN, and the element is judged exactly)."""
    with fused.forced("always"):
        apparatus = evaluate(case)
        if not isinstance(apparatus, FusedEvaluation):
            return
        coeffs = apparatus.coefficients
        fresh, acc = apparatus.arrays(1)[:2]
    k = fused.kernels()
    row = Row(*(block(*(per_channel(case, v) for v in coeffs[:, columns(name)].T)) for name, block in BLOCKS))
    with np.errstate(invalid="ignore", over="ignore"):
        axhat = np.abs((case.x.astype(np.float64) - row.oracle.mean) * row.oracle.inv)
        ay = np.abs(apparatus.expected["y"])
        ad, af, aa = np.abs(case.dy.astype(np.float64)), np.abs(fresh), np.abs(acc)
        forms = {
            "y": (y_form(row.det_y, axhat, ay), y_form(row.prob_y, axhat, ay)),
            "dx": (dx_form(row.det_dx, axhat, ad, af, aa), dx_form(row.prob_dx, axhat, ad, af, aa)),
        }
        judged = row.oracle.judged != 0
        for q, (det_form, prob_form) in forms.items():
            if q not in apparatus.expected:
                continue
            det, prob = det_form * k.SHRINK, prob_form * k.SHRINK
            low_sharp = np.where(np.isnan(det) | np.isnan(prob), np.nan, np.minimum(det, prob))
            for low, bound in ((det, apparatus.bound[q]), (low_sharp, apparatus.sharp[q])):
                usable = judged & np.isfinite(low) & np.isfinite(bound)
                assert (low[usable] <= bound[usable]).all(), q
                assert (bound[usable] <= low[usable] * k._ABOVE).all(), q


@settings(max_examples=budget(0.5), deadline=None)
@given(
    err=st.floats(0, 1e30) | st.sampled_from([float("nan"), float("inf")]),
    low=st.floats(1e-300, 1e30),
    worst=st.floats(0, 1e6),
    frac=st.floats(0, 1),
    near=st.sampled_from([None, -(2.0**-37), -(2.0**-41), 0.0, 2.0**-41, 2.0**-37]),
)
def test_the_scan_decides_alone_only_what_holds_for_every_bound_in_the_bracket(
    err: float, low: float, worst: float, frac: float, near: float | None
) -> None:
    """_sort: unless it asks for the exact bound, its answer (beyond the bound or not; not beyond the worst
    ratio so far) holds for every bound in [low, low * _ABOVE]. ``near`` puts the error at the bracket's
    edges."""
    k = fused.kernels()
    if near is not None:
        err = low * (1 + near) if frac < 0.5 else low * k._ABOVE * (1 + near)
    over, exact = k._sort(err, low, worst)
    if exact:
        return
    bound = low + frac * (low * k._ABOVE - low)
    ratio = err / bound
    assert (ratio > 1) == over, (err, low, bound)
    assert ratio <= worst or err == 0, (err, low, bound, worst)


def _random_case(shape: tuple[int, ...], *, seed: int, scale: float, offset: float) -> Case:
    """float32 data of a given spread and offset, random gamma and beta, fix_gamma off."""
    rng = np.random.default_rng(seed)
    channels = shape[1]
    return Case(
        x=(rng.standard_normal(shape) * scale + offset).astype("float32"),
        dy=rng.standard_normal(shape).astype("float32"),
        gamma=rng.standard_normal(channels).astype("float32"),
        beta=rng.standard_normal(channels).astype("float32"),
        moving_mean=np.zeros(channels, dtype="float32"),
        moving_var=np.ones(channels, dtype="float32"),
        fix_gamma=False,
    )


def test_any_number_of_threads_gives_the_same_bits() -> None:
    case = _random_case((3, 7, 11, 13), seed=5, scale=2, offset=3)
    outputs = run_symbolic(case)
    seen = []
    for n in (1, 2, 3, 7):
        with fused.forced("always", threads=n):
            apparatus = evaluate(case)
            assert isinstance(apparatus, FusedEvaluation)
            found = fused.compare(apparatus, outputs)
            seen.append(
                (
                    [np.array(v) for v in apparatus.statistics],
                    {q: np.array(v) for q, v in {**apparatus.expected, **apparatus.bound}.items()},
                    {q: (c.worst, c.worst_at, c.worst_sharp, c.bad, c.bad_sharp) for q, c in found.items()},
                )
            )
    first = seen[0]
    for other in seen[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(first[0], other[0], strict=True))
        assert all(np.array_equal(first[1][q], other[1][q], equal_nan=True) for q in first[1])
        assert first[2] == other[2]


def test_the_fused_path_leaves_mxnets_own_results_alone() -> None:
    """numba's parallel threading layer (OpenMP) changed MXNet's sums in the same process; the fused path's
    own threads must not: MXNet's outputs for one call are the same bits before and after judging another."""
    case = _random_case((64, 4, 30, 30), seed=11, scale=1, offset=1)
    before = {q: np.array(v) for q, v in run_symbolic(case).items()}
    other = case.with_(x=(case.x * 3).astype("float32"))
    with fused.forced("always", threads=2):
        judge(other, run_symbolic(other), entry="sym", kernel="onednn", checked=["y", "dx"])
    after = run_symbolic(case)
    for q, value in before.items():
        assert np.array_equal(np.asarray(after[q]), value, equal_nan=True), q


def test_a_case_judged_on_the_fused_path_pickles_and_judges_again_the_same() -> None:
    """A fuzz worker sends its findings' cases and outcomes to the campaign through a queue: pickled. The
    fused engine's evaluation holds closures (lazy y and dx); the outcome carries none of it."""
    case = _random_case((40, 3, 30, 30), seed=2, scale=1, offset=0)
    outputs = _planted(case, run_symbolic(case), "y")
    with fused.forced("always"):
        ev = evaluate(case)
        outcome = judge(case, outputs, entry="sym", kernel="onednn", checked=list(outputs), evaluation=ev)
        assert ev.engine == "fused" and not outcome.ok
        again = pickle.loads(pickle.dumps(outcome))
    assert again.case == case
    assert _signature(judge(again.case, outputs, entry="sym", kernel="onednn", checked=list(outputs))) == _signature(
        outcome
    )


def test_threads_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_sums, "_threads", None)
    monkeypatch.setenv(fused.THREADS_ENV, "3")
    assert fused.threads() == 3
    fused.share_cores(2)  # (the user's choice wins)
    assert fused.threads() == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv(fused.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=fused.THREADS_ENV):
            fused.threads()
    monkeypatch.delenv(fused.THREADS_ENV)
    fused.share_cores(10**6)
    assert fused.threads() == 1
    with pytest.raises(ValueError, match="1 or more"):
        fused.set_threads(0)
    with pytest.raises(ValueError, match="1 or more"), fused.forced("always", threads=0):
        pass


def _planted(case: Case, outputs: Outputs, quantity: str) -> Outputs:
    """One element of ``quantity`` 0.5% off (the largest)."""
    planted = dict(outputs)
    values = np.array(outputs[quantity])
    flat = values.reshape(-1)
    i = int(np.argmax(np.abs(flat.astype(np.float64))))
    flat[i] = flat[i] * np.float64(1.005)
    planted[quantity] = values
    return planted


@pytest.mark.parametrize("quantity", ["y", "dx", "dgamma"])
@pytest.mark.parametrize("dtype", FUSED_DTYPES)
def test_a_planted_error_is_caught_alike(quantity: str, dtype: str) -> None:
    rng = np.random.default_rng(7)
    shape = (16, 3, 20, 20)
    x = (rng.standard_normal(shape) + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    pdt = "float32"
    case = Case(
        x=x,
        dy=dy,
        gamma=rng.uniform(0.5, 2, 3).astype(pdt),
        beta=rng.standard_normal(3).astype(pdt),
        moving_mean=np.zeros(3, dtype=pdt),
        moving_var=np.ones(3, dtype=pdt),
        fix_gamma=False,
    )
    outputs = _planted(case, run_symbolic(case), quantity)
    ref, fast = _judged(case, outputs, "never")[1], _judged(case, outputs, "always", chunk=1000)[1]
    assert _signature(fast) == _signature(ref)
    if dtype == "float32":  # (float16's bounds are of the size of the planted error)
        assert not fast.ok and quantity in {m.quantity for m in fast.unexpected}


def test_blocks_of_any_size_give_the_same_bits() -> None:
    case = _random_case((6, 5, 7, 3), seed=3, scale=3, offset=1)
    results = []
    for chunk in (1, 21, 100, None):
        with fused.forced("always", chunk=chunk):
            apparatus = evaluate(case)
            assert isinstance(apparatus, FusedEvaluation)
            results.append(
                (
                    apparatus.statistics,
                    {q: np.array(v) for q, v in apparatus.expected.items()},
                    {q: np.array(v) for q, v in apparatus.bound.items()},
                    {q: np.array(v) for q, v in apparatus.sharp.items()},
                )
            )
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first[0], other[0], strict=True):
            assert np.array_equal(a, b)
        for table_a, table_b in zip(first[1:], other[1:], strict=True):
            for q in table_a:
                assert np.array_equal(table_a[q], table_b[q], equal_nan=True), q


def test_memory_stays_bounded_at_a_million_per_channel_and_256_channels() -> None:
    """M = 10^6, C = 256 (2.56e8 elements, as views of one row): the fused sums allocate O(C) and one block."""
    shape = (1000, 256, 1000)
    row = np.random.default_rng(0).standard_normal(1000).astype("float16")
    x = np.broadcast_to(row, shape)
    ones = np.ones(256, dtype="float32")
    case = Case(x=x, dy=x, gamma=ones, beta=0 * ones, moving_mean=0 * ones, moving_var=ones, fix_gamma=False)
    assert case.reduction_length == 10**6
    with fused.forced("always", chunk=256 * 1000):
        small = np.broadcast_to(row[:10], (3, 256, 10))
        warm = evaluate(case.with_(x=small, dy=small))  # compiled for these arrays before measuring
        assert warm.partial_sum_factors and warm.xhat
        ev = evaluate(case)
        tracemalloc.start()
        assert ev.partial_sum_factors and ev.xhat  # every per-channel sum
        mean, var = ev.statistics
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # one block of float16 widened to float32 (256 x 1000 x 4 bytes, twice) and per-channel state, with room for
    # numba's own bookkeeping: x is 512 MB as float16, and a float64 copy of it would be 2 GB
    assert peak < 16 * 2**20, peak
    expected = float(np.mean(row.astype(np.float64)))
    assert np.allclose(mean, expected, rtol=1e-12, atol=1e-15)
    assert np.allclose(var, np.mean((row.astype(np.float64) - mean[0]) ** 2), rtol=1e-9)


def test_the_environment_chooses_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    small = Case(
        x=rng.standard_normal((4, 2, 3)).astype("float32"),
        dy=rng.standard_normal((4, 2, 3)).astype("float32"),
        gamma=np.ones(2, dtype="float32"),
        beta=np.zeros(2, dtype="float32"),
        moving_mean=np.zeros(2, dtype="float32"),
        moving_var=np.ones(2, dtype="float32"),
    )
    for value, expected in (("never", False), ("always", True), ("auto", False), ("", False)):
        monkeypatch.setenv(fused.ENV, value)
        assert (evaluate(small).engine == "fused") is expected, value
    monkeypatch.setenv(fused.ENV, "sometimes")
    with pytest.raises(ValueError, match=fused.ENV):
        evaluate(small)


def test_every_value_regime_is_covered() -> None:
    assert set(VALUE_REGIMES) >= {"exact", "nonfinite", "constant", "large", "offset"}

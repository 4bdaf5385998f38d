"""The error model's soundness, as an adversarial search: no correct kernel may exceed its deterministic bound.

The subjects are float emulations of correct BatchNorm kernels (tests/emulated.py), in two classes, each
judged against its own bound: the CPU's two-pass kernels (MXNet's native arithmetic, the sequential one
bit for bit, with sums sequential, pairwise or in 16 lanes) and the GPU's (MXNet's CUDA arithmetic with
warp-tree sums, Welford's updates in blocks or thread-strided chains merged by Chan's formula).
Hypothesis draws cases from every regime, dtype and flag, and steers (``hypothesis.target``) toward
the largest error/bound ratios, so the search climbs toward a violation instead of sampling past it.
A correct kernel beyond the deterministic bound means the model misses a term; beyond the
probabilistic bound only (an "accuracy" finding), that its sharper line is crossed by a correct
kernel, which test_the_probabilistic_bound_is_rarely_crossed_by_a_correct_kernel measures.

Budgets scale with the active profile (``settings.default.max_examples``: 400 in dev and ci, about
21,500 emulated cases in all, about 2 minutes on one core when every search passes; 20,000 in nightly,
over a million). ``pytest -s`` prints the counts and the probabilistic-bound tables.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Iterable, Sequence

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from bnprops.judging.checks import judge as check_outcome
from bnprops.judging.comparator import Mismatch, Verdict, compare
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.evaluation import Evaluation, evaluate
from bnprops.model.oracle import eps_as_applied, momentum_as_applied, output_dtypes, per_channel, reference, statistics
from bnprops.mx.backends import runner_for
from bnprops.search.strategies import VALUE_REGIMES, cases, sibling
from tests.emulated import (
    LANES,
    SUMMATIONS,
    VARIANCES,
    VARIANTS,
    WELFORD_BLOCK,
    channel_sums,
    emulate,
    rows,
    unrows,
    welford,
    welford_case,
)
from tests.planted import numpy_batchnorm

#: Examples per property in the active profile: 400 in dev and ci, 20,000 in nightly.
PROFILE_EXAMPLES = settings.default.max_examples
#: Examples of each search, as multiples of PROFILE_EXAMPLES. In dev and ci: 400 cases of one drawn
#: kernel per class (800 emulated cases); 1,400 (two-pass) and 400 (gpu) examples of CASES_PER_EXAMPLE
#: related cases under every kernel of the class (3 and 4: 17,400); 400 cases under every kernel per class
#: for the rate (2,800): 21,000 emulated cases, plus the large reductions and the sanity checks; x 50 in
#: nightly: 1,050,000. Judging costs more than emulating, and drawing a case more than judging it, so the
#: bulk runs every kernel on each case (one evaluation) and on siblings of it.
ONE_ORDER_PER_CASE = 1
EVERY_ORDER_PER_CASE = 2.5
CASES_PER_EXAMPLE = 3
RATE_SAMPLE = 1
#: How the bulk is shared: MXNet's CPU kernel is two-pass; the GPU class (MXNet's CUDA kernel, and Welford's
#: updates with Chan's merges that cuDNN may use) is judged against the GPU bound.
SHARE = {"two-pass": 1.4, "gpu": 0.4}
#: Cases of the large-reduction search per variance algorithm (10^3 to 10^6 elements per channel),
#: not scaled: each takes up to a second.
LARGE_EXAMPLES = 8

#: What each test emulated, for the printed summary (pytest -s).
EMULATED: collections.Counter[str] = collections.Counter()
#: Mismatch kinds that mean a correct kernel left its deterministic bound (anything but "accuracy").
UNSOUND_KINDS = ("value", "nonfinite", "missing", "shape")


def search(max_examples: int, *, targeted: bool = True, shrink: bool = True) -> settings:
    """The settings of one search: no database, no deadline, derandomised when CI is set.

    ``shrink=False`` for the costly searches: they report the first violation as found (the
    one-order search shrinks its own), instead of spending minutes minimising it.
    """
    phases = [Phase.explicit, Phase.generate] + ([Phase.target] if targeted else [])
    phases += [Phase.shrink, Phase.explain] if shrink else []
    return settings(
        max_examples=max(1, max_examples),
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=bool(os.environ.get("CI")),
        phases=phases,
    )


#: The kernel classes and the emulated kernels in each, as (summation, variance, gpu) for emulate(); each class
#: is judged against its own bound (gpu_reductions.REDUCTIONS): the CPU's two-pass sums in any order, and the
#: GPU's: MXNet's CUDA kernel (warp trees, the count's rounded reciprocal, float16's saved mean), Welford's
#: updates in blocks or thread-strided chains merged by Chan's formula (what cuDNN may do), with any sums.
KERNELS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "two-pass": tuple((s, "two-pass", False) for s in SUMMATIONS),
    "gpu": (
        ("warp-tree", "two-pass", True),
        ("warp-tree", "welford-strided", True),
        ("pairwise", "welford", True),
        ("sequential", "welford", False),
    ),
}
REDUCTION_OF_CLASS = {"two-pass": "cpu", "gpu": "gpu"}
KERNEL_CLASSES = list(KERNELS)


def regimes_for(kernels: str) -> list[str]:
    """Every value regime, but data with inf for the GPU class: Welford's update turns an infinite mean into NaN
    (x - inf = -inf, then inf + -inf), a different NaN/inf pattern that is no question of rounding."""
    return [r for r in VALUE_REGIMES if not (kernels == "gpu" and r == "nonfinite")]


def kernel_name(kernel: tuple[str, str, bool]) -> str:
    summation, variance, gpu = kernel
    return f"{summation}/{variance}" + (" (CUDA arithmetic)" if gpu else "")


def unsound(verdict: Verdict) -> list[Mismatch]:
    return [m for m in verdict.mismatches if m.kind in UNSOUND_KINDS]


def _log_ratio(ratio: float) -> float:
    if ratio <= 0 or math.isnan(ratio):
        return -30.0
    return min(30.0, max(-30.0, math.log10(ratio)))


def steer(verdicts: Iterable[Verdict]) -> None:
    """Point Hypothesis at the largest error/bound ratios: the worst overall, and per quantity."""
    worst: dict[str, float] = {}
    worst_sharp = 0.0
    for verdict in verdicts:
        for q, r in verdict.ratios.items():
            worst[q] = max(worst.get(q, 0.0), r)
        sharp = getattr(verdict, "sharp_ratios", {}) or {}
        worst_sharp = max([worst_sharp, *sharp.values()])
    hypothesis.target(_log_ratio(max(worst.values(), default=0.0)), label="worst error/bound")
    hypothesis.target(_log_ratio(worst_sharp), label="worst error/probabilistic bound")
    for q, r in worst.items():
        hypothesis.target(_log_ratio(r), label=f"{q} error/bound")


def judge(
    case: Case, summation: str, variance: str, *, test: str, gpu: bool = False, evaluation: Evaluation | None = None
) -> Verdict:
    """The emulated kernel's outputs against ``evaluation``'s bounds (by default the CPU class's)."""
    EMULATED[test] += 1
    actual = emulate(case, summation=summation, variance=variance, gpu=gpu)
    return compare(case, actual, evaluation=evaluation or evaluate(case))


def judge_class(case: Case, kernels: str, *, test: str) -> dict[tuple[str, str, bool], Verdict]:
    """Every kernel of the class on ``case``, against the class's bound (one evaluation for all)."""
    ev = evaluate(case, reduction=REDUCTION_OF_CLASS[kernels])
    return {k: judge(case, k[0], k[1], test=test, gpu=k[2], evaluation=ev) for k in KERNELS[kernels]}


def judge_kernel(case: Case, kernels: str, kernel: tuple[str, str, bool], *, test: str) -> Verdict:
    summation, variance, gpu = kernel
    ev = evaluate(case, reduction=REDUCTION_OF_CLASS[kernels])
    return judge(case, summation, variance, test=test, gpu=gpu, evaluation=ev)


def violation_report(case: Case, failures: Sequence[tuple[str, str, list[Mismatch]]]) -> str:
    lines = [f"A correct kernel exceeds the deterministic error bound on {case.describe()}"]
    for summation, variance, mismatches in failures:
        lines.append(f"  kernel: summation={summation}, variance={variance}")
        lines += ["    " + line for m in mismatches for line in m.describe().splitlines()]
    lines.append("The case (bnprops.model.case.Case.from_json):")
    lines.append(case.to_json())
    return "\n".join(lines)


# The searches.

#: The CPU bound is for kernels that form each statistic as a sum (two-pass: mean = sum/M, then the sum of
#: squared deviations from it), as MXNet's CPU kernels do (batch_norm.cc; the sequential two-pass emulation is
#: MXNet's native kernel bit for bit, test below). Welford's streaming updates round the running means at every
#: step, so the variance's error is first order in them (two-pass cancels it, sum(x - mean) = 0): they are in
#: the GPU class, whose bound has that term (test_the_cpu_bound_covers_two_pass_kernels_only shows the split).


@pytest.mark.parametrize("kernels", KERNEL_CLASSES)
def test_no_correct_kernel_exceeds_the_deterministic_bound(kernels: str) -> None:
    """Cases x kernels: the kernel is drawn too, so that Hypothesis can learn which order is worst."""

    @search(ONE_ORDER_PER_CASE * PROFILE_EXAMPLES)
    @given(case=cases(value_regimes=regimes_for(kernels)), kernel=st.sampled_from(KERNELS[kernels]))
    def run(case: Case, kernel: tuple[str, str, bool]) -> None:
        verdict = judge_kernel(case, kernels, kernel, test="one order per case")
        steer([verdict])
        bad = unsound(verdict)
        assert not bad, violation_report(case, [(kernel_name(kernel), kernels, bad)])

    run()


def test_the_cpu_bound_covers_two_pass_kernels_only() -> None:
    """Three float32 values near 1000 (found by a seeded search): Welford's running means, each rounded, move its
    M2 first order (2 rho C per rounding); two-pass cancels that (sum(x - mean) = 0). So Welford's kernel crosses
    the CPU bound by far and stays within the GPU class's, and every two-pass order stays within both."""
    case = welford_case()
    cpu, gpu = evaluate(case, reduction="cpu"), evaluate(case, reduction="gpu")
    welford_cpu = judge(case, "sequential", "welford", test="sanity", evaluation=cpu)
    assert {m.quantity for m in unsound(welford_cpu)} >= {"moving_var", "invstd"}, welford_cpu.message(label="welford")
    assert max(welford_cpu.ratios.values()) > 10
    assert not unsound(judge(case, "sequential", "welford", test="sanity", evaluation=gpu))
    for summation in SUMMATIONS:
        for ev in (cpu, gpu):
            verdict = judge(case, summation, "two-pass", test="sanity", evaluation=ev)
            assert not unsound(verdict), verdict.message(label=f"{summation}/two-pass on {ev.reduction}")


def test_the_gpu_bound_is_never_sharper_than_the_cpu_bound() -> None:
    """The GPU class adds terms and drops exactness: a kernel the CPU bound passes, the GPU bound passes too."""
    rng = np.random.default_rng(5)
    for m, offset in ((10, 0.0), (1000, 100.0), (4096, 0.0)):
        x = (offset + rng.standard_normal((m, 2))).astype(np.float32)
        case = Case(
            x=x,
            dy=rng.standard_normal(x.shape).astype(np.float32),
            gamma=np.full(2, 1.5, np.float32),
            beta=np.zeros(2, np.float32),
            moving_mean=np.zeros(2, np.float32),
            moving_var=np.ones(2, np.float32),
            fix_gamma=False,
            output_mean_var=True,
        )
        cpu, gpu = evaluate(case, "reference", reduction="cpu"), evaluate(case, reduction="gpu")
        for model in ("bound", "sharp"):
            for q, b in getattr(cpu, model).items():
                assert np.all(getattr(gpu, model)[q] >= b), (m, model, q)


@st.composite
def related_cases(draw: st.DrawFn, kernels: str) -> list[Case]:
    """A drawn case and CASES_PER_EXAMPLE - 1 siblings: its signature and regimes, other values."""
    first = draw(cases(value_regimes=regimes_for(kernels)))
    seed = draw(st.integers(0, 2**32 - 1))
    return [first, *(sibling(first, seed + i) for i in range(1, CASES_PER_EXAMPLE))]


@pytest.mark.parametrize("kernels", KERNEL_CLASSES)
def test_every_summation_order_stays_within_the_deterministic_bound_on_the_same_case(kernels: str) -> None:
    """The bulk of the search: every kernel of the class on each case, and on siblings of it (a case costs more
    to draw than to emulate, so each drawn case brings related ones, from a drawn seed). Not shrunk: it reports
    the first violation as found, and the one-order search above shrinks its own."""

    @search(round(EVERY_ORDER_PER_CASE * SHARE[kernels] * PROFILE_EXAMPLES), shrink=False)
    @given(group=related_cases(kernels))
    def run(group: list[Case]) -> None:
        verdicts = {(c, k): v for c in group for k, v in judge_class(c, kernels, test="every order per case").items()}
        steer(verdicts.values())
        for case in group:
            failures = [
                (kernel_name(k), kernels, bad) for k in KERNELS[kernels] if (bad := unsound(verdicts[(case, k)]))
            ]
            assert not failures, violation_report(case, failures)

    run()


#: Emulated cases with an accuracy finding (beyond the probabilistic bound, within the deterministic one)
#: on large reductions, by kernel class, kernel, dtype and regime.
LARGE_ACCURACY: collections.Counter[tuple[str, str, str, str]] = collections.Counter()


@pytest.mark.parametrize("kernels", KERNEL_CLASSES)
def test_no_correct_kernel_exceeds_the_deterministic_bound_on_large_reductions(kernels: str) -> None:
    """Long sums are where rounding errors pile up (and where a sequential sum drifts on offset data)."""

    @search(LARGE_EXAMPLES, shrink=False)
    @given(case=cases(sizes="large", value_regimes=regimes_for(kernels)))
    def run(case: Case) -> None:
        verdicts = {kernel_name(k): v for k, v in judge_class(case, kernels, test="large reductions").items()}
        steer(verdicts.values())
        for name, verdict in verdicts.items():
            if any(m.kind == "accuracy" for m in verdict.mismatches):
                LARGE_ACCURACY[(kernels, name, case.dtype, case.regime.partition("/")[0])] += 1
        failures = [(name, kernels, bad) for name, v in verdicts.items() if (bad := unsound(v))]
        assert not failures, violation_report(case, failures)

    run()
    # Counted, not asserted: whether a correct kernel may cross the probabilistic bound is
    # test_the_probabilistic_bound_is_rarely_crossed_by_a_correct_kernel's question.
    found = {k: n for k, n in LARGE_ACCURACY.items() if k[0] == kernels}
    print(f"\nlarge reductions, kernels={kernels}: emulated cases with an accuracy finding (targeted search)")
    for (_, name, dtype, regime), n in sorted(found.items()):
        print(f"  {name:<40}{dtype:<9}{regime:<13}{n:>5}")
    if not found:
        print("  none")


@pytest.mark.parametrize("kernels", KERNEL_CLASSES)
def test_the_probabilistic_bound_is_rarely_crossed_by_a_correct_kernel(kernels: str) -> None:
    """The share of correct-kernel results beyond the probabilistic bound, by summation, dtype and regime.

    Not targeted: a rate needs the cases as drawn, not the worst ones. Every summation runs on every case.
    """
    judged: collections.Counter[tuple[str, str, str]] = collections.Counter()
    crossed: collections.Counter[tuple[str, str, str]] = collections.Counter()
    quantities: collections.Counter[str] = collections.Counter()

    names = [kernel_name(k) for k in KERNELS[kernels]]

    @search(RATE_SAMPLE * PROFILE_EXAMPLES, targeted=False)
    @given(case=cases(value_regimes=regimes_for(kernels)))
    def run(case: Case) -> None:
        verdicts = judge_class(case, kernels, test="probabilistic rate")
        for kernel, name in zip(KERNELS[kernels], names, strict=True):
            verdict = verdicts[kernel]
            key = (case.dtype, case.regime.partition("/")[0], name)
            judged[key] += 1
            beyond = [m for m in verdict.mismatches if m.kind in ("accuracy", "value")]
            if beyond:
                crossed[key] += 1
                quantities.update(m.quantity for m in beyond)

    run()
    total, over = sum(judged.values()), sum(crossed.values())
    rate = over / max(total, 1)
    print(f"\nprobabilistic bound, kernels={kernels}: {over} of {total} emulated cases beyond it ({rate:.3%})")
    print("  kernels: " + "; ".join(f"{i}: {n}" for i, n in enumerate(names)))
    print(f"  {'dtype':<9}{'regime':<13}" + "".join(f"{i:>10}" for i in range(len(names))) + "   (beyond / cases)")
    for dtype, regime in sorted({k[:2] for k in judged}):
        cells = "".join(f"{f'{crossed[(dtype, regime, n)]}/{judged[(dtype, regime, n)]}':>10}" for n in names)
        print(f"  {dtype:<9}{regime:<13}{cells}")
    if quantities:
        print("  quantities beyond it: " + ", ".join(f"{q} {n}" for q, n in quantities.most_common()))
    # The probabilistic bound holds with probability 1 - 1e-12 per quantity *if* rounding errors have
    # mean zero given the past (bnprops/model/error_model.py), so a correct kernel's measured rate must be 0 here.
    # Where that model fails is the drift it exists to show: a sequential (or 16-lane) float sum of a
    # channel with a common offset rounds the same way binade after binade, and on large reductions
    # (test above, counted not asserted) lands far beyond the bound; MXNet's kernels do exactly that
    # (known deviation sequential-sum-drift, accuracy findings only).
    assert rate == 0, f"{over} of {total} emulated cases ({rate:.3%}) crossed the probabilistic bound"


@pytest.mark.parametrize(
    ("x", "moving_var", "correct"),
    [
        # exact y = 65521.0009: rounds to inf, but a correct kernel's 65520 - 17 rounds to 65504
        (30160.0, 0.21188569068908691, 65504.0),
        # exact y = 65518.9987: rounds to 65504, but a correct kernel's 65519 + 11 rounds to inf
        (36384.0, 0.308380126953125, np.inf),
    ],
)
def test_a_correct_float16_result_at_the_overflow_threshold_is_judged_by_its_bound(
    x: float, moving_var: float, correct: float
) -> None:
    # Found by a wider search than bnprops.search.strategies draws: where the exact value lies within its
    # bound (480 here) of float16's overflow threshold 65520, a correct kernel may return the largest
    # float16 or inf, whichever side its own rounding lands on. MXNet returns 65504 for the first case.
    case = Case(
        x=np.array([[x]], np.float16),
        dy=np.ones((1, 1), np.float16),
        gamma=np.ones(1, np.float32),
        beta=np.zeros(1, np.float32),
        moving_mean=np.zeros(1, np.float32),
        moving_var=np.array([moving_var], np.float32),
        eps=0.0,
        fix_gamma=False,
        is_train=False,
        grad_req=("null", "null", "write"),
    )
    for summation, variance in VARIANTS:
        out = emulate(case, summation=summation, variance=variance)
        assert out["y"][0, 0] == np.float16(correct)
        verdict = compare(case, out)
        assert not unsound(verdict), verdict.message(label="a correct float16 kernel")


# The emulations are what they claim to be.


def _python_pairwise(values: list[float], dtype: type) -> float:
    if len(values) == 1:
        return dtype(values[0])
    half = len(values) // 2
    return dtype(_python_pairwise(values[:half], dtype) + _python_pairwise(values[half:], dtype))


@pytest.mark.parametrize("m", [1, 2, 3, 15, 16, 17, 100, 257])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_summation_orders_are_the_ones_they_name(m: int, dtype: type) -> None:
    rng = np.random.default_rng(m)
    values = (rng.standard_normal((3, m)) * 10 ** rng.uniform(-4, 4, (3, m)) + 1e3).astype(dtype)
    for c, row in enumerate(values):
        sequential = dtype(0)
        for v in row:
            sequential = dtype(sequential + v)
        assert channel_sums(values, "sequential")[c] == sequential
        padded = list(row) + [dtype(0)] * ((1 << (m - 1).bit_length()) - m)
        assert channel_sums(values, "pairwise")[c] == _python_pairwise(padded, dtype)
        lanes = [dtype(0)] * LANES
        for i, v in enumerate(row):
            lanes[i % LANES] = dtype(lanes[i % LANES] + v)
        blocked = lanes[0]
        for lane in lanes[1:]:
            blocked = dtype(blocked + lane)
        assert channel_sums(values, "blocked16")[c] == blocked
    # the three orders are different computations (so the searches run three kernels, not one)
    if m >= 100 and dtype is np.float32:
        sums = [channel_sums(values, s) for s in SUMMATIONS]
        assert not all(np.array_equal(sums[0], s) for s in sums[1:])


@pytest.mark.parametrize("m", [1, 2, 7, WELFORD_BLOCK, WELFORD_BLOCK + 1, 3 * WELFORD_BLOCK + 5])
def test_welford_gives_the_mean_and_the_centred_sum_of_squares(m: int) -> None:
    rng = np.random.default_rng(m)
    values = rng.standard_normal((4, m)) * 3 + 5
    values[1] = 2.5  # a constant row: its M2 is exactly 0
    mean, m2 = welford(values)
    assert np.allclose(mean, values.mean(axis=1), rtol=1e-13)
    assert np.allclose(m2, ((values - values.mean(axis=1, keepdims=True)) ** 2).sum(axis=1), rtol=1e-11, atol=1e-12)
    assert m2[1] == 0 and mean[1] == 2.5
    # Sequential updates, element by element, as a scalar loop writes them (one block only).
    if m <= WELFORD_BLOCK:
        mu, s = 0.0, 0.0
        for n, v in enumerate(values[0], start=1):
            delta = v - mu
            mu += delta / n
            s += delta * (v - mu)
        assert (mean[0], m2[0]) == (mu, s)


@pytest.mark.parametrize("shape_axis", [((6,), 0), ((2, 3), 1), ((2, 3), -2), ((2, 3, 4, 5), 2), ((1, 4, 1, 2, 3), -1)])
def test_rows_are_one_channel_each_and_unrows_undoes_them(shape_axis: tuple[tuple[int, ...], int]) -> None:
    shape, axis = shape_axis
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    case = Case(
        x=x,
        dy=x,
        gamma=np.ones(shape[axis]),
        beta=np.zeros(shape[axis]),
        moving_mean=np.zeros(shape[axis]),
        moving_var=np.ones(shape[axis]),
        axis=axis,
    )
    r = rows(case, x)
    assert r.shape == (case.channels, case.reduction_length)
    for c in range(case.channels):
        # in C order, the order in which MXNet's ForEachFast visits a channel's elements
        assert np.array_equal(r[c], np.take(x, c, axis=axis).ravel())
    assert np.array_equal(unrows(case, r), x)


def _scalar_kernel(case: Case, *, variance: str) -> Outputs:
    """MXNet's native kernel as batch_norm.cc writes it: one channel at a time, one element at a time,
    sequential sums, numpy scalars rounding each operation (half_t results to float16). Training with
    batch statistics or the moving ones; grad_req 'write'."""
    half = case.dtype == "float16"
    acc = np.float64 if case.dtype == "float64" else np.float32

    def h(v: float) -> object:  # a half_t result (where float16 holds it), else AccReal
        if not half:
            return acc(v)
        r = np.float16(v)
        return np.float32(r) if np.isfinite(r) else np.float32(v)

    eps = eps_as_applied(case)
    m = acc(case.reduction_length)
    mom = acc(momentum_as_applied(case)[0])
    out: dict[str, list[float]] = {q: [] for q in QUANTITIES}
    y = np.zeros(case.shape, np.float64)
    dx = np.zeros(case.shape, np.float64)
    for c in range(case.channels):
        xs = [acc(v) for v in np.take(case.x, c, axis=case.channel_axis).ravel()]
        dys = [acc(v) for v in np.take(case.dy, c, axis=case.channel_axis).ravel()]
        w = acc(1) if case.fix_gamma else acc(case.gamma[c])
        b = acc(case.beta[c])
        if case.uses_batch_stats:
            if variance == "two-pass":
                mean = acc(0)
                for v in xs:
                    mean = acc(mean + v)
                mean = acc(mean / m)
                ssq = acc(0)
                for v in xs:
                    ssq = acc(ssq + acc(v - mean) * acc(v - mean))
            else:
                n, mean, ssq = acc(0), acc(0), acc(0)
                for v in xs:
                    n = acc(n + acc(1))
                    delta = acc(v - mean)
                    mean = acc(mean + acc(delta / n))
                    ssq = acc(ssq + acc(delta * acc(v - mean)))
            var = acc(ssq / m)
        else:
            mean, var = acc(case.moving_mean[c]), acc(case.moving_var[c])
        normaliser = acc(var + acc(eps))
        if half:
            candidate = np.float16(var + np.float32(np.float16(np.float32(eps))))
            if np.isfinite(candidate) and abs(candidate) >= np.finfo(np.float16).tiny:
                normaliser = np.float32(candidate)
        invstd = acc(1.0 / np.float64(np.sqrt(normaliser)))
        ys, dotp, sum_dy = [], acc(0), acc(0)
        for v, d in zip(xs, dys, strict=True):
            xhat = h(h(v - mean) * invstd)
            ys.append(h(xhat + b) if case.fix_gamma else h(h(xhat * w) + b))
            sum_dy = acc(sum_dy + d)
            dotp = acc(dotp + h(h(v - mean) * d))
        iw = acc(invstd * w)
        if case.uses_batch_stats:
            k = acc(acc(acc(dotp * invstd) * invstd) / m)
            grad_mean = acc(sum_dy / m)
            dxs = [h(h(h(d - grad_mean) - h(h(v - mean) * k)) * iw) for v, d in zip(xs, dys, strict=True)]
            recovered = acc(1.0 / np.float64(acc(invstd * invstd)) - eps)
            rest = acc(acc(1) - mom)
            out["moving_mean"].append(acc(acc(acc(case.moving_mean[c]) * mom) + acc(mean * rest)))
            out["moving_var"].append(acc(acc(acc(case.moving_var[c]) * mom) + acc(recovered * rest)))
        else:
            dxs = [h(d * iw) for d in dys]
            out["moving_mean"].append(case.moving_mean[c])
            out["moving_var"].append(case.moving_var[c])
        index = [slice(None)] * case.x.ndim
        index[case.channel_axis] = c
        y[tuple(index)] = np.asarray(ys, np.float64).reshape(y[tuple(index)].shape)
        dx[tuple(index)] = np.asarray(dxs, np.float64).reshape(dx[tuple(index)].shape)
        out["dgamma"].append(acc(0) if case.fix_gamma else acc(dotp * invstd))
        out["dbeta"].append(sum_dy)
        out["mean"].append(mean)
        out["invstd"].append(invstd)
    dtypes = output_dtypes(case)
    result = {q: np.asarray(out[q], np.float64).astype(dtypes[q]) for q in ("dgamma", "dbeta", "moving_mean")}
    result["moving_var"] = np.asarray(out["moving_var"], np.float64).astype(dtypes["moving_var"])
    result["y"], result["dx"] = y.astype(case.dtype), dx.astype(case.dtype)
    if case.output_mean_var:
        result["mean"] = np.asarray(out["mean"], np.float64).astype(dtypes["mean"])
        result["invstd"] = np.asarray(out["invstd"], np.float64).astype(dtypes["invstd"])
    return result


@settings(search(60, targeted=False), phases=[Phase.generate])
@given(
    case=cases(max_elements=40, value_regimes=["ordinary", "offset", "tiny_spread", "constant", "large"]),
    variance=st.sampled_from(VARIANCES),
)
def test_the_sequential_emulation_is_a_scalar_loop_like_the_native_kernel_bit_for_bit(
    case: Case, variance: str
) -> None:
    # Below float32's smallest normal eps the kernel recovers its variance as -eps where the emulation, a correct
    # kernel, recovers 0 (the departure _where_the_emulation_departs_from_mxnet documents).
    assume(not 0 < eps_as_applied(case) < np.finfo(np.float32).tiny)
    EMULATED["sanity"] += 1
    with np.errstate(all="ignore"):
        expected = _scalar_kernel(case, variance=variance)
        actual = emulate(
            case.with_(grad_req=("write",) * 3, prior_dx=None, prior_dgamma=None, prior_dbeta=None),
            summation="sequential",
            variance=variance,
        )
    for q, value in expected.items():
        assert actual[q].dtype == value.dtype, q
        assert np.array_equal(actual[q], value, equal_nan=True), (q, actual[q], value)


def _where_the_emulation_departs_from_mxnet(case: Case, actual: Outputs) -> bool:
    """Where MXNet's native kernel is known to deviate (bnprops/judging/known_deviations.py), where invstd is
    indeterminate, where eps is below float32's smallest normal (MXNet's recovered variance is then
    -eps, and float16's DType(eps) underflows), or where float16's var + eps is no normal float16 (a
    known deviation, but one that may stay within the bound): the emulated *correct* kernel differs
    there on purpose."""
    eps = eps_as_applied(case)
    if 0 < eps < np.finfo(np.float32).tiny:
        return True
    if case.dtype == "float16":
        # The correct kernel rounds var + eps to float16 only within float16's normal range (with a
        # margin: the kernel's variance is not the oracle's to the last bit).
        normaliser = statistics(case)[1] + eps
        if np.any(normaliser < 1.01 * float(np.finfo(np.float16).tiny)) or np.any(normaliser > 65000):
            return True
    if evaluate(case).undetermined.any():
        return True
    with np.errstate(all="ignore"):
        return bool(check_outcome(case, actual, entry="sym", kernel="native", checked=()).allowed)


@settings(search(100, targeted=False))
@given(case=cases())
def test_the_sequential_two_pass_emulation_is_mxnets_native_kernel_bit_for_bit(case: Case) -> None:
    # The native kernel for every dtype: in this process for float16 and float64, in bnprops's worker
    # process (MXNET_MKLDNN_ENABLED=0) for float32, unless this process runs the native backend itself.
    actual = runner_for("sym", "native")(case)
    hypothesis.assume(not _where_the_emulation_departs_from_mxnet(case, actual))
    EMULATED["sanity"] += 1
    emulated = emulate(case, summation="sequential", variance="two-pass")
    # The buffers of 'null' requests (null_dx, ...) are not results: bnprops/judging/invariants.py judges them.
    computed = {q: value for q, value in actual.items() if q in QUANTITIES}
    assert set(computed) == set(emulated)
    for q, value in computed.items():
        assert emulated[q].dtype == value.dtype, q
        assert np.array_equal(emulated[q], value, equal_nan=True), (q, emulated[q], value)


def _term_scales(case: Case) -> dict[str, float]:
    """Per quantity, the magnitude of the terms it is formed from (where it cancels, its own is no scale)."""
    mean, var = statistics(case)
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    with np.errstate(all="ignore"):
        invstd = 1 / np.sqrt(var + eps_as_applied(case))
        xhat = np.abs((x - per_channel(case, mean)) * per_channel(case, invstd))
        scaled = np.abs(per_channel(case, g * invstd)) * np.abs(dy) * (1 + xhat * np.max(xhat, initial=0.0))
        scales = {
            "dx": np.max(scaled, initial=0.0),
            "dgamma": np.max(np.abs(dy) * xhat, initial=0.0) * case.reduction_length,
            "dbeta": np.max(np.abs(dy), initial=0.0) * case.reduction_length,
            "y": np.max(np.abs(per_channel(case, g)) * xhat, initial=0.0) + np.max(np.abs(case.beta), initial=0.0),
            "moving_var": float(np.max(np.abs(case.moving_var), initial=0.0) + np.max(var, initial=0.0)),
        }
    for target, prior in (("dx", case.prior_dx), ("dgamma", case.prior_dgamma), ("dbeta", case.prior_dbeta)):
        if prior is not None:
            scales[target] += float(np.max(np.abs(prior), initial=0.0))
    return {q: float(v) for q, v in scales.items()}


def _close(case: Case, actual: Outputs, expected: Outputs, *, rtol: float) -> None:
    assert set(actual) == set(expected)
    scales = _term_scales(case)
    for q, value in expected.items():
        a = np.asarray(actual[q], np.float64)
        e = np.asarray(value, np.float64)
        assert a.shape == e.shape, q
        scale = max(float(np.max(np.abs(e), initial=0.0)), scales.get(q, 0.0), 1e-300)
        assert np.allclose(a, e, rtol=rtol, atol=rtol * scale, equal_nan=True), (q, a, e)


# Well-conditioned cases: an ordinary spread, eps no smaller than 1e-5, a learnable gamma.
_ordinary = {"value_regimes": ["ordinary"], "eps": st.sampled_from([1e-5, 1e-3, 0.1])}


@settings(search(100, targeted=False))
@given(case=cases(dtypes=["float64"], **_ordinary), variant=st.sampled_from(VARIANTS))  # type: ignore[arg-type]
def test_each_kernel_matches_the_float64_oracle_on_float64_data(case: Case, variant: tuple[str, str]) -> None:
    EMULATED["sanity"] += 1
    summation, variance = variant
    actual = emulate(case, summation=summation, variance=variance)
    expected = reference(case)
    dtypes = output_dtypes(case)
    assert all(actual[q].dtype == np.dtype(dtypes[q]) for q in actual)
    _close(case, actual, expected, rtol=1e-9)


@settings(search(150, targeted=False))
@given(case=cases(**_ordinary), variant=st.sampled_from(VARIANTS))  # type: ignore[arg-type]
def test_each_kernel_matches_the_planted_numpy_subject(case: Case, variant: tuple[str, str]) -> None:
    EMULATED["sanity"] += 1
    summation, variance = variant
    actual = emulate(case, summation=summation, variance=variance)
    expected = numpy_batchnorm(case)
    for q in expected:
        assert actual[q].dtype == expected[q].dtype, q
    # What a correct kernel gets exactly, both get bit for bit.
    exact = ["gamma", "forward_moving_mean", "forward_moving_var"]
    exact += [] if case.uses_batch_stats else ["moving_mean", "moving_var"]
    exact += ["dgamma"] if case.fix_gamma and case.request("gamma") == "write" else []
    for q in exact:
        assert np.array_equal(actual[q], expected[q]), q
    _close(case, actual, expected, rtol={"float16": 3e-2, "float32": 1e-3, "float64": 1e-9}[case.dtype])


def test_a_float16_kernel_rounds_its_intermediates_and_a_float32_accumulation_does_not() -> None:
    x = np.array([[0.1], [0.2], [0.3], [0.7]], np.float16)
    case = Case(
        x=x,
        dy=np.array([[1.0], [-0.5], [0.25], [0.125]], np.float16),
        gamma=np.full(1, 1.5, np.float32),
        beta=np.full(1, 0.1, np.float32),
        moving_mean=np.zeros(1, np.float32),
        moving_var=np.ones(1, np.float32),
        fix_gamma=False,
        output_mean_var=True,
    )
    out = emulate(case, summation="sequential", variance="two-pass")
    assert out["y"].dtype == np.float16 and out["dgamma"].dtype == np.float32 and out["mean"].dtype == np.float32
    # the mean is a float32 sum divided in float32, not a float16 one
    total = np.float32(0)
    for v in x.ravel():
        total = np.float32(total + np.float32(v))
    assert out["mean"][0] == np.float32(total / np.float32(4))
    # y differs from a kernel that keeps x - mean and xhat in float32 (numpy_batchnorm) by float16 roundings only
    planted = numpy_batchnorm(case)
    assert np.allclose(out["y"].astype(np.float64), planted["y"].astype(np.float64), rtol=3e-3)


def test_a_correct_float16_kernel_keeps_what_float16_would_overflow() -> None:
    # Inference with a tiny moving variance: xhat = x * 1e4 overflows float16 where x > 6.5 (a known
    # deviation of MXNet's); the correct kernel keeps xhat in float32 and y = xhat * 1e-3 fits.
    case = Case(
        x=np.array([[10.0], [-20.0]], np.float16),
        dy=np.ones((2, 1), np.float16),
        gamma=np.full(1, 1e-3, np.float32),
        beta=np.zeros(1, np.float32),
        moving_mean=np.zeros(1, np.float32),
        moving_var=np.full(1, 1e-8, np.float32),
        eps=0.0,
        fix_gamma=False,
        is_train=False,
    )
    for summation, variance in VARIANTS:
        verdict = compare(case, emulate(case, summation=summation, variance=variance))
        assert np.all(np.isfinite(emulate(case, summation=summation, variance=variance)["y"]))
        assert not unsound(verdict), verdict.message(label="emulated")


def test_zz_print_the_number_of_emulated_cases() -> None:
    """Prints (pytest -s) how many emulated cases this module judged, per search; runs last by name."""
    print("\nemulated cases judged: " + ", ".join(f"{k} {n}" for k, n in EMULATED.items()))
    print(f"total emulated cases: {sum(EMULATED.values())} (profile examples per property: {PROFILE_EXAMPLES})")


@pytest.mark.parametrize(("value", "m"), [(0.1, 1000), (1.1, 3000)])
def test_a_constant_channel_whose_sum_is_inexact_stays_within_the_deterministic_bound(value: float, m: int) -> None:
    """xhat is 0 there, but every x - mean the kernel forms is the mean's error: dotp = -shift sum(dy), rounded.
    The products' and the dot sum's roundings are on |dy| (|xhat| + shift) (found deriving BatchNorm_v1's terms:
    dgamma was 1e31 times a bound taken on |dy xhat| alone, for MXNet and its bit-for-bit emulation alike)."""
    x = np.full((m, 1), value, np.float32)
    case = Case(
        x=x,
        dy=np.linspace(-1, 1, m).astype(np.float32).reshape(x.shape),
        gamma=np.full(1, 1.5, np.float32),
        beta=np.full(1, 0.25, np.float32),
        moving_mean=np.zeros(1, np.float32),
        moving_var=np.ones(1, np.float32),
        fix_gamma=False,
    )
    for summation in SUMMATIONS:
        verdict = judge(case, summation, "two-pass", test="constant channels")
        assert not unsound(verdict), violation_report(case, [(summation, "two-pass", unsound(verdict))])

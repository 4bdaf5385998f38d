"""SyncBatchNorm (mx.nd.contrib, gluon.contrib.nn) on CPU contexts matches the global-batch BatchNorm oracle.

Every call runs in the sync worker (the threaded engine), one call per device. The one-pass error model is
searched for a correct float32 kernel (emulated_sync: every summation and merge order) that crosses it; a
planted 0.5% error in one gradient must be caught; MXNet's three deviations reproduce.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import pickle
import subprocess
import sys

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from bnprops.judging.checks import PROPERTIES
from bnprops.judging.deviation_models import Context
from bnprops.judging.deviations.sync_one_pass_variance_negative import SYNC_ONE_PASS_VARIANCE_NEGATIVE
from bnprops.judging.deviations.sync_sum_drift import SYNC_SUM_DRIFT
from bnprops.judging.deviations.sync_unequal_batches import SYNC_UNEQUAL_BATCHES
from bnprops.judging.known_deviations import KNOWN_DEVIATIONS
from bnprops.judging.sync import check_sync, judge
from bnprops.model.case import Case, Outputs
from bnprops.model.oracle import per_channel
from bnprops.model.sync import PARTIALS, SyncEvaluation, device_split, with_split
from bnprops.mx import sync
from bnprops.mx.runners import IN_PROCESS_BACKEND
from bnprops.mx.sync import SyncWorker
from bnprops.mx.worker import WorkerCrashed
from bnprops.search.sync import cases_for_sync
from tests.emulated_sync import SUMMATIONS, emulate_sync, sync_subject
from tests.helpers import budget, planted_search

pytestmark = pytest.mark.skipif(sync.unavailable_reason() is not None, reason=str(sync.unavailable_reason()))

#: The property's budget: the worker answers a small case in ~20 ms, so a tenth of the profile's is a few seconds.
PROPERTY = settings(max_examples=budget(0.1), deadline=None, suppress_health_check=list(HealthCheck), database=None)
SEARCH = settings(max_examples=budget(0.5), deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.mark.property
@pytest.mark.parametrize("entry", sync.ENTRIES)
@PROPERTY
@given(case=cases_for_sync(unequal=None))
def test_sync_batchnorm_matches_the_global_batch_oracle(entry: str, case: Case) -> None:
    judged = check_sync(case, runner=sync.RUNNERS[entry], entry=entry, kernel=IN_PROCESS_BACKEND)
    assert judged.ok, judged.message() + "\nSyncBatchNorm reproducer:\n" + sync.snippet(case, entry)


@settings(max_examples=budget(0.03), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(case=cases_for_sync(max_devices=2))
def test_both_cpu_kernels_return_the_same_bits_on_two_devices(case: Case) -> None:
    """SyncBatchNorm is a legacy mshadow operator with no oneDNN implementation: MXNET_MKLDNN_ENABLED changes
    nothing. (Two devices only: with three or more the merge adds in arrival order, which varies by run.)"""
    for entry in sync.ENTRIES:
        onednn, native = (sync.run(case, entry=entry, kernel=k) for k in ("onednn", "native"))
        assert onednn.keys() == native.keys()
        for q in onednn:
            assert onednn[q].tobytes() == native[q].tobytes(), f"{entry} {q}: {onednn[q]} vs {native[q]}"


def test_each_device_holds_its_own_slices_partial_gradients() -> None:
    """The semantics written down: device d's dgamma and dbeta are the sums over its own slice (what a trainer's
    allreduce adds up), not the global gradient; the moving statistics are the global batch's on every device."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    case = with_split(
        Case(
            x=x,
            dy=rng.standard_normal(x.shape).astype(np.float32),
            gamma=np.array([1.5, 0.5], np.float32),
            beta=np.array([0.1, -0.2], np.float32),
            moving_mean=np.zeros(2, np.float32),
            moving_var=np.ones(2, np.float32),
            fix_gamma=False,
            momentum=0.0,
        ),
        (2, 2, 2),
    )
    out = sync.RUNNERS["sync-nd"](case)
    xhat = (x - x.mean(axis=(0, 2), keepdims=True)) / np.sqrt(x.var(axis=(0, 2), keepdims=True) + 1e-3)
    own = np.stack([(case.dy[2 * d : 2 * d + 2] * xhat[2 * d : 2 * d + 2]).sum(axis=(0, 2)) for d in range(3)])
    np.testing.assert_allclose(out["dgamma_partials"], own, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out["dgamma_partials"][0], out["dgamma"], rtol=1e-2)
    np.testing.assert_allclose(out["moving_mean_devices"], np.stack([x.mean(axis=(0, 2))] * 3), rtol=1e-5)


# The error model: correct kernels under the search, and the planted faults.


def _ratios(case: Case, outputs: Outputs, *, probabilistic: bool = False) -> dict[str, float]:
    """Per quantity, the largest error/deterministic (or probabilistic) bound over the elements the model judges;
    each device's partials against their deterministic bound."""
    ev = SyncEvaluation(case)
    judged = ~ev.undetermined
    ratios: dict[str, float] = {}
    for q, bound in (ev.sharp if probabilistic else ev.bound).items():
        if q not in outputs:
            continue
        mask = judged if q in ("y", "dx", "dgamma") else np.ones(case.channels, dtype=bool)
        where = per_channel(case, mask).astype(bool) & np.ones(case.shape, bool) if bound.shape == case.shape else mask
        err = np.abs(np.asarray(outputs[q], dtype=np.float64) - ev.expected[q])
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(bound > 0, err / bound, np.where(err > 0, np.inf, 0.0))
        ratios[q] = float(np.max(np.where(where, np.nan_to_num(r, nan=np.inf), 0.0), initial=0.0))
    expected, bounds = ev.partials, ev.partial_bounds(ev.partials)
    for key in PARTIALS.values():
        err = np.abs(outputs[key] - expected[key])
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(bounds[key] > 0, err / bounds[key], np.where(err > 0, np.inf, 0.0))
        ratios[key] = float(np.max(np.where(judged[None, :], np.nan_to_num(r, nan=np.inf), 0.0), initial=0.0))
    return ratios


def orders(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.permutations(list(range(n))).map(tuple)


@st.composite
def emulated(draw: st.DrawFn, **options: object) -> tuple[Case, Outputs, str]:
    case = sync.adapt("sync-nd", draw(cases_for_sync(**options)))  # type: ignore[arg-type]
    n = len(device_split(case))
    summation = draw(st.sampled_from(SUMMATIONS))
    outputs = emulate_sync(case, summation=summation, forward_order=draw(orders(n)), backward_order=draw(orders(n)))
    return case, outputs, summation


def _log(r: float) -> float:
    return -30.0 if r <= 0 or math.isnan(r) else min(30.0, max(-30.0, math.log10(r)))


@SEARCH
@given(drawn=emulated())
def test_no_correct_sync_kernel_exceeds_the_one_pass_bound(drawn: tuple[Case, Outputs, str]) -> None:
    case, outputs, summation = drawn
    ratios = _ratios(case, outputs)
    hypothesis.target(_log(max(ratios.values())), label="worst error/bound")
    for q, r in ratios.items():
        hypothesis.target(_log(r), label=q)
    beyond = {q: r for q, r in ratios.items() if r > 1}
    assert not beyond, f"a correct {summation} kernel beyond the bound: {beyond} on {case.describe()}"


@settings(max_examples=budget(0.05), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(drawn=emulated(sizes="large", max_elements=240))
def test_no_correct_sync_kernel_exceeds_the_one_pass_bound_on_large_reductions(
    drawn: tuple[Case, Outputs, str],
) -> None:
    case, outputs, summation = drawn
    beyond = {q: r for q, r in _ratios(case, outputs).items() if r > 1}
    assert not beyond, f"a correct {summation} kernel beyond the bound: {beyond} on {case.describe()}"


@SEARCH
@given(drawn=emulated(value_regimes=["ordinary", "large", "exact"]))
def test_correct_sync_kernels_stay_within_the_probabilistic_bound_on_data_without_drift(
    drawn: tuple[Case, Outputs, str],
) -> None:
    """The accuracy line, on data whose sums do not lean one way (offset and constant channels do: the
    sync-sum-drift deviation). Small sizes: at M ~ 10^6 a sequential x^2 sum can cross it (the page's caveat)."""
    case, outputs, summation = drawn
    ratios = _ratios(case, outputs, probabilistic=True)
    hypothesis.target(_log(max(ratios.values())), label="worst error/probabilistic bound")
    beyond = {q: r for q, r in ratios.items() if r > 1}
    assert not beyond, f"a correct {summation} kernel beyond the probabilistic bound: {beyond} on {case.describe()}"


@settings(max_examples=budget(0.05), deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(case=cases_for_sync(max_devices=2, value_regimes=["ordinary", "offset", "large"]))
def test_the_mshadow_emulation_is_mxnets_kernel_bit_for_bit_on_two_devices(case: Case) -> None:
    case = sync.adapt("sync-nd", case)
    mine = emulate_sync(case, summation="mshadow", forward_order=(0, 1), backward_order=(0, 1))
    theirs = sync.RUNNERS["sync-nd"](case)
    for q in ("y", "dx", "dgamma_partials", "dbeta_partials", "moving_mean", "moving_var"):
        np.testing.assert_array_equal(mine[q], theirs[q], err_msg=q)


def _faulty(case: Case, *, fault: str, summation: str = "mshadow") -> Outputs:
    """A correct kernel's outputs with one gradient 0.5% off: dx everywhere, or device 0's dgamma."""
    return sync_subject(case, fault=f"{fault}_off_by_half_percent", summation=summation)


@pytest.mark.parametrize(("prop", "fault"), [("data_gradient", "dx"), ("parameter_gradients", "dgamma")])
def test_a_half_percent_gradient_error_is_caught(prop: str, fault: str) -> None:
    runner = functools.partial(_faulty, fault=fault)

    def caught(case: Case) -> bool:
        return not check_sync(case, runner=runner, entry="sync-nd", kernel="subject", checked=PROPERTIES[prop]).ok

    found = hypothesis_find(cases_for_sync(unequal=False, fix_gamma=False), caught, settings=planted_search(300))
    assert caught(found)


@settings(max_examples=budget(0.1), deadline=None, derandomize=True, database=None)
@given(drawn=emulated(unequal=False))
def test_a_correct_sync_subject_passes(drawn: tuple[Case, Outputs, str]) -> None:
    case, outputs, _ = drawn
    judged = judge(case, outputs, entry="sync-nd", kernel="subject")
    assert judged.ok, judged.message()


def test_a_device_holding_other_moving_statistics_is_caught() -> None:
    case = sync.adapt("sync-nd", _small())
    out = emulate_sync(case, summation="mshadow", forward_order=(0, 1), backward_order=(0, 1))
    out["moving_mean_devices"] = out["moving_mean_devices"].copy()
    out["moving_mean_devices"][1] = np.nextafter(out["moving_mean_devices"][1], np.float32(np.inf))
    judged = judge(case, out, entry="sync-nd", kernel="subject")
    assert not judged.ok and "moving_mean" in judged.message()


def _small() -> Case:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    case = Case(
        x=x,
        dy=rng.standard_normal(x.shape).astype(np.float32),
        gamma=np.array([1.5, 0.5], np.float32),
        beta=np.array([0.1, -0.2], np.float32),
        moving_mean=np.zeros(2, np.float32),
        moving_var=np.ones(2, np.float32),
        fix_gamma=False,
    )
    return with_split(case, (2, 2))


# The deviations.

SYNC_DEVIATIONS = [SYNC_UNEQUAL_BATCHES, SYNC_ONE_PASS_VARIANCE_NEGATIVE, SYNC_SUM_DRIFT]


@pytest.mark.parametrize("kd", SYNC_DEVIATIONS, ids=[kd.id for kd in SYNC_DEVIATIONS])
@pytest.mark.parametrize("entry", sync.ENTRIES)
def test_each_sync_deviation_reproduces_and_is_explained(kd: object, entry: str) -> None:
    case = kd.reproducer()  # type: ignore[attr-defined]
    judged = check_sync(case, runner=sync.RUNNERS[entry], entry=entry, kernel=IN_PROCESS_BACKEND)
    failed = judged.outcome.verdict.failed_quantities
    assert failed, f"{kd.id}: MXNet matches the oracle on its reproducer; was it fixed?"  # type: ignore[attr-defined]
    assert failed <= kd.quantities  # type: ignore[attr-defined]
    assert judged.ok, judged.message()
    assert kd in [explained for explained, _ in judged.outcome.explained]


def test_the_one_pass_variance_makes_every_output_nan_on_an_offset_batch() -> None:
    case = sync.adapt("sync-nd", SYNC_ONE_PASS_VARIANCE_NEGATIVE.reproducer())
    out = sync.RUNNERS["sync-nd"](case)
    assert np.isnan(out["y"]).all() and out["moving_var"][0] < 0
    assert SyncEvaluation(case).undetermined.all()  # the model's indeterminate channels: nothing judged there


def test_an_unequal_split_is_caught_where_no_deviation_explains_it() -> None:
    case = sync.adapt("sync-nd", SYNC_UNEQUAL_BATCHES.reproducer())
    out = sync.RUNNERS["sync-nd"](case)
    out["dx"] = out["dx"] * 1.01
    judged = judge(case, out, entry="sync-nd", kernel=IN_PROCESS_BACKEND)
    assert not judged.ok and "not as recorded" in judged.message()


def test_a_split_survives_the_case_round_trip() -> None:
    case = _small()
    again = Case.from_json(case.to_json())
    assert device_split(again) == (2, 2) and again == case
    assert list(itertools.accumulate(device_split(with_split(case, (1, 3))))) == [1, 4]


@pytest.mark.parametrize("entry", sync.ENTRIES)
def test_the_reproducer_makes_the_same_call_standalone(entry: str) -> None:
    """The snippet needs only mxnet and numpy (its own engine settings) and returns what the runner does."""
    case = sync.adapt(entry, _small())
    script = sync.snippet(case, entry) + "import pickle, sys\nsys.stdout.buffer.write(pickle.dumps(actual))\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MXNET_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, timeout=120, check=True)
    standalone = pickle.loads(done.stdout[done.stdout.index(b"\x80") :])
    ours = sync.RUNNERS[entry](case)
    for q, value in standalone.items():
        np.testing.assert_array_equal(value, ours[q], err_msg=q)


def test_a_call_that_outlasts_its_timeout_kills_the_worker_and_the_next_call_starts_another() -> None:
    worker = SyncWorker(IN_PROCESS_BACKEND, call_timeout=1e-4)
    try:
        with pytest.raises(WorkerCrashed, match="hung"):
            worker.run("sync-nd", sync.adapt("sync-nd", _small()))
        worker.call_timeout = sync.CALL_TIMEOUT_S
        assert worker.run("sync-nd", sync.adapt("sync-nd", _small()))["y"].shape == (4, 2, 3)
        assert worker.starts == 2
    finally:
        worker.close()


def test_batchnorms_own_deviations_do_not_apply_to_sync_batchnorm() -> None:
    """BatchNorm's deviations (declared for every entry point) are another kernel's: only the member's apply."""
    case = sync.adapt("sync-nd", SYNC_SUM_DRIFT.reproducer())
    ctx = Context(case, IN_PROCESS_BACKEND, SyncEvaluation(case))
    for entry in sync.ENTRIES:
        applying = {kd.id for kd in KNOWN_DEVIATIONS if kd.predictions(ctx, entry=entry, scoped=False)}
        assert applying <= {kd.id for kd in SYNC_DEVIATIONS}, (entry, applying)
        assert SYNC_SUM_DRIFT.id in applying


def test_before_1_5_only_2d_and_4d_data_are_expressible(monkeypatch: pytest.MonkeyPatch) -> None:
    three_d = _small()
    assert sync.unexpressible_reason(three_d) is None
    monkeypatch.setattr(sync.mxversion, "running", lambda: "1.4.1")
    assert "2-D or 4-D" in (sync.unexpressible_reason(three_d) or "")
    four_d = with_split(dataclasses.replace(three_d, x=three_d.x[..., None], dy=three_d.dy[..., None]), (2, 2))
    assert sync.unexpressible_reason(four_d) is None

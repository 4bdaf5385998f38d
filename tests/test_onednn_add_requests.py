"""grad_req='add' on oneDNN's kernel, release by release: before 1.6 no plain call reaches it (the native kernel
ignores 'add'), 1.6 writes instead of adding, 1.7+ adds (but under fix_gamma writes 0); a 0.5% fault planted in
each region is caught.

MXNet's outputs are emulated in numpy (the oracle's values, in MXNet's output dtypes, with each release's
'add' behaviour); the release is played by monkeypatching mxversion.running.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from bnprops.judging.deviations.add_request_ignored import ADD_REQUEST_IGNORED
from bnprops.judging.deviations.onednn_add_request_overwrites import ONEDNN_ADD_REQUEST_OVERWRITES
from bnprops.judging.deviations.onednn_fix_gamma_add_wipes_dgamma import ONEDNN_FIX_GAMMA_ADD_WIPES_DGAMMA
from bnprops.judging.in_network import same_kernel
from bnprops.judging.judgement import Outcome, judge
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, QUANTITIES, Case, Outputs, param_dtype
from bnprops.model.oracle import fresh_reference, output_dtypes, reference
from bnprops.mx import mxversion
from bnprops.mx.runners import kernel_for, onednn_follows_layout

Behaviour = Callable[[Case], Outputs]


@pytest.fixture
def release(monkeypatch: pytest.MonkeyPatch) -> Any:
    def play(version: str) -> None:
        monkeypatch.setattr(mxversion, "running", lambda: version)

    return play


def accumulating(*, fix_gamma: bool, targets: tuple[str, ...] = GRAD_TARGETS) -> Case:
    """float32 (6, 2, 3, 3), channels on axis 1 (oneDNN's path from 1.6), ``targets`` requested with 'add' on
    priors of 7 (dx: 5); a head whose channel sums are not 0, so that every gradient shows beside its prior."""
    rng = np.random.default_rng(24)
    x = rng.normal(0.3, 1.0, (6, 2, 3, 3)).astype(np.float32)
    dy = rng.normal(0.4, 1.0, x.shape).astype(np.float32)
    pdt = param_dtype("float32")
    priors = {"prior_dx": np.full(x.shape, 5.0, np.float32), "prior_dgamma": np.full(2, 7.0, pdt)}
    priors["prior_dbeta"] = np.full(2, 7.0, pdt)
    return Case(
        x=x,
        dy=dy,
        gamma=np.array([0.5, 1.5], pdt),
        beta=np.array([-0.25, 0.25], pdt),
        moving_mean=np.zeros(2, pdt),
        moving_var=np.ones(2, pdt),
        fix_gamma=fix_gamma,
        grad_req=tuple("add" if t in targets else "write" for t in GRAD_TARGETS),  # type: ignore[arg-type]
        **{f"prior_{GRADIENT_OF[t]}": priors[f"prior_{GRADIENT_OF[t]}"] for t in targets},
    )


def _in_dtypes(case: Case, values: Outputs) -> Outputs:
    dtypes = output_dtypes(case)
    return {q: np.asarray(v).astype(dtypes[q]) for q, v in values.items()}


def adds(case: Case) -> Outputs:
    """'add' honoured: the oracle's values."""
    return _in_dtypes(case, reference(case))


def ignores_add(case: Case) -> Outputs:
    """Before 1.7 on the native kernel: a gradient requested with 'add' keeps its prior."""
    out = adds(case)
    for t in GRAD_TARGETS:
        prior = case.prior(t)
        if case.request(t) == "add" and prior is not None:
            out[GRADIENT_OF[t]] = np.array(prior, copy=True)
    return out


def writes(case: Case) -> Outputs:
    """1.6 on oneDNN: a gradient requested with 'add' holds this call's gradient (under fix_gamma dgamma is 0)."""
    out, fresh = adds(case), fresh_reference(case)
    for t in GRAD_TARGETS:
        if case.request(t) == "add":
            q = GRADIENT_OF[t]
            out[q] = fresh[q].astype(out[q].dtype)
    return out


def planted(behaviour: Behaviour, quantity: str) -> Behaviour:
    """``behaviour`` with one gradient 0.5% off in every element."""

    def run(case: Case) -> Outputs:
        out = behaviour(case)
        out[quantity] = (np.asarray(out[quantity], np.float64) * 1.005).astype(out[quantity].dtype)
        return out

    return run


def judged(case: Case, behaviour: Behaviour) -> Outcome:
    return judge(case, behaviour(case), entry="sym", kernel=kernel_for(case, "onednn"), checked=QUANTITIES)


def explained_by(outcome: Outcome) -> set[str]:
    return {kd.id for kd, _ in outcome.explained}


def test_before_1_6_a_plain_call_takes_the_native_kernel_and_a_producers_layout_may_take_mkldnn(release: Any) -> None:
    case = accumulating(fix_gamma=False)
    release("1.5.1")
    assert kernel_for(case, "onednn") == "native" and onednn_follows_layout(case, "onednn")
    assert not same_kernel(case, "onednn")  # in a network, after a Convolution, MKL-DNN may run it
    assert same_kernel(case.with_(axis=-3), "onednn")  # SupportMKLDNNBN needed axis written as 1
    release("1.6.0")
    assert kernel_for(case, "onednn") == "onednn" and not onednn_follows_layout(case, "onednn")


@pytest.mark.parametrize("fix_gamma", [False, True])
def test_before_1_6_onednn_builds_keep_the_prior_as_recorded_and_a_planted_fault_is_caught(
    release: Any, fix_gamma: bool
) -> None:
    release("1.5.1")
    case = accumulating(fix_gamma=fix_gamma)
    kept = judged(case, ignores_add)
    assert kept.ok and explained_by(kept) == {ADD_REQUEST_IGNORED.id}, kept.message()
    wrote = judged(case, writes)  # 1.6's behaviour is not recorded before 1.6
    assert not wrote.ok
    for quantity in ("dx", "dbeta") + (() if fix_gamma else ("dgamma",)):
        assert not judged(case, planted(ignores_add, quantity)).ok, quantity


@pytest.mark.parametrize("target", GRAD_TARGETS)
def test_on_1_6s_onednn_an_add_request_is_written_as_recorded_and_a_planted_fault_is_caught(
    release: Any, target: str
) -> None:
    release("1.6.0")
    case = accumulating(fix_gamma=False, targets=(target,))
    wrote = judged(case, writes)
    assert wrote.ok and explained_by(wrote) == {ONEDNN_ADD_REQUEST_OVERWRITES.id}, wrote.message()
    quantity = GRADIENT_OF[target]
    caught = judged(case, planted(writes, quantity))
    assert [m.quantity for m in caught.unexpected] == [quantity], caught.message()
    # Narrow: the prior kept (the native kernel's deviation) and the oracle's own values are findings here.
    assert not judged(case, ignores_add).ok
    assert ONEDNN_ADD_REQUEST_OVERWRITES in judged(case, adds).stale


def test_on_1_6s_onednn_under_fix_gamma_dgamma_is_0_as_recorded_and_the_rest_is_written(release: Any) -> None:
    release("1.6.0")
    case = accumulating(fix_gamma=True)
    wrote = judged(case, writes)
    assert wrote.ok, wrote.message()
    assert explained_by(wrote) == {ONEDNN_ADD_REQUEST_OVERWRITES.id, ONEDNN_FIX_GAMMA_ADD_WIPES_DGAMMA.id}
    for quantity in ("dx", "dbeta"):
        assert not judged(case, planted(writes, quantity)).ok, quantity


def test_from_1_7_onednn_adds_and_the_1_6_behaviour_is_a_finding(release: Any) -> None:
    release("1.7.0")
    case = accumulating(fix_gamma=False)
    assert judged(case, adds).ok
    wrote = judged(case, writes)
    assert {m.quantity for m in wrote.unexpected} == {"dx", "dgamma", "dbeta"} and not wrote.explained


def test_the_release_probe_runs_a_native_kernel_deviation_on_the_native_backend_of_a_onednn_build() -> None:
    from bnprops.judging.release_probe import probe_backend, probe_entry
    from bnprops.mx.runners import IN_PROCESS_BACKEND, unavailable_reason

    assert probe_backend(ADD_REQUEST_IGNORED) == "native"
    onednn = "onednn" if unavailable_reason("onednn") is None else IN_PROCESS_BACKEND
    assert probe_backend(ONEDNN_ADD_REQUEST_OVERWRITES) == onednn
    if mxversion.parse(mxversion.running()) >= mxversion.parse("1.7.0"):  # fixed: 'add' honoured on both kernels
        assert probe_entry(ADD_REQUEST_IGNORED, "sym")[0] == "absent"
        assert probe_entry(ONEDNN_ADD_REQUEST_OVERWRITES, "sym")[0] in ("absent", "not applicable")

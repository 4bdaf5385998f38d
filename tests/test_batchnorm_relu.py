"""BatchNormWithReLU (mx.nd.contrib, oneDNN only) matches the BatchNorm oracle with its ReLU mask.

The cases are the strategies' that the operator can express: float32, 4-D, axis=1, finite data, training
mode. Inference-mode backward is the recorded deviation relu-inference-backward-unwritten-mask, tested
here. A planted 0.5% error in one gradient must be caught.
"""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import find as hypothesis_find
from hypothesis.strategies import SearchStrategy

from bnprops.base import reproduction
from bnprops.judging.checks import PROPERTIES
from bnprops.judging.deviations.relu_inference_backward_unwritten_mask import (
    DEVIATIONS as UNWRITTEN_MASK,
)
from bnprops.judging.deviations.relu_inference_backward_unwritten_mask import (
    RELU_INFERENCE_BACKWARD_UNWRITTEN_MASK as UNWRITTEN,
)
from bnprops.judging.judgement import predictions
from bnprops.judging.with_relu import check_with_relu, judge_with_relu, mask_unwritten
from bnprops.model.case import Case
from bnprops.mx.runners import with_relu_build_reason, with_relu_unavailable_reason
from bnprops.mx.with_relu import PLAIN
from bnprops.mx.with_relu import RUNNERS as WITH_RELU_RUNNERS
from bnprops.search.with_relu import cases_for_with_relu
from tests.planted_relu import numpy_batchnorm_relu

pytestmark = pytest.mark.property


def relu_cases() -> SearchStrategy[Case]:
    """What the operator can express, drawn from the BatchNorm strategies (the member's own strategy)."""
    return cases_for_with_relu()


QUICK = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(autouse=True)
def _onednn() -> None:
    """Skip where this build has no BatchNormWithReLU kernel: no oneDNN, or a release before the operator (1.8)."""
    reason = with_relu_build_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("entry", sorted(WITH_RELU_RUNNERS))
@QUICK
@given(case=relu_cases())
def test_batchnorm_with_relu_matches_the_oracle(entry: str, case: Case) -> None:
    assume(with_relu_unavailable_reason(case) is None)
    if entry.startswith("gluon"):
        assume(not (case.fix_gamma and case.grad_req[0] == "null" and case.grad_req[2] == "null"))
    judged = check_with_relu(case, runner=WITH_RELU_RUNNERS[entry], entry=entry)
    assert judged.ok, judged.message()


@pytest.mark.parametrize(
    ("prop", "fault"),
    [("data_gradient", "dx_off_by_half_percent"), ("parameter_gradients", "dgamma_off_by_half_percent")],
)
def test_a_half_percent_gradient_error_is_caught(prop: str, fault: str) -> None:
    runner = functools.partial(numpy_batchnorm_relu, fault=fault)

    def caught(case: Case) -> bool:
        return not check_with_relu(case, runner=runner, entry="subject", checked=PROPERTIES[prop], kernel="subject").ok

    search = settings(max_examples=200, database=None, derandomize=True, deadline=None)
    found = hypothesis_find(relu_cases(), caught, settings=search)
    assert not check_with_relu(
        found, runner=runner, entry="subject", checked=PROPERTIES[prop], kernel="subject"
    ).outcome.ok


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(case=relu_cases())
def test_a_correct_relu_subject_passes(case: Case) -> None:
    judged = check_with_relu(case, runner=numpy_batchnorm_relu, entry="subject", kernel="subject")
    assert judged.ok, judged.message()


@pytest.mark.parametrize("entry", sorted(WITH_RELU_RUNNERS))
def test_the_unwritten_mask_deviation_explains_inference_mode_backward(entry: str) -> None:
    """The deviation's reproducer on every entry: MXNet's gradients fail the oracle (in some call: the garbage
    may be the right mask by chance) and match the deviation's model, and nothing else fails."""
    shown = []
    for _ in range(4):
        judged = check_with_relu(UNWRITTEN.reproducer(), runner=WITH_RELU_RUNNERS[entry], entry=entry)
        assert judged.ok, judged.message()
        failed = judged.outcome.verdict.failed_quantities
        assert failed <= UNWRITTEN.quantities, judged.message()
        shown += [kd.id for kd, _ in judged.outcome.explained if kd in UNWRITTEN_MASK]
    assert shown, f"BatchNormWithReLU ({entry}) matched the oracle in inference mode 4 times: was it fixed?"


def test_the_unwritten_mask_deviation_is_scoped_to_the_members_inference_calls() -> None:
    case = UNWRITTEN.reproducer()

    def applying(c: Case, *, entry: str, like: str | None) -> set[str]:
        found = predictions(c, entry=entry, kernel="onednn", like=like, scoped=False)
        return {kd.id for kd, _ in found if kd in UNWRITTEN_MASK}

    for member, plain in PLAIN.items():
        assert applying(case, entry=plain, like=None) == set(), plain  # BatchNorm's own entry: not its deviation
        assert len(applying(case, entry=member, like=plain)) == 1, member
        assert applying(case.with_(is_train=True), entry=member, like=plain) == set(), member
        assert mask_unwritten(case, member) and not mask_unwritten(case.with_(is_train=True), member)
        assert not mask_unwritten(case, plain)  # a BatchNorm entry's call writes no ReLU mask to read


@pytest.mark.parametrize("entry", sorted(WITH_RELU_RUNNERS))
def test_a_fault_inside_the_unwritten_mask_region_is_caught(entry: str) -> None:
    """dx off the interval of every mask (3 times the unmasked value) is a finding, not the deviation."""
    case = UNWRITTEN.reproducer()
    real = WITH_RELU_RUNNERS[entry](case)
    for quantity in ("dx", "dbeta"):
        planted = {q: np.array(v, copy=True) for q, v in real.items()}
        flat = planted[quantity].reshape(-1)
        flat[0] = 3 * float(np.abs(case.dy).sum()) * 4 + 7
        judged = judge_with_relu(case, planted, entry=entry)
        caught = [m for m in judged.outcome.unexpected if m.quantity == quantity]
        assert caught and caught[0].kind == "unrecorded", judged.message() or f"the planted {quantity} passed"


def _right_call(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float
) -> tuple[np.ndarray, ...]:
    """The inference-mode call done right, in numpy: relu(BatchNorm) and its gradients for a head of ones."""
    c = (slice(None), None, None)
    invstd = 1 / np.sqrt(var.astype(np.float64) + eps)
    xhat = (x - mean[(None, *c)]) * invstd[(None, *c)]
    y = np.maximum(gamma[(None, *c)] * xhat + beta[(None, *c)], 0)
    mask = y > 0
    dx = gamma[(None, *c)] * invstd[(None, *c)] * mask
    return y, dx, (xhat * mask).sum(axis=(0, 2, 3)), mask.sum(axis=(0, 2, 3)).astype(np.float64)


def test_the_unwritten_mask_reproducer_exits_1_while_it_persists_and_0_once_gone() -> None:
    assert UNWRITTEN.script is not None
    text = UNWRITTEN.script()
    proc = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True, check=False)
    assert proc.returncode == reproduction.PERSISTS, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith(reproduction.PERSISTS_LINE)
    namespace: dict[str, object] = {"__name__": "reproducer"}
    exec(compile(text, "reproducer", "exec"), namespace)
    main = namespace["main"]
    assert callable(main)
    assert main(call=_right_call) == reproduction.GONE

"""gluon.nn.BatchNorm through its options around the operator computes what the plain oracle says they mean.

Deferred in_channels (0) with the four initialisers carrying the case's values, center=False (beta frozen),
scale=False (fix_gamma), a frozen gamma under scale=True, cast(dtype) through a container (float16 keeps the
parameters float32): each is a meaning the plain oracle already has, so the bound is the plain one and its
soundness search (test_error_model_soundness) covers it. A planted 0.5% error in dgamma is caught.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import find as hypothesis_find

from bnprops.judging.checks import PROPERTIES
from bnprops.judging.gluon_options import check_gluon_options
from bnprops.model.case import Case
from bnprops.model.error_model import unit_roundoff
from bnprops.model.evaluation import evaluate
from bnprops.mx import gluon_options
from bnprops.search.gluon_options import cases_for_gluon_options
from tests.helpers import budget, planted_search
from tests.planted import numpy_batchnorm

#: A release that cannot build the options' layer (before 1.6) notes it, as doctor and the fuzz job do.
pytestmark = pytest.mark.skipif(
    gluon_options.unavailable_reason() is not None, reason=str(gluon_options.unavailable_reason())
)


@pytest.mark.property
@pytest.mark.parametrize("entry", gluon_options.ENTRIES)
def test_the_options_layer_matches_the_plain_oracle(entry: str) -> None:
    @settings(max_examples=budget(0.25), deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=cases_for_gluon_options())
    def prop(case: Case) -> None:
        judged = check_gluon_options(case, runner=gluon_options.RUNNERS[entry], entry=entry)
        assert judged.ok, judged.message()

    prop()


def test_frozen_parameters_have_no_gradient_and_keep_their_values() -> None:
    """center=False and a frozen gamma: no dbeta, no dgamma; the operator still adds beta and scales by gamma."""

    @settings(max_examples=10, deadline=None, derandomize=True, database=None)
    @given(case=cases_for_gluon_options(dtypes=["float32"], fix_gamma=False, is_train=True))
    def frozen(case: Case) -> None:
        case = case.with_(grad_req=("write", "null", "null"))
        out = gluon_options.run_gluon_options(case)
        assert "dgamma" not in out and "dbeta" not in out
        judged = check_gluon_options(case, runner=gluon_options.run_gluon_options, entry="gluon-options")
        assert judged.ok, judged.message()

    frozen()


@pytest.mark.parametrize(("prop", "fault"), [("parameter_gradients", "dgamma_off_by_half_percent")])
def test_a_half_percent_gradient_error_is_caught(prop: str, fault: str) -> None:
    runner = functools.partial(numpy_batchnorm, fault=fault)

    def caught(case: Case) -> bool:
        out = runner(case)
        judged = check_gluon_options(case, runner=lambda _: out, entry="subject", kernel="subject")
        return bool(set(judged.outcome.verdict.failed_quantities) & set(PROPERTIES[prop])) and not judged.ok

    found = hypothesis_find(cases_for_gluon_options(fix_gamma=False), caught, settings=planted_search(200))
    assert (
        "dgamma"
        in check_gluon_options(
            found, runner=runner, entry="subject", kernel="subject"
        ).outcome.verdict.failed_quantities
    )


@settings(max_examples=budget(0.1), deadline=None, derandomize=True, database=None)
@given(case=cases_for_gluon_options(value_regimes=["ordinary", "offset", "exact"]))
def test_a_correct_subject_passes(case: Case) -> None:
    judged = check_gluon_options(case, runner=numpy_batchnorm, entry="subject", kernel="subject")
    assert judged.ok, judged.message()


NATIVE_CHILD = """
from hypothesis import given, settings
from bnprops.judging.gluon_options import check_gluon_options
from bnprops.mx import gluon_options
from bnprops.mx.runners import IN_PROCESS_BACKEND
from bnprops.search.gluon_options import cases_for_gluon_options
assert IN_PROCESS_BACKEND == "native"

@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(case=cases_for_gluon_options(dtypes=["float32"]))
def prop(case):
    for entry, runner in gluon_options.RUNNERS.items():
        judged = check_gluon_options(case, runner=runner, entry=entry)
        assert judged.ok, judged.message()

prop()
print("native ok")
"""


def test_the_options_layer_matches_the_oracle_on_the_native_kernel_too() -> None:
    env = {**os.environ, "MXNET_MKLDNN_ENABLED": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", NATIVE_CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0 and "native ok" in child.stdout, child.stderr[-3000:]


@settings(max_examples=budget(0.05), deadline=None, derandomize=True, database=None)
@given(case=cases_for_gluon_options(dtypes=["float16"], fix_gamma=False, is_train=True, value_regimes=["ordinary"]))
def test_a_multi_precision_step_after_cast_float16_moves_the_parameters_by_the_oracles_gradients(case: Case) -> None:
    """cast('float16') keeps BatchNorm's parameters float32, so Trainer(multi_precision=True) updates them as plain
    SGD does: parameter - lr * gradient, the gradient within its bound of the oracle's."""
    case = case.with_(grad_req=("write", "write", "write"))
    lr = 0.5
    after = gluon_options.multi_precision_step(case, learning_rate=lr)
    ev = evaluate(case)
    u = unit_roundoff("float32")
    for name, quantity in (("gamma", "dgamma"), ("beta", "dbeta")):
        before = getattr(case, name).astype(np.float64)
        step = lr * ev.expected[quantity]
        bound = lr * ev.bound[quantity] + 2 * u * (np.abs(before) + np.abs(step))
        error = np.abs(after[name].astype(np.float64) - (before - step))
        assert after[name].dtype == np.float32, f"{name} is {after[name].dtype} after cast('float16')"
        assert (error <= bound).all(), (
            f"{name}: error {error.max()} beyond {bound[error.argmax()]} for {case.describe()}"
        )


@pytest.mark.parametrize("entry", gluon_options.ENTRIES)
def test_the_options_reproducer_computes_what_the_runner_does(entry: str) -> None:
    @settings(max_examples=5, deadline=None, derandomize=True, database=None)
    @given(case=cases_for_gluon_options())
    def same(case: Case) -> None:
        namespace: dict[str, object] = {}
        exec(gluon_options.snippet(case, entry), namespace)
        actual, expected = namespace["actual"], gluon_options.RUNNERS[entry](case)
        assert isinstance(actual, dict)
        for q, value in actual.items():
            assert np.array_equal(value, expected[q], equal_nan=True), f"{q}: reproducer {value}, runner {expected[q]}"

    same()


def test_releases_before_1_6_lack_the_options_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gluon_options.mxversion, "running", lambda: "1.5.1")
    assert "#15150" in (gluon_options.unavailable_reason() or "")
    monkeypatch.setattr(gluon_options.mxversion, "running", lambda: "1.6.0")
    assert gluon_options.unavailable_reason() is None

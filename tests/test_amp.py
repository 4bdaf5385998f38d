"""BatchNorm in graphs converted by AMP (mx.contrib.amp) is judged in the dtype it actually runs in.

bfloat16 (amp-sym, amp-gluon): AMP casts BatchNorm's data to bfloat16 and keeps its parameters float32; the
bound is the float32 one plus the rounding of y and dx to bfloat16. float16 (amp-fp16-sym): on CPU AMP keeps a
lone BatchNorm in float32, bit for bit the plain symbolic call. A 0.5% error in dx is caught.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import textwrap

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from bnprops.judging.checks import PROPERTIES
from bnprops.judging.deviations import by_id
from bnprops.judging.mixed_precision import check_amp, judge_amp
from bnprops.model.bfloat16 import UNIT_ROUNDOFF, is_bfloat16, to_bfloat16
from bnprops.model.case import Case
from bnprops.mx import mixed_precision, mxversion
from bnprops.mx.runners import ONEDNN_ENABLED, run_symbolic
from bnprops.search.deployment import cases_for_amp
from tests.helpers import budget, planted_search
from tests.planted_amp import bfloat16_batchnorm

BF16 = "bfloat16"
QUICK = settings(max_examples=budget(0.1), deadline=None, suppress_health_check=list(HealthCheck))


def _skip_unless_runnable(entry: str) -> None:
    reason = mixed_precision.unavailable_reason() or mixed_precision.kernel_reason(entry)
    if reason is None and entry in mixed_precision.BF16_ENTRIES:
        reason = mixed_precision.bf16_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.property
@pytest.mark.parametrize("entry", sorted(mixed_precision.RUNNERS))
def test_batchnorm_in_an_amp_graph_matches_the_oracle_for_its_dtype(entry: str) -> None:
    _skip_unless_runnable(entry)

    @QUICK
    @given(case=cases_for_amp(entry))
    def prop(case: Case) -> None:
        judged = check_amp(case, runner=mixed_precision.RUNNERS[entry], entry=entry)
        assert judged.ok, judged.message()

    prop()


@pytest.mark.parametrize(("entry", "dtype"), [("amp-sym", "bfloat16"), ("amp-gluon", "bfloat16")])
def test_amp_casts_batchnorms_data_to_bfloat16_and_keeps_its_parameters(entry: str, dtype: str) -> None:
    _skip_unless_runnable(entry)
    seen = mixed_precision.batchnorm_dtypes("amp-sym")
    assert seen == {"data": dtype, "gamma": "float32", "output": dtype}
    assert mixed_precision.RUNS_IN[entry] == dtype


def test_amp_float16_keeps_a_lone_batchnorm_in_float32_bit_for_bit() -> None:
    _skip_unless_runnable(mixed_precision.FP16_ENTRY)
    assert mixed_precision.batchnorm_dtypes(mixed_precision.FP16_ENTRY) == dict.fromkeys(
        ("data", "gamma", "output"), "float32"
    )

    @settings(max_examples=budget(0.05), deadline=None, derandomize=True, database=None)
    @given(case=cases_for_amp(mixed_precision.FP16_ENTRY))
    def same_bits(case: Case) -> None:
        amp, plain = mixed_precision.run_amp_fp16_sym(case), run_symbolic(case)
        for q, value in amp.items():
            assert np.array_equal(value, plain[q], equal_nan=True), f"{q} differs from plain sym for {case.describe()}"

    same_bits()


@pytest.mark.parametrize(("prop", "fault"), [("data_gradient", "dx_off_by_half_percent")])
def test_a_half_percent_gradient_error_is_caught(prop: str, fault: str) -> None:
    runner = functools.partial(bfloat16_batchnorm, fault=fault)

    def caught(case: Case) -> bool:
        judged = judge_amp(
            case, runner(case), entry="subject", kernel="subject", checked=PROPERTIES[prop], runs_in=BF16
        )
        return not judged.ok

    found = hypothesis_find(cases_for_amp("amp-sym", is_train=True), caught, settings=planted_search(200))
    again = judge_amp(found, runner(found), entry="subject", kernel="subject", checked=PROPERTIES[prop], runs_in=BF16)
    assert not again.ok


@settings(max_examples=budget(0.25), deadline=None, derandomize=True, database=None)
@given(case=cases_for_amp("amp-sym"))
def test_a_correct_bfloat16_subject_stays_within_the_bound(case: Case) -> None:
    """The soundness search of the new term: a correct float32 kernel whose y and dx are rounded to bfloat16."""
    judged = judge_amp(case, bfloat16_batchnorm(case), entry="subject", kernel="subject", runs_in=BF16)
    ratios = [r for q, r in judged.outcome.verdict.ratios.items() if q in ("y", "dx") and r > 0]
    hypothesis.target(math.log10(max(ratios, default=1e-20)), label="y, dx error/bound")
    assert judged.ok, judged.message()


@given(value=st.floats(-3.0000000054977558e38, 3.0000000054977558e38, width=32))
def test_bfloat16_rounding_is_to_nearest_within_its_unit_roundoff(value: float) -> None:
    rounded = to_bfloat16(np.array([value], np.float32))
    assert is_bfloat16(rounded)
    assert abs(float(rounded[0]) - value) <= UNIT_ROUNDOFF * abs(value) + 2.0**-134


NATIVE_CHILD = """
import numpy as np
from hypothesis import given, settings
from bnprops.judging.mixed_precision import check_amp
from bnprops.model.bfloat16 import to_bfloat16
from bnprops.model.case import Case
from bnprops.mx import mixed_precision
from bnprops.mx.runners import kernel_for
from bnprops.search.deployment import cases_for_amp
entry = mixed_precision.FP16_ENTRY

@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(case=cases_for_amp(entry))
def prop(case):
    assert kernel_for(case) == "native"
    judged = check_amp(case, runner=mixed_precision.RUNNERS[entry], entry=entry)
    assert judged.ok, judged.message()

prop()
x = to_bfloat16(np.arange(6, dtype=np.float32).reshape(2, 3))
case = Case(x=x, dy=x, gamma=np.ones(3, np.float32), beta=np.zeros(3, np.float32),
            moving_mean=np.zeros(3, np.float32), moving_var=np.ones(3, np.float32), axis=-1)
try:
    mixed_precision._run_converted(case, target="bfloat16", producer=True)
    print("bfloat16 ran")
except Exception as exc:
    print("bfloat16 raised:", str(exc).strip().splitlines()[-1])
"""


def test_on_the_native_kernel_float16_keeps_batchnorm_and_bfloat16_cannot_run() -> None:
    """KERNELS: amp-fp16-sym runs (and is judged) on the native kernel; the bfloat16 entries raise there."""
    if (reason := mixed_precision.unavailable_reason() or mixed_precision.bf16_unavailable_reason()) is not None:
        pytest.skip(reason)
    env = {**os.environ, "MXNET_MKLDNN_ENABLED": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NATIVE_CHILD)], env=env, capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert "bfloat16 raised: MXNetError: Unsupported type 12" in child.stdout, child.stdout
    assert "Unsupported type 12" in mixed_precision.NATIVE_BF16
    assert ONEDNN_ENABLED or mixed_precision.kernel_reason("amp-sym") == mixed_precision.NATIVE_BF16


@pytest.mark.parametrize("entry", sorted(mixed_precision.RUNNERS))
def test_the_amp_reproducer_computes_what_the_runner_does(entry: str) -> None:
    _skip_unless_runnable(entry)
    case = by_id("amp-bfloat16-eps-truncated").reproducer()  # type: ignore[operator, union-attr]
    namespace: dict[str, object] = {}
    exec(mixed_precision.snippet(case, entry), namespace)
    actual = namespace["actual"]
    expected = mixed_precision.RUNNERS[entry](case)
    assert isinstance(actual, dict)
    for q, value in actual.items():
        assert np.array_equal(value, expected[q]), f"{q}: reproducer {value}, runner {expected[q]}"


@pytest.mark.parametrize("entry", sorted(mixed_precision.BF16_ENTRIES))
def test_the_truncated_eps_is_the_recorded_deviation_and_a_fault_inside_it_is_caught(entry: str) -> None:
    _skip_unless_runnable(entry)
    deviation = by_id("amp-bfloat16-eps-truncated")
    if not deviation.releases.holds(mxversion.running()):
        pytest.skip(f"{deviation.id} holds in {deviation.releases.describe()}, not in {mxversion.running()}")
    case = deviation.reproducer()  # type: ignore[operator, union-attr]
    real = mixed_precision.RUNNERS[entry](case)
    judged = judge_amp(case, real, entry=entry)
    assert judged.ok, judged.message()
    assert {"dgamma", "moving_var"} <= dict((kd.id, q) for kd, q in judged.outcome.explained)[deviation.id]
    planted = {**real, "dgamma": real["dgamma"] * np.float32(1.005)}
    caught = judge_amp(case, planted, entry=entry)
    assert [m.kind for m in caught.outcome.unexpected if m.quantity == "dgamma"] == ["unrecorded"], caught.message()

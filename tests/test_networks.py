"""BatchNorm where networks put it (issue 15): after convolutions, dense layers, pooling, views, in every API.

In-network results must equal the plain call's on the input BatchNorm received (bit for bit where the
same kernel runs), the plain call must match the oracle, and a raise or a crash is a finding of its own.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnprops.judging import lifecycle
from bnprops.judging.deviations.onednn_blocked_input_native_batchnorm_backward_raises import (
    ONEDNN_BLOCKED_INPUT_NATIVE_BN_BACKWARD_RAISES,
)
from bnprops.judging.in_network import (
    ENTRY_OF,
    Result,
    check_chain,
    close_workers,
    same_kernel,
)
from bnprops.judging.known_deviations import NETWORK_DEVIATIONS
from bnprops.model.case import DTYPES
from bnprops.mx import mxversion
from bnprops.mx.network_kernel import APIS
from bnprops.mx.producers import Chain, chains, step
from bnprops.mx.runners import IN_PROCESS_BACKEND, network_unavailable_reason, unavailable_reason
from tests.helpers import budget

#: Shares of the profile's per-property budget (400 in dev and ci): 60 chains on the in-process backend,
#: 30 through the worker process on the other one.
SHARES = {"here": 0.15, "worker": 0.075}
ARRAYS = ("x", "dy", "gamma", "beta", "moving_mean", "moving_var")
OTHER_BACKEND = "native" if IN_PROCESS_BACKEND == "onednn" else "onednn"
#: The APIs whose chains this release can watch (gluon-hybrid needs register_op_hook, 1.6+; sym monitor_all, 1.5+).
WATCHABLE_APIS = [api for api in APIS if network_unavailable_reason(ENTRY_OF[api]) is None]


@pytest.fixture(scope="module", autouse=True)
def _stop_workers() -> object:
    yield
    close_workers()


@pytest.fixture(autouse=True)
def _api_available_in_this_release(request: pytest.FixtureRequest) -> None:
    """Skip, with the reason, an API whose chains this MXNet release cannot watch (no monitor_all, no
    register_op_hook) or whose chains raise by a recorded deviation of this release."""
    api = getattr(getattr(request.node, "callspec", None), "params", {}).get("api")
    if api is None:
        return
    reason = network_unavailable_reason(ENTRY_OF[api])
    for kd in NETWORK_DEVIATIONS:
        if reason is None and kd.holds_in(mxversion.running()) and kd.applies_to(conv2d_chain(api), IN_PROCESS_BACKEND):
            reason = f"MXNet {mxversion.running()}: {api} chains raise as recorded by {kd.id}"
    if reason is not None:
        pytest.skip(reason)


def conv2d_chain(api: str, *, channels: int = 16, **changes: object) -> Chain:
    """float32[2, 3, 6, 6] -> conv2d(channels, k3, pad 1) -> BatchNorm(axis=1), with ``changes``."""
    fields: dict[str, object] = {
        "api": api,
        "input_shape": (2, 3, 6, 6),
        "steps": (step("conv", dims=2, channels=channels, kernel=3, pad=1),),
        "seed": 7,
    }
    fields.update(changes)
    return Chain(**fields)  # type: ignore[arg-type]


def assert_passes(result: Result) -> None:
    assert result.ok, result.message()
    assert result.case is not None  # a known raise has no case; the properties below count those apart


@pytest.mark.property
def test_batchnorm_inside_a_network_matches_the_plain_call_and_the_oracle() -> None:
    @settings(max_examples=budget(SHARES["here"]))
    @given(chain=chains(dtypes=DTYPES, apis=WATCHABLE_APIS))
    def matches(chain: Chain) -> None:
        result = check_chain(chain, backend=IN_PROCESS_BACKEND)
        assert result.ok, result.message()

    matches()


@pytest.mark.property
def test_batchnorm_inside_a_network_matches_on_the_other_backend_too() -> None:
    if unavailable_reason(OTHER_BACKEND):
        pytest.skip(f"{OTHER_BACKEND}: {unavailable_reason(OTHER_BACKEND)}")

    @settings(max_examples=budget(SHARES["worker"]))
    @given(chain=chains(dtypes=DTYPES, apis=WATCHABLE_APIS))
    def matches(chain: Chain) -> None:
        result = check_chain(chain, backend=OTHER_BACKEND)
        assert result.ok, result.message()

    matches()


@pytest.mark.property
@pytest.mark.parametrize("channels", [8, 16, 64, 5])
@pytest.mark.parametrize("api", APIS)
def test_blocked_channel_counts_after_conv2d_match_in_every_api(api: str, channels: int) -> None:
    assert_passes(check_chain(conv2d_chain(api, channels=channels), backend=IN_PROCESS_BACKEND))


@pytest.mark.parametrize("api", APIS)
def test_channels_last_with_axis_minus_one_and_three_matches(api: str) -> None:
    for axis in (-1, 3):
        base = conv2d_chain(api, axis=axis)
        chain = base.with_(steps=(*base.steps, step("transpose", axes=(0, 2, 3, 1))))
        assert_passes(check_chain(chain, backend=IN_PROCESS_BACKEND))


@pytest.mark.parametrize("api", APIS)
def test_views_slice_and_reshape_after_a_convolution_match(api: str) -> None:
    base = conv2d_chain(api)
    for extra in (
        step("slice", axis=0, begin=1, end=2),
        step("slice", axis=1, begin=3, end=11),
        step("reshape", shape=(2, 16, 36)),
        step("concat"),
    ):
        assert_passes(check_chain(base.with_(steps=(*base.steps, extra)), backend=IN_PROCESS_BACKEND))


def test_the_same_kernel_rule_is_bit_for_bit_only_where_the_native_kernel_runs() -> None:
    result = check_chain(conv2d_chain("sym", channels=5), backend=IN_PROCESS_BACKEND)
    assert result.case is not None
    assert same_kernel(result.case, "native")
    assert not same_kernel(result.case, "onednn")
    # float64 takes the native kernel on either backend
    assert same_kernel(result.case.with_(**{f: getattr(result.case, f).astype("float64") for f in ARRAYS}), "onednn")


def test_a_chain_round_trips_through_json_and_describes_itself() -> None:
    chain = conv2d_chain("gluon-hybrid", axis=-1, fix_gamma=True)
    chain = chain.with_(steps=(*chain.steps, step("transpose", axes=(0, 2, 3, 1))))
    assert Chain.from_json(chain.to_json()) == chain
    assert json.loads(chain.to_json())["steps"][1] == {"op": "transpose", "axes": [0, 2, 3, 1]}
    assert "conv2d(16, k3, pad 1) -> transpose" in chain.describe()
    assert "axis=-1" in chain.describe()


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"api": "keras"}, "unknown api"),
        ({"axis": 4}, "out of range"),
        ({"steps": (step("conv", dims=1, channels=4, kernel=3, pad=0),)}, "conv1d needs a 3-D input"),
        ({"steps": (step("slice", axis=0, begin=1, end=5),)}, "does not fit"),
    ],
)
def test_an_impossible_chain_is_refused_with_the_reason(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        conv2d_chain(str(changes.pop("api", "nd")), **changes)


def test_a_step_with_the_wrong_parameters_is_refused() -> None:
    with pytest.raises(ValueError, match="takes"):
        step("conv", dims=2, channels=8)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"apis": ["keras"]}, "unknown api"),
        ({"max_steps": 0}, "max_steps"),
        ({"channels": [0]}, "channels"),
        ({"channel_axis_share": 2.0}, "channel_axis_share"),
        ({"first_steps": ["lstm"]}, "unknown first step"),
    ],
)
def test_the_chain_strategy_validates_its_arguments(options: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        chains(**options)  # type: ignore[arg-type]


@settings(max_examples=30)
@given(chain=chains(), data=st.data())
def test_drawn_chains_are_valid_and_put_batchnorm_where_asked(chain: Chain, data: st.DataObject) -> None:
    assert Chain.from_json(chain.to_json()) == chain
    assert len(chain.steps) <= 3
    assert -len(chain.bn_input_shape) <= chain.axis < len(chain.bn_input_shape)


def test_the_reproducer_rebuilds_the_chain_with_mxnet_and_numpy_only() -> None:
    import subprocess
    import sys

    chain = conv2d_chain("sym", channels=5)
    script = chain.snippet(backend="native")
    assert "import bnprops" not in script and "from bnprops" not in script
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr  # the native kernel: bit for bit
    assert "dx           bit for bit" in done.stdout


# Planted faults: the checks must catch them.


def test_an_in_network_dx_that_differs_from_the_plain_call_is_caught() -> None:
    chain = conv2d_chain("nd", channels=5)
    result = check_chain(chain, runner="tests.planted_networks:dx_one_element_off")
    assert [f.kind for f in result.findings] == ["differs"]
    assert "dx:" in result.findings[0].message
    assert "Reproduce with:" in result.message()


def test_a_one_ulp_difference_is_caught_where_the_same_kernel_runs() -> None:
    chain = conv2d_chain("sym", channels=5, dtype="float64")  # the native kernel on either backend: bit for bit
    result = check_chain(chain, runner="tests.planted_networks:moving_var_one_ulp_off")
    assert [f.kind for f in result.findings] == ["differs"]
    assert "moving_var" in result.findings[0].message


def test_a_chain_that_raises_is_reported_as_raises_with_its_message() -> None:
    result = check_chain(conv2d_chain("gluon"), runner="tests.planted_networks:raises")
    assert [(f.kind, f.message) for f in result.findings] == [
        ("raises", "RuntimeError: planted: the producer refused this chain")
    ]
    assert not result.ok


def test_a_chain_that_kills_its_process_is_reported_as_crashes_and_the_next_one_runs() -> None:
    chain = conv2d_chain("nd", channels=5)
    crashed = check_chain(chain, isolate=True, runner="tests.planted_networks:aborts")
    assert [f.kind for f in crashed.findings] == ["crashes"]
    assert "died (exit status" in crashed.findings[0].message
    assert check_chain(chain, isolate=True).ok  # a fresh worker process


def test_a_wrong_plain_call_is_judged_by_the_oracle() -> None:
    from bnprops.mx.backends import runner_for

    real = runner_for("nd", IN_PROCESS_BACKEND)

    def off(case: object) -> dict[str, np.ndarray]:
        out = real(case)  # type: ignore[arg-type]
        out["dbeta"] = out["dbeta"] * 1.01
        return out

    result = check_chain(conv2d_chain("nd", channels=5), plain_runner=off)
    assert {f.kind for f in result.findings} == {"differs", "oracle"}


# MXNet's own failure inside networks, recorded: it must still reproduce, and only where recorded.


@pytest.mark.parametrize("api", APIS)
def test_conv1d_with_blocked_channels_then_batchnorm_raises_in_backward_as_recorded(api: str) -> None:
    kd = ONEDNN_BLOCKED_INPUT_NATIVE_BN_BACKWARD_RAISES
    if kd.needs_backend != IN_PROCESS_BACKEND:
        pytest.skip(f"{kd.id} needs {kd.needs_backend}")
    chain = Chain(api=api, input_shape=(2, 1, 3), steps=(step("conv", dims=1, channels=8, kernel=1, pad=0),), seed=0)
    result = check_chain(chain)
    assert [f.kind for f in result.findings] == ["raises"]
    assert list(result.known) == [kd], result.findings[0].message
    assert result.ok
    assert check_chain(chain, backend="native").findings == ()  # the native kernel has no blocked layouts


def test_the_recorded_network_deviation_reproduces_from_its_own_chain() -> None:
    kd = ONEDNN_BLOCKED_INPUT_NATIVE_BN_BACKWARD_RAISES
    if kd.needs_backend != IN_PROCESS_BACKEND:
        pytest.skip(f"{kd.id} needs {kd.needs_backend}")
    result = check_chain(kd.reproducer())
    assert [k.id for k in result.known] == [kd.id] and result.ok


# The model's life cycle (part 3).


@pytest.mark.parametrize("hybridize", [True, False])
def test_train_evaluate_train_keeps_moving_statistics_as_a_plain_call_would(hybridize: bool) -> None:
    assert lifecycle.train_evaluate_train(hybridize=hybridize) == []


def test_train_evaluate_train_with_a_channel_count_onednn_does_not_block() -> None:
    assert lifecycle.train_evaluate_train(channels=5) == []


def test_an_exported_and_imported_model_computes_what_the_original_did() -> None:
    assert lifecycle.export_and_import() == []


@pytest.mark.parametrize("hybridize", [True, False])
def test_a_float16_cast_model_trains_and_infers_as_a_plain_float16_call(hybridize: bool) -> None:
    assert lifecycle.float16_cast(hybridize=hybridize) == []


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_a_symbol_with_inferred_shapes_and_types_binds_and_matches(dtype: str) -> None:
    assert lifecycle.unexplained(lifecycle.symbolic_inference(dtype=dtype)) == []

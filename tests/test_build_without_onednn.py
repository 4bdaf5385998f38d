"""A build without oneDNN (mxnet-native, the 1.3-1.6 'mxnet' wheels): what still runs, and on which kernel.

These play such a build inside whichever MXNet is installed, so that CI, which runs the oneDNN wheel, keeps
what a fresh mxnet-native 1.8.0 environment showed: the onednn backend skipped with the reason, and a case
oneDNN hands to the native kernel anyway replayed there.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnprops.mx import runners
from bnprops.mx.backends import runner_for, same_kernel_backend
from bnprops.mx.runners import BackendUnavailable
from tests.helpers import one_channel_case


@pytest.fixture
def no_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runners, "ONEDNN_BUILT", False)


def test_a_case_the_native_kernel_runs_on_either_backend_replays_natively_without_onednn(no_onednn: None) -> None:
    for dtype in ("float16", "float64"):
        case = one_channel_case([1.0, 2.0, 4.0], dtype=dtype)
        assert same_kernel_backend(case, "onednn") == "native", dtype
        assert same_kernel_backend(case, "native") == "native", dtype
    float32 = one_channel_case([1.0, 2.0, 4.0], dtype="float32")
    assert same_kernel_backend(float32, "onednn", entry="sym-v1") == "native"  # BatchNorm_v1 has no oneDNN kernel


def test_a_case_that_needs_onednn_is_refused_with_the_reason_without_onednn(no_onednn: None) -> None:
    # 4-D with channels on axis 1: oneDNN's in every release that has it (1.7 took no other shape)
    ramp = np.arange(8, dtype="float32").reshape(2, 1, 2, 2)
    float32 = one_channel_case([1.0, 2.0, 4.0], dtype="float32").with_(x=ramp, dy=ramp[::-1].copy())
    with pytest.raises(BackendUnavailable, match="built without oneDNN"):
        same_kernel_backend(float32, "onednn")
    with pytest.raises(BackendUnavailable, match="built without oneDNN"):
        runner_for("sym", "onednn")
    assert runners.unavailable_reason("native") is None

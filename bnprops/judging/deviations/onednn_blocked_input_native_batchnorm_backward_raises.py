"""oneDNN: a blocked convolution output feeding a BatchNorm the native kernel runs cannot be trained."""

from __future__ import annotations

from bnprops.judging.declarations import NetworkDeviation
from bnprops.mx import mxversion
from bnprops.mx.producers import Chain, step


def _blocked_input_to_native_bn(chain: Chain, backend: str) -> bool:
    """A convolution whose channel count oneDNN blocks (a multiple of 8) feeds a BatchNorm that oneDNN does
    not run (only 4-D input with axis written as 1 takes its path), on the oneDNN backend, float32."""
    if backend != "onednn" or chain.dtype != "float32":
        return False
    blocked = any(dict(s)["op"] == "conv" and dict(s)["channels"] % 8 == 0 for s in chain.steps)
    onednn_bn = len(chain.bn_input_shape) == 4 and chain.axis == 1
    return blocked and not onednn_bn


ONEDNN_BLOCKED_INPUT_NATIVE_BN_BACKWARD_RAISES = NetworkDeviation(
    id="onednn-blocked-input-native-batchnorm-backward-raises",
    summary="oneDNN: a convolution with 8k output channels feeding a BatchNorm that the native kernel runs "
    "cannot be trained: backward raises 'Check failed: !is_view'",
    kind="raises",
    signature="Check failed: !is_view",
    conditions="oneDNN, float32: a convolution with 8k output channels (a blocked layout) feeds BatchNorm whose "
    "input is not 4-D or whose axis is not written as 1 (so the native kernel runs it): backward raises; "
    "forward works",
    applies=_blocked_input_to_native_bn,
    evidence="Found by tests/test_networks.py's chains (issue 15): nd float32[2,1,3] -> conv1d(8, k1) -> "
    "BatchNorm(axis=1) raises MXNetError 'Check failed: !is_view' (src/ndarray/ndarray.cc:649) in backward, in "
    "nd, gluon, gluon-hybrid and sym alike; with 3 or 5 channels, with Conv2D(8) + BatchNorm(axis=1) (oneDNN's "
    "own BatchNorm) and with MXNET_MKLDNN_ENABLED=0 it trains. In gluon: nn.Conv1D(8, 3, in_channels=2) then "
    "nn.BatchNorm() raises on y.backward(). The native BatchNorm backward gets the convolution's blocked "
    "(oneDNN-layout) array as a view it cannot reorder in place.",
    reproducer=lambda: Chain(
        api="nd", input_shape=(2, 1, 3), steps=(step("conv", dims=1, channels=8, kernel=1, pad=0),), seed=0
    ),
    upstream="apache/mxnet#20858 (v1.8.x: MKLDNN BatchNorm with an even number of channels, backward raises "
    "'Check failed: !is_view'; #19150 was the forward's, on the v1.7.x branch after 1.7.0)",
    releases=mxversion.Releases(
        since="1.8.0",
        probed=(("1.7.0", False), ("1.8.0", True), ("1.9.1", True)),
        why="absent in 1.7.0 (DNNL v1.3.0), present from 1.8.0 (oneDNN v1.7.0): apache/mxnet#19150 reports the "
        "forward's form on the v1.7.x branch after the oneDNN upgrade, apache/mxnet#20858 the backward's in 1.8",
    ),
    needs_backend="onednn",
)

DEVIATIONS = (ONEDNN_BLOCKED_INPUT_NATIVE_BN_BACKWARD_RAISES,)

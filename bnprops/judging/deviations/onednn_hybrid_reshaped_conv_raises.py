"""oneDNN, hybridized: a step after a reshaped convolution output raises (the producer, not BatchNorm)."""

from __future__ import annotations

from bnprops.judging.declarations import NetworkDeviation, none_found
from bnprops.mx import mxversion
from bnprops.mx.producers import Chain, Step, step


def _op_after_reshaped_conv(chain: Chain, backend: str) -> bool:
    """On oneDNN, float32: a step (pooling, transpose, ...) after a reshape of a convolution's output."""
    if backend != "onednn" or chain.dtype != "float32":
        return False
    ops = [dict(s)["op"] for s in chain.steps]
    if "conv" not in ops:
        return False
    after_conv = ops[ops.index("conv") + 1 :]
    return "reshape" in after_conv and len(after_conv[after_conv.index("reshape") + 1 :]) > 0


def _reshaped_conv_then(last: Step) -> Chain:
    """The shortest chain that shows either: a 3-D convolution, a reshape of its output, then ``last``."""
    return Chain(
        api="gluon-hybrid",
        input_shape=(2, 1, 3, 3, 3),
        steps=(step("conv", dims=3, channels=8, kernel=1, pad=0), step("reshape", shape=(2, 8, 27)), last),
        seed=0,
    )


#: Both raises: the same releases, probed alike, and the same search upstream.
_RELEASES = mxversion.Releases(
    probed=(("1.7.0", True), ("1.8.0", True), ("1.9.1", True)),
    why="needs gluon-hybrid chains (register_op_hook, 1.6) and oneDNN (1.7+)",
    basis="gluon-hybrid chains need HybridBlock.register_op_hook (1.6.0) and the 'mxnet' wheels have oneDNN "
    "from 1.7.0: 1.3.1-1.6.0 cannot express it; probed with bnprops.judging.release_probe in each "
    "release's environment",
)
_UPSTREAM = none_found(
    "searched apache/mxnet issues for 'mkldnn hybridize reshape pooling dimensions are invalid' (no "
    "report of this one); the same class, a hybridized convolution whose output is reshaped failing under "
    "MKLDNN: apache/mxnet#14766 and apache/mxnet#14093 (closed)"
)


ONEDNN_HYBRID_POOL_AFTER_RESHAPED_CONV_RAISES = NetworkDeviation(
    id="onednn-hybrid-pool-after-reshaped-conv-raises",
    releases=_RELEASES,
    upstream=_UPSTREAM,
    summary="oneDNN, hybridized: pooling a reshaped convolution output raises 'dimensions are invalid' (the "
    "producer fails; BatchNorm is not involved)",
    kind="raises",
    signature="dimensions are invalid",
    conditions="gluon-hybrid (static_alloc, static_shape) on oneDNN, float32: a convolution, then a reshape of "
    "its output, then a pooling layer; the network raises in its forward with or without the BatchNorm after "
    "it; the same network imperatively (gluon, nd) trains",
    apis=frozenset({"gluon-hybrid"}),
    applies=_op_after_reshaped_conv,
    evidence="Found by tests/test_networks.py's chains (a fresh Hypothesis database): gluon-hybrid float32"
    "[2, 1, 3, 3, 3] -> conv3d(8, k1, pad 0) -> reshape((2, 8, 27)) -> maxpool(2) -> BatchNorm raises MXNetError "
    "'dimensions are invalid'; the same HybridSequential without the BatchNorm raises too, and without "
    "hybridize() both train. A producer's failure, recorded so that it is not reported as BatchNorm's.",
    reproducer=lambda: _reshaped_conv_then(step("pool", kind="max", kernel=2)),
    needs_backend="onednn",
)

ONEDNN_HYBRID_REORDER_AFTER_RESHAPED_CONV_RAISES = NetworkDeviation(
    id="onednn-hybrid-reorder-after-reshaped-conv-raises",
    releases=_RELEASES,
    upstream=_UPSTREAM,
    summary="oneDNN, hybridized: another op on a reshaped convolution output raises 'could not create a primitive "
    "descriptor for a reorder primitive' (the producer fails; BatchNorm is not involved)",
    kind="raises",
    signature="could not create a primitive descriptor for a reorder primitive",
    conditions="gluon-hybrid (static_alloc, static_shape) on oneDNN, float32: a convolution, then a reshape of "
    "its output, then another step (a transpose); the network raises in its forward with or without the "
    "BatchNorm after it; the same network imperatively (gluon, nd) trains",
    apis=frozenset({"gluon-hybrid"}),
    applies=_op_after_reshaped_conv,
    evidence="Found by tests/test_networks.py's chains (a fresh Hypothesis database): gluon-hybrid float32"
    "[2, 1, 3, 3, 3] -> conv3d(8, k1, pad 0) -> reshape((2, 8, 27)) -> transpose((0, 1, 2)) -> BatchNorm raises "
    "MXNetError 'could not create a primitive descriptor for a reorder primitive'; the same HybridSequential "
    "without the BatchNorm raises too, and without "
    "hybridize() both train. A producer's failure, recorded so that it is not reported as BatchNorm's.",
    reproducer=lambda: _reshaped_conv_then(step("transpose", axes=(0, 1, 2))),
    needs_backend="onednn",
)

DEVIATIONS = (
    ONEDNN_HYBRID_POOL_AFTER_RESHAPED_CONV_RAISES,
    ONEDNN_HYBRID_REORDER_AFTER_RESHAPED_CONV_RAISES,
)

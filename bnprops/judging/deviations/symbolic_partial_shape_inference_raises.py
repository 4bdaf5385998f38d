"""Before MXNet 1.8, BatchNorm's shape inference raises on a data shape it does not know (apache/mxnet#18348)."""

from __future__ import annotations

from bnprops.judging.declarations import LifecycleDeviation
from bnprops.mx import mxversion

SYMBOLIC_PARTIAL_SHAPE_INFERENCE_RAISES = LifecycleDeviation(
    id="symbolic-partial-shape-inference-raises",
    summary="Before MXNet 1.8, Symbol.infer_shape_partial() with no shapes raises in BatchNorm's shape function "
    "instead of leaving the shapes unknown",
    check="symbolic-inference",
    what="raises:infer_shape_partial",
    signature="Error in operator bn",
    conditions="MXNet < 1.8.0 (probed: 1.3.1 to 1.7.0 raise, 1.8.0 and 1.9.1 do not); a symbol holding BatchNorm "
    "whose data shape is not given (infer_shape_partial with no arguments, as partial shape inference in a "
    "model whose input shape comes later does); every dtype, either kernel; infer_shape with the data shape works",
    evidence="The life-cycle check symbolic-inference in each release's environment (`bnprops versions`' "
    "environments): 1.3.1 and 1.4.1 raise 'batch_norm.cc:330: Check failed: channelAxis < dshape.ndim() "
    "(1 vs. 0) Channel axis out of range: 1'; 1.5.1, 1.6.0 and 1.7.0 raise 'tuple.h: Check failed: i >= 0 && "
    "i < ndim(): index = 1 must be in range [0, -1)'; 1.8.0 and 1.9.1 return unknown shapes. Source: 1.7.0's "
    "BatchNormShape indexes dshape[channelAxis] unconditionally; 1.8.0's returns false first when "
    "!mxnet::ndim_is_known(dshape) (commit 6b568fd2c1).",
    reproducer=lambda: {
        "check": "symbolic-inference",
        "dtype": "float32",
        "channels": 2,
        "hybridize": False,
        "seed": 0,
    },
    upstream="apache/mxnet#18348 ('Fix FInferShape for some ops to support partial type inference': BatchNormShape "
    "returns false for an unknown data shape), on master; backported to v1.x by apache/mxnet#18895 ('Backporting "
    "backward inference from 2.x #18348 and #18378'), first released in 1.8.0",
    releases=mxversion.Releases(
        fixed="1.8.0",
        probed=(
            ("1.3.1", True),
            ("1.4.1", True),
            ("1.5.1", True),
            ("1.6.0", True),
            ("1.7.0", True),
            ("1.8.0", False),
            ("1.9.1", False),
        ),
        why="apache/mxnet#18348, backported to v1.x by #18895, first released in 1.8.0",
    ),
)

DEVIATIONS = (SYMBOLIC_PARTIAL_SHAPE_INFERENCE_RAISES,)

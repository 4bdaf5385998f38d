"""Before MXNet 1.7, a monitor_all executor cannot run BatchNorm's backward (apache/mxnet#17049)."""

from __future__ import annotations

from bnprops.judging.declarations import NetworkDeviation
from bnprops.mx import mxversion
from bnprops.mx.producers import Chain

MONITOR_ALL_BATCHNORM_BACKWARD_RAISES = NetworkDeviation(
    id="monitor-all-batchnorm-backward-raises",
    summary="Before MXNet 1.7, a sym executor monitored with monitor_all=True cannot run BatchNorm's backward: "
    "'Check failed: opnode.exec->in_array.size() == input_names.size() (8 vs. 1)'",
    kind="raises",
    signature="in_array.size() == input_names.size()",
    conditions="MXNet < 1.7.0 (probed: 1.5.1 and 1.6.0; 1.3/1.4 have no monitor_all); an Executor with "
    "set_monitor_callback(..., monitor_all=True), as bnprops's sym chains watch BatchNorm's backward node; "
    "any chain, even BatchNorm alone; every dtype; forward works, backward raises",
    apis=frozenset({"sym"}),
    evidence="Found by `bnprops versions` (the fuzz job's sym chains) on 1.5.1 and 1.6.0: sym float16[2, 8, 1, 1] "
    "-> BatchNorm raises in Executor.backward at graph_executor.cc:1346 (1.5.1) / :1406 (1.6.0); standalone: "
    "simple_bind BatchNorm, set_monitor_callback(cb, monitor_all=True), forward(is_train=True), backward(ones) "
    "raises on 1.5.1 and 1.6.0, and monitors 33 arrays on 1.7.0. The backward node has 8 inputs, but "
    "_backward_BatchNorm registered no set_num_inputs (default 1) before 1.7; from 1.7 batch_norm.cc declares "
    "set_num_inputs(8).",
    reproducer=lambda: Chain(api="sym", input_shape=(2, 8, 1, 1), steps=(), seed=0),
    upstream="apache/mxnet#17049 ('Fix operators lying about their number of inputs': backward operators that "
    "advertise the wrong number of inputs break Monitor; it added the missing set_num_inputs), in 1.7.0",
    releases=mxversion.Releases(
        since="1.5.0",
        fixed="1.7.0",
        probed=(("1.5.1", True), ("1.6.0", True), ("1.7.0", False), ("1.8.0", False), ("1.9.1", False)),
        why="apache/mxnet#17049 (set_num_inputs for backward operators), first released in 1.7.0",
    ),
)

DEVIATIONS = (MONITOR_ALL_BATCHNORM_BACKWARD_RAISES,)

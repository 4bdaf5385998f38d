"""A second backward of one recorded forward updates the moving statistics again."""

from __future__ import annotations

from bnprops.judging.declarations import SequenceDeviation, none_found
from bnprops.mx import mxversion

RETAINED_GRAPH_UPDATES_AGAIN = SequenceDeviation(
    id="retained-graph-backward-updates-again",
    releases=mxversion.Releases(
        probed=(
            ("1.5.1", True),
            ("1.6.0", True),
            ("1.7.0", True),
            ("1.8.0", True),
            ("1.9.1", True),
        ),
        basis="the moving statistics are updated in BatchNorm's backward (batch_norm.cc, DoBackward: 1.3.1 line "
        "241, the same in 1.9.1), once per backward, so 1.3.1 and 1.4.1 (whose nd sessions lack "
        "mx.util.np_shape, not probed) should show it too; probed by the sequence checks' replay of its "
        "shortest sequence (tests/test_training.py) in each release's environment",
    ),
    upstream=none_found(
        "searched apache/mxnet issues for 'batchnorm backward twice retain_graph running mean updated again' "
        "(no MXNet report)"
    ),
    summary="A second backward through the same recorded graph updates the moving statistics a second time",
    conditions="batch statistics (training, use_global_stats=False); a second backward of one forward: "
    "autograd backward(retain_graph=True) again (nd, npx, gluon, gluon-hybrid) or a second Executor.backward() "
    "(sym); both CPU kernels (oneDNN float32, native float16/32/64), with bnprops's NaiveEngine",
    model="moving = m * moving + (1 - m) * batch statistic of the recorded forward, once more per backward: "
    "the single-call oracle's update applied to the state before the second backward",
    evidence="x float32 (4, 2) (np.random.seed(0) randn), momentum 0.9, moving (0, 1): after the first backward "
    "moving_mean = [0.139, 0.0378], after the second [0.264, 0.0718] = 0.9 * 0.139 + 0.1 * [1.390, 0.378] "
    "(the batch mean); dgamma stays [0.164, 2.010] (written again). The operator's backward updates the "
    "moving statistics (batch_norm.cc), and each backward of a retained graph runs it again. Found by "
    "tests/test_training.py's state machines (issue 10) on nd, npx, gluon, gluon-hybrid and sym.",
    sequence=("train_step", "backward_again"),
    shortest_on=("nd", {}),
)

DEVIATIONS = (RETAINED_GRAPH_UPDATES_AGAIN,)

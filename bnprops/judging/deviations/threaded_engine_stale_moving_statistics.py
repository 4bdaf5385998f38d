"""Under the threaded engine a sym executor's moving statistics can be read before their update."""

from __future__ import annotations

from bnprops.judging.declarations import PROBED_IN_EVERY_RELEASE, SequenceDeviation
from bnprops.mx import mxversion

THREADED_ENGINE_STALE_MOVING_STATS = SequenceDeviation(
    id="threaded-engine-stale-moving-statistics",
    releases=mxversion.Releases(
        probed=PROBED_IN_EVERY_RELEASE.probed,
        basis="apache/mxnet#18644 (v1.x backport #18654, first in 1.8.0) synchronised the gluon path only; probed "
        "by the threaded-engine probe of tests/test_training.py (3 stale reads in at most 3000 sym steps) in "
        "each release's environment",
    ),
    summary="Under MXNet's threaded engine, the moving statistics read right after a sym executor's backward can "
    "still hold their values from before the update",
    conditions="MXNET_ENGINE_TYPE a threaded engine (MXNet's default, ThreadedEnginePerDevice; bnprops runs "
    "NaiveEngine unless the user sets another, so its checks cannot see this); mx.sym executor; a training step "
    "(batch statistics); the moving statistics read (asnumpy) right after Executor.backward(); both CPU kernels. "
    "nd and gluon under autograd did not show it in the same probe",
    model="each read of the moving statistics returns either their values before the step (bit for bit) or the "
    "single-call oracle's update; after mx.nd.waitall() always the update. BatchNorm's backward writes the "
    "auxiliary states, but the engine does not count it as a write to those arrays, so asnumpy() does not "
    "wait for it",
    evidence="300 sym training steps (random shapes (1-5, 1-4, 3), momentum 0.9, moving (0, 1)), moving_mean read "
    "right after backward: 6 to 41 of 300 read [0, ...] (not updated) on oneDNN, 7 of 300 on the native kernel; "
    "with mx.nd.waitall() before the read, 0 of 300; under NaiveEngine 0 of 300. Probe: tests/test_training.py "
    "(test_the_threaded_engine_can_show_moving_statistics_before_their_update).",
    sequence=("train_step",),
    upstream="apache/mxnet#18610 (BatchNorm running variables not properly synchronized on CPU; closed as fixed "
    "for gluon); 1.9.1's sym executor still shows it",
    entries=frozenset({"sym"}),
    engine="ThreadedEnginePerDevice",
)

DEVIATIONS = (THREADED_ENGINE_STALE_MOVING_STATS,)

"""The worker process that serves the other CPU backend: one process for many cases, restarted after a crash."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from bnprops.fuzzing import plan
from bnprops.fuzzing.worker import HELPERS_FIRST_S, start_helpers
from bnprops.model.case import Case
from bnprops.mx import worker as mx_worker
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND, BackendUnavailable
from bnprops.mx.worker import Worker, WorkerCrashed
from tests.helpers import skip_unless_available

OTHER = "native" if IN_PROCESS_BACKEND == "onednn" else "onednn"


def small_case(value: float = 1.0) -> Case:
    x = np.array([[value, 2.0], [3.0, -1.0]], dtype="float32")
    return Case(
        x=x,
        dy=np.ones_like(x),
        gamma=np.ones(2, "float32"),
        beta=np.zeros(2, "float32"),
        moving_mean=np.zeros(2, "float32"),
        moving_var=np.ones(2, "float32"),
    )


def test_one_worker_process_serves_many_cases_and_restarts_after_a_crash() -> None:
    skip_unless_available(OTHER)  # a build without oneDNN has no other CPU kernel to serve
    worker = Worker(OTHER)
    try:
        first = worker.run("sym", small_case())
        pid = worker.pid
        for v in (2.0, 3.0, 4.0):
            worker.run("nd", small_case(v))
        assert worker.pid == pid and worker.starts == 1
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match="died"):
            worker.run("sym", small_case())
        again = worker.run("sym", small_case())
        assert worker.starts == 2 and worker.pid != pid
        np.testing.assert_array_equal(first["y"], again["y"])
    finally:
        worker.close()
    assert not worker.alive()


def test_the_worker_runs_with_the_other_kernel_and_reraises_the_runners_errors() -> None:
    skip_unless_available(OTHER)
    worker = Worker(OTHER)
    try:
        bad = small_case().with_(x=np.zeros((0, 2), "float32"), dy=np.zeros((0, 2), "float32"))
        with pytest.raises(Exception, match=r"simple_bind|shape"):
            worker.run("sym", bad)
        assert worker.starts == 1  # an error in the runner is not a crash
    finally:
        worker.close()


def test_a_worker_that_cannot_start_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.executable", "/nonexistent/python")
    with pytest.raises(BackendUnavailable, match="cannot start"):
        Worker(OTHER).run("sym", small_case())


def test_gpu_backends_explain_why_they_cannot_run_here() -> None:
    import mxnet as mx

    if mx.context.num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailable, match="no GPU"):
        runner_for("sym", "cudnn")


def test_a_campaign_of_minutes_has_its_helpers_ready_before_its_search_and_a_short_one_starts_none(
    tmp_path: Path,
) -> None:
    other = next(b for b in ("onednn", "native") if b != IN_PROCESS_BACKEND)
    skip_unless_available(other)
    quiet = {"network_every": 0, "sequence_every": 0, "member_every": 0, "lifecycle_every": 0}
    helper = mx_worker.worker_for(other)
    helper.close()
    short = plan.CampaignConfig(out=tmp_path, time_limit=HELPERS_FIRST_S / 2, **quiet)
    start_helpers(short, [("sym", other)], runner_factory=runner_for)
    assert not helper.alive(), "a short campaign started its helper before its first call"
    start_helpers(
        plan.CampaignConfig(out=tmp_path, time_limit=HELPERS_FIRST_S, **quiet),
        [("sym", other)],
        runner_factory=runner_for,
    )
    starts = helper.starts
    assert helper.alive(), "the helper of a campaign of minutes is not running after start_helpers"
    outputs = helper.run("sym", small_case())
    assert "y" in outputs and helper.starts == starts, f"the first call started the helper again ({helper.starts})"

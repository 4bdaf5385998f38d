"""The worker process that serves the other CPU backend: one process for many cases, restarted after a crash."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from bnprops.model.case import Case
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

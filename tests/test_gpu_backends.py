"""The GPU backends without a GPU: their bound, their kernels, their recorded semantics, and the skip that says why.

A correct GPU kernel (emulated) is judged through the same judge() a GPU run calls, with the backend's name: the
backend, not a cache, picks the GPU bound. The GPU deviations (read in source, not yet run on hardware) apply on
their own kernel only.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnprops.judging.declarations import FROM_SOURCE
from bnprops.judging.judgement import judge, predictions
from bnprops.judging.known_deviations import KNOWN_DEVIATIONS, KnownDeviation
from bnprops.model.case import QUANTITIES
from bnprops.model.evaluation import evaluate
from bnprops.mx.runners import ALL_BACKENDS, GPU_BACKENDS, REDUCTION_OF_BACKEND, kernel_for, unavailable_reason
from tests.emulated import emulate, welford_case

GPU_DEVIATIONS = [kd for kd in KNOWN_DEVIATIONS if kd.needs_backend in GPU_BACKENDS]


def test_each_backend_names_the_reduction_class_its_bound_covers() -> None:
    assert {b: REDUCTION_OF_BACKEND.get(b, "cpu") for b in ALL_BACKENDS} == {
        "onednn": "cpu",
        "native": "cpu",
        "cudnn": "gpu",
        "cuda": "gpu",
    }


@pytest.mark.parametrize("backend", ["onednn", "native", "cudnn", "cuda"])
def test_a_welford_kernels_outputs_pass_on_the_gpu_backends_only(backend: str) -> None:
    case = welford_case()
    outputs = emulate(case, summation="sequential", variance="welford")
    outcome = judge(case, outputs, entry="nd", kernel=kernel_for(case, backend), checked=QUANTITIES, backend=backend)
    if backend == "cudnn":
        # Within the GPU bound; but this kernel keeps the CPU's moving statistics, so cuDNN's recorded semantics
        # come out stale: what a GPU run would say were the source read wrong.
        assert not outcome.unexpected, outcome.message()
        assert {kd.id for kd in outcome.stale} == {
            "cudnn-running-variance-unbiased",
            "cudnn-forward-updates-moving-statistics",
        }
    elif backend == "cuda":
        assert outcome.ok, outcome.message()
    else:
        assert {m.quantity for m in outcome.unexpected} >= {"moving_var", "invstd"}


def test_a_gpu_backend_refuses_an_evaluation_made_for_the_cpu_bound() -> None:
    case = welford_case()
    outputs = emulate(case, summation="sequential", variance="welford")
    with pytest.raises(ValueError, match="needs bounds for 'gpu' reductions, not 'cpu'"):
        judge(case, outputs, entry="nd", kernel="cuda", checked=QUANTITIES, backend="cuda", evaluation=evaluate(case))


def test_use_global_stats_on_the_cudnn_backend_runs_mxnets_cuda_kernel() -> None:
    case = welford_case()
    assert kernel_for(case, "cudnn") == "cudnn"
    assert kernel_for(case.with_(use_global_stats=True), "cudnn") == "cuda"
    assert kernel_for(case.with_(use_global_stats=True), "cuda") == "cuda"


@pytest.mark.parametrize("kd", GPU_DEVIATIONS, ids=[kd.id for kd in GPU_DEVIATIONS])
def test_each_gpu_deviation_applies_on_its_own_kernel_only(kd: KnownDeviation) -> None:
    case = kd.reproducer()
    entry = "nd"
    assert kd.needs_backend is not None
    for kernel in ("onednn", "native", "cudnn", "cuda"):
        found = [k for k, _ in predictions(case, entry=entry, kernel=kernel, scoped=False) if k is kd]
        assert bool(found) == (kernel == kd.needs_backend), (kd.id, kernel)
    assert FROM_SOURCE in kd.summary and FROM_SOURCE in kd.evidence
    assert not kd.releases.probed and "(1.9.1)" in kd.evidence  # read in 1.9.1's source, never probed


def test_the_cudnn_moving_variance_model_is_the_unbiased_update() -> None:
    [kd] = [d for d in GPU_DEVIATIONS if d.id == "cudnn-running-variance-unbiased"]
    case = kd.reproducer().with_(momentum=0.25)  # x = 1, 2, 4: biased variance 14/9, unbiased 7/3
    [(_, p)] = [(k, p) for k, p in predictions(case, entry="nd", kernel="cudnn", scoped=False) if k is kd]
    assert p.quantity == "moving_var" and p.certain
    assert p.values is not None and np.allclose(p.values, 0.25 * 1 + 0.75 * 7 / 3)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_gpu_backend_without_a_gpu_says_why(backend: str) -> None:
    reason = unavailable_reason(backend)
    if reason is None:
        pytest.skip(f"this machine has a GPU: the {backend} backend runs")
    assert reason.startswith("no GPU")

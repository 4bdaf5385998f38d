"""The GPU bound's sharpness on emulated GPU kernels: tightness per decade of M, and a planted 0.5% fault caught.

The subjects are tests/emulated.py's GPU kernels (MXNet's CUDA arithmetic with warp-tree sums, Welford's updates
in thread-strided chains or blocks merged by Chan's formula), on bnprops tightness's seeded cases (conv-like or
dense, ordinary data; detection: heads correlated with xhat, well-conditioned quantities only). Soundness is
test_error_model_soundness's search; here every measured ratio must also stay within both bounds. Cases per
decade scale with the profile (tests.helpers.budget); ``pytest -s`` prints the tables.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bnprops.commands import detection, tightness_cases
from bnprops.judging.comparator import compare
from bnprops.model.case import Case
from bnprops.model.evaluation import evaluate
from tests.emulated import emulate
from tests.helpers import budget

#: The GPU kernels measured, as (summation, variance, gpu) for emulate().
GPU_KERNELS = (
    ("warp-tree", "two-pass", True),
    ("warp-tree", "welford-strided", True),
    ("pairwise", "welford", True),
)
MEASURED = ("y", "dx", "dgamma", "dbeta", "moving_var")
DECADES = (1, 2, 3, 4, 5, 6)
#: Cases per decade: 2 in dev and ci (1 at 10^6, where a case takes seconds), scaled by the profile.
CASES = {d: budget(0.005) if d < 6 else budget(0.0025) for d in DECADES}
SEED = 0


@dataclasses.dataclass(frozen=True)
class Ratios:
    """Per quantity, error / bound of every (case, kernel) whose result is not the oracle's to the last bit."""

    deterministic: dict[str, list[float]]
    probabilistic: dict[str, list[float]]


def measure(decade: int, cases: int, *, dtype: str = "float32") -> Ratios:
    det: dict[str, list[float]] = {q: [] for q in MEASURED}
    prob: dict[str, list[float]] = {q: [] for q in MEASURED}
    for index in range(cases):
        rng = np.random.default_rng([SEED, decade, index])
        case = tightness_cases.draw_case(rng, decade, dtype, "ordinary")
        ev = evaluate(case, reduction="gpu")
        for summation, variance, gpu in GPU_KERNELS:
            verdict = compare(case, emulate(case, summation=summation, variance=variance, gpu=gpu), evaluation=ev)
            for q in MEASURED:
                if verdict.ratios.get(q, 0.0) > 0:
                    det[q].append(verdict.ratios[q])
                    prob[q].append(verdict.sharp_ratios[q])
    return Ratios(det, prob)


def _cell(values: list[float]) -> str:
    return f"{np.median(values):.2g}/{np.max(values):.2g}" if values else "exact"


@pytest.mark.parametrize("decade", DECADES)
def test_emulated_gpu_kernels_stay_within_the_gpu_bound_at_each_decade(decade: int) -> None:
    """Median and max error/bound per quantity (deterministic | probabilistic), printed; none beyond 1."""
    found = measure(decade, CASES[decade])
    print(
        f"\nM >= 10^{decade}: median/max error/bound, deterministic | probabilistic: "
        + "; ".join(f"{q} {_cell(found.deterministic[q])} | {_cell(found.probabilistic[q])}" for q in MEASURED)
    )
    for model, ratios in (("deterministic", found.deterministic), ("probabilistic", found.probabilistic)):
        for q, values in ratios.items():
            assert max(values, default=0.0) <= 1, (
                f"M >= 10^{decade}: a correct GPU kernel's {q} beyond its {model} bound"
            )
    # Something to measure: a bound that every kernel meets to the last bit says nothing of its sharpness.
    assert any(found.probabilistic[q] for q in ("dx", "dgamma")), f"M >= 10^{decade}: no inexact dx or dgamma"


def planted(case: Case, quantity: str, relative_error: float = detection.PLANTED_ERROR) -> dict[str, np.ndarray]:
    """A GPU kernel (thread-strided Welford with Chan's merges, CUDA arithmetic) right but for ``quantity``."""
    out = emulate(case, summation="warp-tree", variance="welford-strided", gpu=True)
    out[quantity] = (out[quantity].astype(np.float64) * (1 + relative_error)).astype(out[quantity].dtype)
    return out


@pytest.mark.parametrize("quantity", ["dx", "dgamma"])
@pytest.mark.parametrize("decade", [d for d in DECADES if d >= 2])
def test_a_half_percent_fault_is_caught_by_the_gpu_bound_at_each_decade(decade: int, quantity: str) -> None:
    judged, caught = 0, 0
    for index in range(4 * CASES[decade]):
        if judged == CASES[decade]:
            break
        case = detection.draw_detection_case(np.random.default_rng([SEED, 7, decade, index]), decade, "float32")
        if detection.conditioning(case)[quantity] > detection.CONDITION_LIMIT:
            continue  # a sum that cancels hides any relative error; tightness's detection skips it too
        verdict = compare(
            case, planted(case, quantity), evaluation=evaluate(case, reduction="gpu"), quantities=[quantity]
        )
        judged += 1
        caught += any(m.quantity == quantity for m in verdict.mismatches)
    assert judged > 0, f"no well-conditioned {quantity} among the drawn cases at M >= 10^{decade}"
    assert caught == judged, f"a 0.5% error in {quantity} was caught in {caught} of {judged} cases at M >= 10^{decade}"

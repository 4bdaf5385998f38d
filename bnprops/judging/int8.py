"""int8 BatchNorm (quantize_net, oneDNN only) judged against the inference BatchNorm oracle, clipped.

Only y exists (the quantized graph is for inference): it is judged against the float64 BatchNorm on the moving
statistics, clipped to the calibrated output range, under the int8 bound (model.quantization); the int8
known deviations (scoped to its entries) say what MXNet returns instead where they apply.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable

from bnprops.judging.judgement import Outcome, judge
from bnprops.model.case import Case, Outputs
from bnprops.model.evaluation import Evaluation
from bnprops.model.oracle import reference
from bnprops.model.quantization import clipped_reference, int8_bound, output_range


class Int8Evaluation(Evaluation):
    """The evaluation of y alone: the clipped inference oracle and the int8 bound (deterministic only)."""

    @functools.cached_property
    def expected(self) -> Outputs:
        return {"y": clipped_reference(self.case)}

    @functools.cached_property
    def bound(self) -> Outputs:
        limit = output_range(reference(self.case.with_(is_train=False))["y"])
        return {"y": int8_bound(self.case, limit=limit)}

    @functools.cached_property
    def sharp(self) -> Outputs:
        return self.bound


@dataclasses.dataclass(frozen=True)
class Int8Judgement:
    outcome: Outcome

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    def message(self) -> str:
        return self.outcome.message()


def judge_int8(
    case: Case, outputs: Outputs, *, entry: str, kernel: str = "onednn", checked: Iterable[str] = ("y",)
) -> Int8Judgement:
    """Judge the quantized graph's ``outputs`` (y) for ``case``, run through ``entry``."""
    ev = Int8Evaluation(case)
    return Int8Judgement(judge(case, outputs, entry=entry, kernel=kernel, checked=checked, evaluation=ev))


def check_int8(
    case: Case,
    *,
    runner: Callable[[Case], Outputs],
    entry: str,
    checked: Iterable[str] = ("y",),
    kernel: str = "onednn",
) -> Int8Judgement:
    """Run ``case`` through an int8 runner and judge it."""
    return judge_int8(case, runner(case), entry=entry, kernel=kernel, checked=checked)

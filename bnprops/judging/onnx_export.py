"""BatchNorm exported to ONNX and run by onnxruntime, judged against MXNet's inference semantics.

The oracle is MXNet's inference BatchNorm (moving statistics, eps as its float32 kernel applies it, gamma 1
under fix_gamma); the bound is the folded form's that onnxruntime computes (model.folded_inference). Only y
exists. The known deviations scoped to the entry (the exporter drops fix_gamma) apply as for any entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from bnprops.judging.judgement import Outcome, judge
from bnprops.model.case import Case, Outputs
from bnprops.model.folded_inference import FoldedEvaluation
from bnprops.mx.onnx_export import ENTRY, as_exported, snippet

#: What the exported graph yields.
CHECKED = frozenset({"y"})


@dataclasses.dataclass(frozen=True)
class OnnxJudgement:
    """One exported call judged: the outcome for y, and the standalone script that makes the call."""

    outcome: Outcome

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    def message(self) -> str:
        if self.ok:
            return ""
        head = "BatchNorm exported to ONNX and run by onnxruntime, judged as MXNet's inference BatchNorm:"
        script = "\n".join("    " + line for line in snippet(self.outcome.case).splitlines())
        return f"{head}\n{self.outcome.message()}\nThe export and the run:\n{script}"


def judge_onnx(
    case: Case, outputs: Outputs, *, entry: str = ENTRY, kernel: str = "onnxruntime", checked: Iterable[str] = CHECKED
) -> OnnxJudgement:
    """Judge onnxruntime's ``outputs`` for ``case`` run as inference (as_exported)."""
    case = as_exported(case)
    checked = frozenset(checked) & CHECKED
    ev = FoldedEvaluation(case)
    return OnnxJudgement(judge(case, outputs, entry=entry, kernel=kernel, checked=checked, evaluation=ev))


def check_onnx(
    case: Case, *, runner: Callable[[Case], Outputs], entry: str = ENTRY, kernel: str = "onnxruntime"
) -> OnnxJudgement:
    """Run ``case`` (as inference) through an ONNX runner and judge it."""
    case = as_exported(case)
    return judge_onnx(case, runner(case), entry=entry, kernel=kernel)

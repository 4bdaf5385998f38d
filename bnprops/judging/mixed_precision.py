"""BatchNorm in AMP's converted graphs judged against the oracle for the dtype it actually runs in.

bfloat16 (``amp-sym``, ``amp-gluon``): the float32 oracle and bounds of the case (x and dy bfloat16 values), y and
dx widened by their rounding to bfloat16 (model.bfloat16), on oneDNN's kernel. float16 (``amp-fp16-sym``):
AMP keeps BatchNorm in float32, so the plain judgement on the kernel float32 takes. BatchNorm's own known
deviations apply as on any entry point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from bnprops.judging.judgement import Outcome, judge
from bnprops.model.bfloat16 import Bfloat16OutputEvaluation
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.evaluation import evaluate
from bnprops.mx.mixed_precision import RUNNERS, RUNS_IN, snippet
from bnprops.mx.runners import adapt, kernel_for


@dataclasses.dataclass(frozen=True)
class AmpJudgement:
    """One call through an AMP-converted graph judged, and the dtype BatchNorm ran in."""

    outcome: Outcome
    runs_in: str

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    def message(self) -> str:
        if self.ok:
            return ""
        head = f"BatchNorm in an AMP graph ({self.outcome.entry}), run in {self.runs_in}, judged for that dtype:"
        text = f"{head}\n{self.outcome.message()}"
        if self.outcome.entry in RUNNERS:
            script = snippet(self.outcome.case, self.outcome.entry)
            text += "\nThe AMP graph and the call:\n" + "\n".join("    " + line for line in script.splitlines())
        return text


def judge_amp(
    case: Case,
    outputs: Outputs,
    *,
    entry: str,
    kernel: str | None = None,
    checked: Iterable[str] = QUANTITIES,
    runs_in: str | None = None,
) -> AmpJudgement:
    """Judge ``outputs`` of ``case`` through the AMP entry ``entry`` (a subject names the dtype it ``runs_in``)."""
    bf16 = (runs_in or RUNS_IN.get(entry)) == "bfloat16"
    kernel = kernel or ("onednn" if bf16 else kernel_for(case))
    ev = Bfloat16OutputEvaluation(case) if bf16 else evaluate(case)
    # (What a runner does not produce, the sym entries' gradients after an inference forward, is not judged.)
    checked = frozenset(checked) & set(outputs)
    outcome = judge(case, outputs, entry=entry, kernel=kernel, checked=checked, evaluation=ev)
    return AmpJudgement(outcome, "bfloat16" if bf16 else "float32")


def check_amp(case: Case, *, runner: Callable[[Case], Outputs], entry: str, kernel: str | None = None) -> AmpJudgement:
    """Run ``case`` through an AMP runner (gluon's adapted as gluon's are) and judge it."""
    if entry.endswith("gluon"):
        case = adapt("gluon", case)
    return judge_amp(case, runner(case), entry=entry, kernel=kernel)

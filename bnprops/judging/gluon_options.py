"""gluon.nn.BatchNorm through its options (deferred in_channels, initialisers, cast) judged by the plain oracle.

Each option means something the plain oracle already models: the initialisers are the case's gamma, beta and
moving statistics; center=False a frozen beta (no dbeta); scale=False fix_gamma; a frozen gamma no dgamma;
cast('float16') float16 data with float32 parameters. So the case is gluon's (runners.adapt) and the
judgement is the plain one; BatchNorm's known deviations apply as on the gluon entry points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from bnprops.judging.judgement import Outcome, judge
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.mx.gluon_options import RUNNERS, snippet
from bnprops.mx.runners import adapt, kernel_for


@dataclasses.dataclass(frozen=True)
class OptionsJudgement:
    """One call through the options' layer judged."""

    outcome: Outcome

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    def message(self) -> str:
        if self.ok:
            return ""
        head = "gluon.nn.BatchNorm(in_channels=0, initialisers, cast) judged by the plain oracle:"
        text = f"{head}\n{self.outcome.message()}"
        if self.outcome.entry in RUNNERS:
            script = snippet(self.outcome.case, self.outcome.entry)
            text += "\nThe layer and the call:\n" + "\n".join("    " + line for line in script.splitlines() if line)
        return text


def judge_gluon_options(
    case: Case, outputs: Outputs, *, entry: str, kernel: str | None = None, checked: Iterable[str] = QUANTITIES
) -> OptionsJudgement:
    """Judge ``outputs`` for gluon's form of ``case``: what the layer does not produce (a frozen parameter's
    gradient) is not judged."""
    case = adapt("gluon", case)
    kernel = kernel or kernel_for(case)
    checked = frozenset(checked) & set(outputs)
    return OptionsJudgement(judge(case, outputs, entry=entry, kernel=kernel, checked=checked))


def check_gluon_options(
    case: Case, *, runner: Callable[[Case], Outputs], entry: str, kernel: str | None = None
) -> OptionsJudgement:
    """Run ``case`` through an options runner and judge it."""
    return judge_gluon_options(case, runner(case), entry=entry, kernel=kernel)

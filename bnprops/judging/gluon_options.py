"""gluon.nn.BatchNorm through its options (deferred in_channels, initialisers, cast) judged by the plain oracle.

Each option means something the plain oracle already models: the initialisers are the case's gamma, beta and
moving statistics; center=False a frozen beta (no dbeta); scale=False fix_gamma; a frozen gamma no dgamma;
cast('float16') float16 data with float32 parameters. So the case is gluon's (runners.adapt) and the
judgement is the plain one; BatchNorm's known deviations apply as on the gluon entry points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bnprops.judging.judgement import Judged, judge
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.mx.gluon_options import RUNNERS, snippet
from bnprops.mx.runners import adapt, kernel_for


def judge_gluon_options(
    case: Case, outputs: Outputs, *, entry: str, kernel: str | None = None, checked: Iterable[str] = QUANTITIES
) -> Judged:
    """Judge ``outputs`` for gluon's form of ``case``: what the layer does not produce (a frozen parameter's
    gradient) is not judged."""
    case = adapt("gluon", case)
    kernel = kernel or kernel_for(case)
    checked = frozenset(checked) & set(outputs)
    return Judged(
        judge(case, outputs, entry=entry, kernel=kernel, checked=checked),
        head="gluon.nn.BatchNorm(in_channels=0, initialisers, cast) judged by the plain oracle:",
        script=lambda: snippet(case, entry) if entry in RUNNERS else "",
    )


def check_gluon_options(
    case: Case, *, runner: Callable[[Case], Outputs], entry: str, kernel: str | None = None
) -> Judged:
    """Run ``case`` through an options runner and judge it."""
    return judge_gluon_options(case, runner(case), entry=entry, kernel=kernel)

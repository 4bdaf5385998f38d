"""BatchNorm_v1 judged as BatchNorm: the same oracle, its own error model and deviations (scoped to ``sym-v1``).

Its runner reports the third output as invstd already (mx.runners.run_symbolic_v1), so the plain judgement
applies unchanged; BatchNorm's own deviations do not reach it (another operator: see judging.declarations).
"""

from __future__ import annotations

from collections.abc import Iterable

from bnprops.judging.judgement import Judged
from bnprops.judging.judgement import judge as judge_outputs
from bnprops.model.case import QUANTITIES, Case, Outputs


def judge(case: Case, outputs: Outputs, *, entry: str, kernel: str, checked: Iterable[str] = QUANTITIES) -> Judged:
    """Judge BatchNorm_v1's ``outputs`` for ``case`` run through ``entry`` (``sym-v1``) on ``kernel``."""
    return Judged(judge_outputs(case, outputs, entry=entry, kernel=kernel, checked=checked))

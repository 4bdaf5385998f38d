"""BatchNormWithReLU (BatchNorm and ReLU fused, oneDNN only) judged against the BatchNorm oracle.

MXNet masks the head gradient with its own rounded output (y > 0; 0 at the kink), so the backward is judged as
BatchNorm's for the head masked by MXNet's y, and y itself, lifted back to a pre-ReLU value, as BatchNorm's y:
no element is judged by a mask the oracle decided, so none near 0 can raise a false alarm. The derivation and
the evidence are in the BatchNormWithReLU page of the docs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from bnprops.judging.deviations.relu_inference_backward_unwritten_mask import DEVIATIONS as UNWRITTEN_MASK
from bnprops.judging.judgement import Outcome, judge
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.oracle import reference
from bnprops.mx import mxversion
from bnprops.mx.runners import adapt

#: The member's entry name for each key it is judged under: deviations of BatchNormWithReLU are scoped by
#: these names. While the runners are keyed by BatchNorm's entry names this maps them; once they are keyed
#: by the member's own names it is the identity (those names map to themselves below).
MEMBER_ENTRY = {"nd": "nd-relu", "sym": "sym-relu", "gluon-hybrid": "gluon-relu"}
#: The BatchNorm entry point whose code each member entry runs: BatchNorm's deviations there apply too.
BATCHNORM_ENTRY = {"nd-relu": "nd", "sym-relu": "sym", "gluon-relu": "gluon-hybrid"}


@dataclasses.dataclass(frozen=True)
class ReluJudgement:
    """One BatchNormWithReLU call judged: the BatchNorm outcome for the masked head, and elements of y below 0."""

    outcome: Outcome
    negative: int  # elements of MXNet's y below 0 (a ReLU output never is)

    @property
    def ok(self) -> bool:
        return self.outcome.ok and self.negative == 0

    def message(self) -> str:
        lines = [f"BatchNormWithReLU: {self.negative} elements of y are below 0"] if self.negative else []
        if not self.outcome.ok:
            lines.append("BatchNormWithReLU, judged as BatchNorm with the head masked where MXNet's y <= 0:")
            lines.append(self.outcome.message())
        return "\n".join(lines)


def masked_case(case: Case, y: np.ndarray) -> Case:
    """The BatchNorm call whose gradients BatchNormWithReLU's must be: the head zeroed where MXNet's y <= 0
    (oneDNN's rule: a NaN y, not <= 0, passes its gradient on)."""
    return case.with_(dy=np.where(y <= 0, np.zeros_like(case.dy), case.dy))


def lifted(case: Case, outputs: Outputs) -> Outputs:
    """MXNet's outputs with y lifted to a pre-ReLU value BatchNorm's bound can judge: y where y > 0 (there it is
    the pre-ReLU value), else min(oracle y, 0), rounded to y's dtype; where the oracle's y is above 0 and
    MXNet's is 0, the lifted 0 is judged against it, which holds exactly when that y is within its bound."""
    y = outputs["y"]
    expected = reference(case)["y"]
    out = dict(outputs)
    out["y"] = np.where(y != 0, y, np.minimum(expected, 0.0)).astype(y.dtype)
    return out


def mask_unwritten(case: Case, member: str) -> bool:
    """Does the backward of this call read a ReLU mask no forward wrote (an inference forward: the deviations
    of module relu_inference_backward_unwritten_mask, in a release they hold in)? Then MXNet's y does not say
    which head it consumed."""
    running = mxversion.running()
    return not case.is_train and any(
        d.entries is not None and member in d.entries and d.holds_in(running) for d in UNWRITTEN_MASK
    )


def judge_with_relu(
    case: Case, outputs: Outputs, *, entry: str, kernel: str = "onednn", checked: Iterable[str] = QUANTITIES
) -> ReluJudgement:
    """Judge BatchNormWithReLU's ``outputs`` for ``case`` (the case as BatchNorm's inputs and the head), run
    through ``entry``: the member's deviations there apply, and BatchNorm's of the entry whose code it runs
    (the backward is BatchNorm's own). Where the mask is unwritten the head stays whole: the deviation's model
    covers every mask, the right one (y > 0) among them."""
    y = outputs["y"]
    member = MEMBER_ENTRY.get(entry, entry)
    bn_case = case if mask_unwritten(case, member) else masked_case(case, y)
    outcome = judge(
        bn_case,
        lifted(bn_case, outputs),
        entry=BATCHNORM_ENTRY.get(member, entry),
        kernel=kernel,
        checked=checked,
        member=member if member in BATCHNORM_ENTRY else None,
    )
    return ReluJudgement(outcome, int(np.count_nonzero(y < 0)))


def check_with_relu(
    case: Case,
    *,
    runner: Callable[[Case], Outputs],
    entry: str,
    checked: Iterable[str] = QUANTITIES,
    kernel: str = "onednn",
) -> ReluJudgement:
    """Run ``case`` through a BatchNormWithReLU runner on ``entry`` (adapted to it, as BatchNorm's are) and judge it."""
    case = adapt(entry, case)
    return judge_with_relu(case, runner(case), entry=entry, kernel=kernel, checked=checked)

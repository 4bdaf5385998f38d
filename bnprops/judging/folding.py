"""BatchNorm folded into a Convolution by oneDNN's subgraph backend, judged against the BatchNorm oracle.

The case is BatchNorm's input after a 1x1 convolution with identity weights; inference y is judged against the
float64 BatchNorm on the moving statistics under the fold's own error bound (model.folding). Training and the
gradients are judged as plain BatchNorm's, where the fold's known deviations (scoped to its entries) say what
MXNet returns instead. The derivation and the evidence are on the oneDNN rewrites page of the docs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable

import numpy as np

from bnprops.judging.judgement import Outcome, judge
from bnprops.model.case import GRADIENT_OF, QUANTITIES, Case, Outputs
from bnprops.model.evaluation import Evaluation
from bnprops.model.folding import conv_batchnorm, convolution, fold_bound, identity_fold_bound
from bnprops.model.oracle import reference
from bnprops.mx.folding import CONV_ENTRY, INFERENCE_ONLY, WITH_RELU
from bnprops.mx.runners import adapt


class FoldEvaluation(Evaluation):
    """The reference evaluation with y's bounds the fold's where MXNet normalises with the moving statistics."""

    @functools.cached_property
    def bound(self) -> Outputs:
        return self._folded(self.bounds_of(self.expected))

    @functools.cached_property
    def sharp(self) -> Outputs:
        # Each y is a few roundings, no long sum: the deterministic bound is the only one.
        return self._folded(self.bounds_of(self.expected, model="probabilistic"))

    def _folded(self, bounds: Outputs) -> Outputs:
        if self.case.uses_batch_stats:
            return bounds
        return bounds | {"y": identity_fold_bound(self.case)}


class ConvFoldEvaluation(Evaluation):
    """Inference y of a drawn convolution then BatchNorm: the float64 Conv + BatchNorm oracle and the fold's bound
    with the convolution's own terms (the case's x is the convolution's input)."""

    def __init__(self, case: Case, weight: np.ndarray) -> None:
        super().__init__(case)
        self.weight = weight

    @functools.cached_property
    def _convolved(self) -> tuple[np.ndarray, np.ndarray]:
        return convolution(self.case.x, self.weight)

    @functools.cached_property
    def expected(self) -> Outputs:
        return {"y": conv_batchnorm(self.case, self._convolved[0])}

    @functools.cached_property
    def bound(self) -> Outputs:
        conv, conv_abs = self._convolved
        terms = max((int(np.count_nonzero(w)) for w in self.weight), default=0)  # nonzero products per output
        return {"y": fold_bound(self.case, conv=conv, conv_abs=conv_abs, terms=terms)}

    @functools.cached_property
    def sharp(self) -> Outputs:
        return self.bound


@dataclasses.dataclass(frozen=True)
class FoldJudgement:
    """One folded call judged: the BatchNorm outcome under the fold's bound and its known deviations, and (after
    a ReLU post-op) the elements of y below 0."""

    outcome: Outcome
    negative: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome.ok and self.negative == 0

    def message(self) -> str:
        head = [f"the folded ReLU returned {self.negative} elements of y below 0"] if self.negative else []
        return "\n".join([*head, self.outcome.message()])


def relu_lifted(case: Case, outputs: Outputs) -> Outputs:
    """y after the fold's ReLU lifted back to a pre-ReLU value: y where y != 0, else min(the inference oracle's
    y, 0) (the fold always normalises with the moving statistics; its gradients are 0 whatever the mask)."""
    y = outputs["y"]
    expected = reference(case.with_(is_train=False))["y"]
    return outputs | {"y": np.where(y != 0, y, np.minimum(expected, 0.0)).astype(y.dtype)}


def judge_fold(
    case: Case, outputs: Outputs, *, entry: str, kernel: str = "onednn", checked: Iterable[str] = QUANTITIES
) -> FoldJudgement:
    """Judge the folded graph's ``outputs`` for ``case`` (BatchNorm's input and parameters) run through ``entry``."""
    evaluation = FoldEvaluation(case)
    return FoldJudgement(judge(case, outputs, entry=entry, kernel=kernel, checked=checked, evaluation=evaluation))


def adapt_fold(entry: str, case: Case) -> Case:
    """The case as the entry can express it: fold-gluon takes gluon's mapping (no gamma gradient under scale=False)."""
    return adapt("gluon" if entry.endswith("gluon") else entry, case)


def check_fold(
    case: Case,
    *,
    runner: Callable[[Case], Outputs],
    entry: str,
    checked: Iterable[str] = QUANTITIES,
    kernel: str = "onednn",
) -> FoldJudgement:
    """Run ``case`` through a fold runner on ``entry`` (adapted to it) and judge it."""
    case = adapt_fold(entry, case)
    if entry in INFERENCE_ONLY:
        checked = [q for q in checked if q not in GRADIENT_OF.values()]
    outputs = runner(case)
    if entry not in WITH_RELU:
        return judge_fold(case, outputs, entry=entry, kernel=kernel, checked=checked)
    judged = judge_fold(case, relu_lifted(case, outputs), entry=entry, kernel=kernel, checked=checked)
    return dataclasses.replace(judged, negative=int(np.count_nonzero(outputs["y"] < 0)))


def judge_fold_conv(case: Case, weight: np.ndarray, outputs: Outputs, *, kernel: str = "onednn") -> FoldJudgement:
    """Judge the folded graph's inference y for a drawn convolution ``weight`` in front of ``case``'s BatchNorm."""
    case = case.with_(is_train=False)
    evaluation = ConvFoldEvaluation(case, weight)
    outcome = judge(case, outputs, entry=CONV_ENTRY, kernel=kernel, checked=("y",), evaluation=evaluation)
    return FoldJudgement(outcome)

"""BatchNorm through a model's life: train, evaluate, train again; export and import; cast to float16; symbolic
graphs whose shapes and types are inferred. Each check returns a list of problems (empty: it works).

The scenarios run in bnprops.mx.lifecycle_kernel; here each step is compared with a plain call (bnprops.mx.runners)
on the input BatchNorm received, with the same rule as judging.in_network (bit for bit where the same kernel runs,
within twice the error bound where oneDNN does), and twin models bit for bit. A problem a recorded life-cycle
deviation explains in this release names it; ``unexplained`` keeps the others.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from bnprops.judging.comparator import compare_pair
from bnprops.judging.in_network import same_kernel
from bnprops.judging.known_deviations import LIFECYCLE_DEVIATIONS
from bnprops.model.case import Case
from bnprops.mx import lifecycle_kernel
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND, Runner

CHECKS = lifecycle_kernel.CHECKS
#: The plain runner of an entry point on a backend (tests plant faults here).
RunnerFactory = Any


@dataclasses.dataclass(frozen=True)
class Problem:
    """What one check found: its kind (``what``: 'differs:dgamma', 'raises:infer_shape_partial', ...), the message,
    the worst difference where two results differ, and the recorded deviation that explains it, if one does."""

    what: str
    message: str
    error: float = math.nan
    deviation: str = ""

    def __str__(self) -> str:
        return self.message


def spec(check: str, *, channels: int = 16, hybridize: bool = True, dtype: str = "float32", seed: int = 0) -> dict:
    """A scenario as lifecycle_kernel.run takes it."""
    if check not in CHECKS:
        raise ValueError(f"unknown life-cycle check {check!r}; choose from {', '.join(CHECKS)}")
    return {"check": check, "channels": channels, "hybridize": hybridize, "dtype": dtype, "seed": seed}


def _plain_case(step: dict[str, Any]) -> Case:
    s = step["before"]
    return Case(
        x=step["x"],
        dy=step["dy"],
        gamma=s["gamma"],
        beta=s["beta"],
        moving_mean=s["moving_mean"],
        moving_var=s["moving_var"],
        axis=1,
        eps=lifecycle_kernel.EPS,
        momentum=lifecycle_kernel.MOMENTUM,
        fix_gamma=False,
        is_train=step["is_train"],
        regime="life-cycle",
    )


def _step_problems(step: dict[str, Any], plain: Runner, *, backend: str) -> list[Problem]:
    case = _plain_case(step)
    reference = {q: v for q, v in plain(case).items() if q in step["model"]}
    exact = same_kernel(case, backend)
    rule = "bit for bit" if exact else "within twice the error bound"
    return [
        Problem(
            f"differs:{m.quantity}",
            f"{step['what']}: the model's {m.quantity} differs from the plain call's ({rule}) for {case.describe()}:\n"
            + m.describe()
            .replace("expected (oracle)", "plain call       ")
            .replace("actual:           ", "model:           "),
            error=m.error,
        )
        for m in compare_pair(case, step["model"], reference, exact=exact).mismatches
    ]


def _twin_problems(what: str, original: dict[str, Any], again: dict[str, Any]) -> list[Problem]:
    problems = []
    for name in sorted(set(original) | set(again)):
        if name not in original or name not in again:
            problems.append(Problem(f"missing:{name}", f"{what}: {name} exists in only one of the two models"))
        elif not np.array_equal(original[name], again[name], equal_nan=True):
            worst = float(np.max(np.abs(original[name].astype(float) - again[name].astype(float))))
            message = f"{what}: {name} differs between the original and the imported model by {worst:g}"
            problems.append(Problem(f"differs:{name}", message, error=worst))
    return problems


def _explained(check: str, problem: Problem) -> Problem:
    for d in LIFECYCLE_DEVIATIONS:
        if d.explains(check=check, what=problem.what, message=problem.message):
            return dataclasses.replace(problem, deviation=d.id)
    return problem


def check(
    scenario: dict[str, Any], *, backend: str = IN_PROCESS_BACKEND, runner_factory: RunnerFactory = runner_for
) -> list[Problem]:
    """Run ``scenario`` (``spec``) and judge it; a scenario that raises is one problem ('raises:Error')."""
    if backend != IN_PROCESS_BACKEND:
        raise ValueError(f"life-cycle checks run on this process's backend ({IN_PROCESS_BACKEND}), not {backend!r}")
    name = scenario["check"]
    try:
        ran = lifecycle_kernel.run(scenario)
        problems = [Problem(what, message) for what, message in ran["notes"]]
        for step in ran["steps"]:
            problems += _step_problems(step, runner_factory(step["entry"], backend), backend=backend)
        for what, original, again in ran["twins"]:
            problems += _twin_problems(what, original, again)
    except Exception as exc:  # a scenario that raises is a finding, not a crash of its caller
        problems = [Problem(f"raises:{type(exc).__name__}", f"{name} raised {type(exc).__name__}: {exc}")]
    return [_explained(name, p) for p in problems]


def unexplained(problems: list[Problem]) -> list[Problem]:
    """The problems no recorded life-cycle deviation explains."""
    return [p for p in problems if not p.deviation]


def probe(deviation: Any) -> tuple[str, str]:
    """Is a recorded life-cycle deviation present in the MXNet this process runs? ('present' | 'absent' | 'differs' |
    'not applicable', detail), by its reproducer's scenario, whatever releases it is recorded for (the release
    matrix's probe, as judging.release_probe does for the other kinds)."""
    missing = lifecycle_kernel.lacks(deviation.check)
    if missing is not None:
        return "not applicable", missing
    problems = check(dict(deviation.reproducer()))
    shown = [
        p for p in problems if deviation.explains(check=deviation.check, what=p.what, message=p.message, scoped=False)
    ]
    if shown:
        return "present", shown[0].message.splitlines()[0][:200]
    if not problems:
        return "absent", "the scenario runs and every step equals the plain call"
    return "differs", problems[0].message.splitlines()[0][:200]


def train_evaluate_train(
    *, channels: int = 16, hybridize: bool = True, backend: str = IN_PROCESS_BACKEND, seed: int = 0
) -> list[Problem]:
    """Conv2D(channels) + BatchNorm: train, evaluate, train. Each step's BatchNorm results (y, dgamma, dbeta, the
    moving statistics; inference: y, and the statistics untouched) must equal a fresh plain call's on the
    step's input, from the statistics the previous step left."""
    return check(spec("train-evaluate-train", channels=channels, hybridize=hybridize, seed=seed), backend=backend)


def export_and_import(*, channels: int = 16, seed: int = 0) -> list[Problem]:
    """A trained, hybridized Conv2D + BatchNorm exported, then SymbolBlock.imports: inference must give the
    original's outputs bit for bit, and one more training step the same outputs, gradients and statistics."""
    return check(spec("export-import", channels=channels, seed=seed))


def float16_cast(
    *, channels: int = 8, hybridize: bool = True, backend: str = IN_PROCESS_BACKEND, seed: int = 0
) -> list[Problem]:
    """cast('float16') of relu + BatchNorm, then a training step and inference: the same as a plain float16 call
    (parameters stay float32) on the input BatchNorm saw."""
    return check(spec("float16-cast", channels=channels, hybridize=hybridize, seed=seed), backend=backend)


def symbolic_inference(
    *, dtype: str = "float32", channels: int = 16, backend: str = IN_PROCESS_BACKEND, seed: int = 1
) -> list[Problem]:
    """BatchNorm in a symbol whose shapes and types are given only for data: partial and full shape inference,
    type inference, simple_bind with a partial type_dict, one training step against the plain call."""
    return check(spec("symbolic-inference", dtype=dtype, channels=channels, seed=seed), backend=backend)

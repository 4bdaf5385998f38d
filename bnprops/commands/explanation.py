"""``bnprops explain``: why a user's BatchNorm numbers differ from MXNet's (issue 11).

The call runs through MXNet and the oracle; then the search over bnprops.commands.semantic_variants finds the
smallest combination (up to three) of semantic differences that reproduces every number the user
gave, within the precision they gave it (half a unit of the last printed digit, plus float32
rounding).  What no combination explains is checked against the known deviations; what is left may
be a new MXNet deviation, and gets a standalone reproducer.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnprops.base import atomic, reproduction
from bnprops.commands.explain_input import UserExpectation, build_call, parse_expectation
from bnprops.commands.semantic_variants import (
    LOSS_NAMES,
    VARIANTS,
    Assumption,
    Call,
    Variant,
    base,
    device_slices,
    evaluate,
    loss_gradient,
)
from bnprops.judging.judgement import Outcome, judge
from bnprops.judging.with_relu import judge_with_relu
from bnprops.model.case import GRADIENT_OF, QUANTITIES, Case, Outputs
from bnprops.model.evaluation import evaluate as evaluation_of
from bnprops.model.oracle import reference
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND, WITH_RELU_RUNNERS, Runner, kernel_for, with_relu_unavailable_reason
from bnprops.mx.snippets import snippet as make_snippet

MAX_DIFFERENCES = 3
DEFAULT_REPRODUCER_DIR = Path("bnprops-explain")
_U32 = 2.0**-24

AGREES, DIFFERS = "agrees", "differs"
SEMANTICS, KNOWN, UNEXPLAINED, ABSENT = "semantics", "known deviation", "unexplained", "absent"


@dataclasses.dataclass(frozen=True)
class AppliedVariant:
    """One variant of a combination, as it applies to this call."""

    variant: str
    description: str
    fix: str


@dataclasses.dataclass(frozen=True)
class QuantityReport:
    quantity: str
    user: np.ndarray
    mxnet: np.ndarray | None
    oracle: np.ndarray | None
    verdict: str  # AGREES or DIFFERS
    #: Why it differs: SEMANTICS, KNOWN, UNEXPLAINED, ABSENT (MXNet has no such output); None when it agrees.
    cause: str | None = None
    causes: tuple[AppliedVariant, ...] = ()
    deviation: str | None = None
    note: str = ""
    #: Unexplained, and MXNet itself is off the oracle beyond its error bound (not a known deviation).
    mxnet_deviates: bool = False

    def to_dict(self) -> dict[str, Any]:
        def listed(a: np.ndarray | None) -> Any:
            return None if a is None else np.asarray(a, dtype=np.float64).tolist()

        return {
            "quantity": self.quantity,
            "user": listed(self.user),
            "mxnet": listed(self.mxnet),
            "oracle": listed(self.oracle),
            "verdict": self.verdict,
            "cause": self.cause,
            "variants": [dataclasses.asdict(c) for c in self.causes],
            "deviation": self.deviation,
            "note": self.note,
            "mxnet_deviates": self.mxnet_deviates,
        }


@dataclasses.dataclass(frozen=True)
class Explanation:
    """The structured answer: per quantity the three numbers, the verdict and what explains a difference."""

    call: str
    entry: str
    backend: str
    head: str
    quantities: tuple[QuantityReport, ...]
    #: The variants that together reproduce every expected number (empty: none needed or none found).
    combination: tuple[str, ...] = ()
    #: Other combinations of the same size that reproduce them too.
    alternatives: tuple[tuple[str, ...], ...] = ()
    reproducer: Path | None = None
    summary: str = ""

    @property
    def unexplained(self) -> bool:
        return any(q.cause == UNEXPLAINED for q in self.quantities)

    def quantity(self, name: str) -> QuantityReport:
        return next(q for q in self.quantities if q.quantity == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "entry": self.entry,
            "backend": self.backend,
            "head": self.head,
            "quantities": [q.to_dict() for q in self.quantities],
            "combination": list(self.combination),
            "alternatives": [list(a) for a in self.alternatives],
            "reproducer": None if self.reproducer is None else str(self.reproducer),
            "summary": self.summary,
        }

    def format(self) -> str:
        lines = [f"call: {self.entry} {self.call} (backend {self.backend})", f"head: {self.head}", ""]
        for q in self.quantities:
            lines.append(f"{q.quantity}: {q.verdict}")
            lines.append(f"  yours  {_show(q.user)}")
            lines.append(f"  MXNet  {'(no such output)' if q.mxnet is None else _show(q.mxnet)}")
            lines.append(f"  oracle {'-' if q.oracle is None else _show(q.oracle)}")
            if q.cause == SEMANTICS:
                n = len(q.causes)
                lines.append(f"  explained by {n} difference{'s' if n != 1 else ''} in semantics:")
                for c in q.causes:
                    lines += [f"  * {c.variant}: {c.description}", f"    fix: {c.fix}"]
            elif q.cause == KNOWN:
                lines.append(f"  known deviation {q.deviation}")
            elif q.cause == UNEXPLAINED:
                lines.append(f"  unexplained: {_unexplained(q)}")
            elif q.cause is not None:
                lines.append(f"  {q.cause}")
            if q.note:
                lines.append(f"  {q.note}")
        lines += ["", f"summary: {self.summary}"]
        if self.reproducer is not None:
            lines.append(f"reproducer: {self.reproducer} (mxnet and numpy only; exits 1 while MXNet differs)")
        return "\n".join(lines)


def _show(values: np.ndarray) -> str:
    flat = np.asarray(values, dtype=np.float64).ravel()
    shown = " ".join(f"{v:.9g}" for v in flat[:6]) + (f" ... ({flat.size} values)" if flat.size > 6 else "")
    return shown if flat.size == 1 else f"[{shown}]"


# Matching within the precision the user gave.
def _allowance(call: Call, oracle: Outputs) -> Outputs:
    """Float32 rounding: the error model's bound for MXNet's own kernel on this call."""
    try:
        bound = evaluation_of(call.case, "reference").bounds_of(oracle)
        return {q: np.nan_to_num(b, nan=0.0, posinf=0.0) for q, b in bound.items()}
    except (ValueError, FloatingPointError, KeyError):
        return {}


def _matches(value: np.ndarray | None, e: UserExpectation, allowance: Outputs) -> bool:
    if value is None:
        return False
    v = np.asarray(value, dtype=np.float64)
    if v.size != e.values.size:
        return False
    v = v.reshape(e.values.shape)
    extra = allowance[e.quantity].reshape(v.shape) if e.quantity in allowance else 0.0
    tol = e.half_unit + extra + 4 * _U32 * np.maximum(np.abs(e.values), np.abs(np.nan_to_num(v)))
    with np.errstate(invalid="ignore"):
        same = (np.isnan(v) & np.isnan(e.values)) | (v == e.values) | (np.abs(v - e.values) <= tol)
    return bool(same.all())


def _candidates(call: Call) -> Iterator[tuple[tuple[Variant, ...], Assumption]]:
    """Every distinct assumption reachable with up to MAX_DIFFERENCES variants, fewest differences first."""
    start = base(call)
    seen = {start}
    yield (), start
    for size in range(1, MAX_DIFFERENCES + 1):
        for combo in itertools.combinations(VARIANTS, size):
            if len({v.group for v in combo}) < size:
                continue
            a: Assumption | None = start
            for v in combo:
                a = v.apply(call, a) if a is not None else None
            if a is not None and a not in seen:
                seen.add(a)
                yield combo, a


def _apply(call: Call, combo: Sequence[Variant]) -> Assumption | None:
    a: Assumption | None = base(call)
    for v in combo:
        a = v.apply(call, a) if a is not None else None
    return a


def _search(
    call: Call, expectations: Sequence[UserExpectation], allowance: Outputs
) -> tuple[list[tuple[tuple[Variant, ...], Assumption]], Outputs]:
    """The combinations of fewest differences that reproduce every expectation, and the allowance that took.

    First within the digits given plus the rounding of a float32 result (a few ulps), which tells eps = 1e-5
    from eps = 0 in the forum's seven digits; failing that, within MXNet's own float32 error bound, for
    numbers computed in float32 where sums cancel.
    """
    for tier in ({}, allowance):
        found = _search_within(call, expectations, tier)
        if found:
            return found, tier
    return [], allowance


def _search_within(
    call: Call, expectations: Sequence[UserExpectation], allowance: Outputs
) -> list[tuple[tuple[Variant, ...], Assumption]]:
    found: list[tuple[tuple[Variant, ...], Assumption]] = []
    for combo, a in _candidates(call):
        if found and len(combo) > len(found[0][0]):
            break
        out = evaluate(call, a)
        if all(_matches(out.get(e.quantity), e, allowance) for e in expectations):
            found.append((combo, a))
    return found


def _relevant(call: Call, combo: tuple[Variant, ...], e: UserExpectation, allowance: Outputs) -> tuple[Variant, ...]:
    """The variants of ``combo`` without which ``e`` is no longer reproduced (all of them if none alone)."""
    needed = []
    for v in combo:
        rest = _apply(call, [w for w in combo if w is not v])
        if rest is None or not _matches(evaluate(call, rest).get(e.quantity), e, allowance):
            needed.append(v)
    return tuple(needed) or combo


def _causes(call: Call, variants: Sequence[Variant], a: Assumption) -> tuple[AppliedVariant, ...]:
    return tuple(AppliedVariant(v.name, *v.text(call, a)) for v in variants)


#: Members whose calls explain runs in MXNet here; the others (their runners are not in this package yet) are
#: judged against their oracle alone, and the report says so.
RUN_MEMBERS = ("batchnorm", "relu")


def _runner(call: Call, backend: str) -> Runner:
    if call.member == "relu":
        if call.entry not in WITH_RELU_RUNNERS:
            raise ValueError(f"BatchNormWithReLU runs through {', '.join(WITH_RELU_RUNNERS)}, not {call.entry!r}")
        reason = with_relu_unavailable_reason(call.case)
        if reason is not None:
            raise ValueError(reason)
        return WITH_RELU_RUNNERS[call.entry]
    return runner_for(call.entry, backend)


def _run_devices(call: Call, run: Runner, case: Case, backend: str) -> tuple[Outputs, Outcome]:
    """One call per device on its slice of the batch, judged each: y and dx put together, dgamma and dbeta the
    sum of the devices' partial gradients (what a Trainer applies), the rest the first device's."""
    parts, outcomes = [], []
    for s in device_slices(case, call.devices):
        part = case.with_(**{f: getattr(case, f)[s] for f in ("x", "dy", "prior_dx") if getattr(case, f) is not None})
        out = run(part)
        parts.append(out)
        kernel = kernel_for(part, backend)
        outcomes.append(judge(part, out, entry=call.entry, kernel=kernel, checked=QUANTITIES, backend=backend))
    outputs = dict(parts[0])
    for q in ("y", "dx"):
        if q in outputs:
            outputs[q] = np.concatenate([p[q] for p in parts], axis=0)
    for q in ("dgamma", "dbeta"):
        if q in outputs:
            outputs[q] = np.sum([p[q] for p in parts], axis=0, dtype=np.float64)
    return outputs, next((o for o in outcomes if not o.ok), outcomes[0])


def _run_mxnet(call: Call, backend: str) -> tuple[Call, Outputs, Outcome]:
    """MXNet's outputs; with a target, the head is MXNet's own y through the loss, as a graph computes it."""
    case = call.case
    if call.member not in RUN_MEMBERS:
        # No runner: the member's oracle stands in for MXNet (the head's text says so); nothing is judged.
        if call.target is not None and call.loss is not None:
            y = evaluate(call, base(call))["y"]
            dy = loss_gradient(call.loss, y, call.target).astype(case.dtype)
            call = dataclasses.replace(call, case=case.with_(dy=dy))
        outputs = _member_oracle(call)
        outcome = judge(call.case, reference(call.case), entry=call.entry, kernel="oracle", checked=())
        return call, outputs, outcome
    run = _runner(call, backend)

    def whole(c: Case) -> tuple[Outputs, Outcome]:
        if call.devices > 1:
            return _run_devices(call, run, c, backend)
        out = run(c)
        kernel = kernel_for(c, backend)
        if call.member == "relu":
            return out, judge_with_relu(c, out, entry=call.entry, kernel=kernel).outcome
        return out, judge(c, out, entry=call.entry, kernel=kernel, checked=QUANTITIES, backend=backend)

    if call.target is not None and call.loss is not None:
        y = whole(case.with_(dy=np.zeros_like(case.x)))[0]["y"].astype(np.float64)
        case = case.with_(dy=loss_gradient(call.loss, y, call.target).astype(case.dtype))
        call = dataclasses.replace(call, case=case)
    outputs, outcome = whole(case)
    return call, outputs, outcome


def _member_oracle(call: Call) -> Outputs:
    """The oracle of the member's own semantics: BatchNorm's for a plain call, else the float64 evaluation of
    the call's base assumption, for the quantities BatchNorm's oracle gives this call (priors added)."""
    plain = reference(call.case)
    if call.member == "batchnorm" and call.devices == 1:
        return plain
    own = evaluate(call, base(call))
    out = {q: own[q] for q in plain if q in own}
    for target, q in GRADIENT_OF.items():
        prior = call.case.prior(target)
        if q in out and prior is not None:
            out[q] = out[q] + prior.astype(np.float64)
    return out


def explain(
    *,
    expected: Mapping[str, Any],
    entry: str = "sym",
    case: Case | None = None,
    x: Any = None,
    gamma: Any = None,
    beta: Any = None,
    moving_mean: Any = None,
    moving_var: Any = None,
    dy: Any = None,
    target: Any = None,
    loss: str | None = None,
    dtype: str = "float32",
    axis: int | None = None,
    eps: float | None = None,
    momentum: float | None = None,
    fix_gamma: bool | None = None,
    use_global_stats: bool | None = None,
    scale: bool | None = None,
    center: bool | None = None,
    is_train: bool | None = None,
    output_mean_var: bool | None = None,
    gamma_read_back: bool = False,
    backend: str | None = None,
    reproducer: str | Path | None = None,
    member: str = "batchnorm",
    devices: int = 1,
) -> Explanation:
    """Explain why the numbers a user ``expected`` (quantity -> number, numeric text or JSON list) differ from
    MXNet's for the call they made.

    Parameters left as None take MXNet's defaults for ``entry`` (eps 1e-3 and fix_gamma=True for the operator;
    eps 1e-5 and scale=True for gluon); arrays left out are what sym's simple_bind (zeros) or gluon's
    initialisers (gamma 1, beta 0, moving_mean 0, moving_var 1) give. The head is ``dy``, or ``target``
    through ``loss`` (l2: LinearRegressionOutput). ``gamma_read_back``: the user took gamma from the executor
    after the forward (which fix_gamma=True sets to 1). ``member`` and ``devices``: the family member the call
    went through and the data-parallel devices its batch was split over (semantic_variants.MEMBERS); members
    bnprops does not run here are judged against their oracle. Raises ValueError, saying what to do, for bad
    input.
    """
    if not isinstance(expected, Mapping) or not expected:
        raise ValueError("give at least one expected number, e.g. expected={'dgamma': -2.127873}")
    backend = IN_PROCESS_BACKEND if backend is None else backend
    params = {
        "axis": axis,
        "eps": eps,
        "momentum": momentum,
        "fix_gamma": fix_gamma,
        "use_global_stats": use_global_stats,
        "scale": scale,
        "center": center,
        "is_train": is_train,
        "output_mean_var": output_mean_var,
    }
    arrays = {"x": x, "gamma": gamma, "beta": beta, "moving_mean": moving_mean, "moving_var": moving_var, "dy": dy}
    expectations = [parse_expectation(str(q), v) for q, v in expected.items()]
    call = build_call(
        entry=entry,
        case=case,
        arrays=arrays,
        target=target,
        loss=loss,
        dtype=dtype,
        params=params,
        gamma_read_back=bool(gamma_read_back),
        member=member,
        devices=devices,
    )
    shapes = evaluate(call, base(call))
    for i, e in enumerate(expectations):
        if e.quantity in ("mean", "invstd") and not call.case.output_mean_var:
            raise ValueError(f"{e.quantity} is an output only with output_mean_var=True; pass it as the call did")
        want = shapes[e.quantity].shape
        if e.values.size != int(np.prod(want)):
            raise ValueError(f"expected {e.quantity} has {e.values.size} value(s); this call's has shape {want}")
        expectations[i] = dataclasses.replace(e, values=e.values.reshape(want), half_unit=e.half_unit.reshape(want))
    call, outputs, outcome = _run_mxnet(call, backend)
    oracle = _member_oracle(call)
    allowance = _allowance(call, oracle)
    return _judge(call, expectations, outputs, oracle, outcome, allowance, backend, reproducer)


def _judge(
    call: Call,
    expectations: Sequence[UserExpectation],
    outputs: Outputs,
    oracle: Outputs,
    outcome: Outcome,
    allowance: Outputs,
    backend: str,
    reproducer: str | Path | None,
) -> Explanation:
    differing = [e for e in expectations if not _matches(outputs.get(e.quantity), e, allowance)]
    joint, tier = _search(call, expectations, allowance) if differing else ([], allowance)
    combo, assumption = joint[0] if joint else ((), base(call))
    reports: list[QuantityReport] = []
    unexplained: list[UserExpectation] = []
    for e in expectations:
        q = e.quantity
        mx_value, or_value = outputs.get(q), oracle.get(q)
        kw: dict[str, Any] = {"user": e.values, "mxnet": mx_value, "oracle": or_value}
        deviation = next((kd.id for kd, qs in outcome.explained if q in qs), None)
        if e not in differing:
            note = f"MXNet deviates from the oracle here as known deviation {deviation}" if deviation else ""
            reports.append(QuantityReport(q, verdict=AGREES, note=note, **kw))
            continue
        if mx_value is None:
            note = "MXNet gives no such output for this call (a 'null' request, or gluon's scale/center=False)"
            reports.append(QuantityReport(q, verdict=DIFFERS, cause=ABSENT, note=note, **kw))
            continue
        if joint and combo:
            used = _relevant(call, combo, e, tier)
            reports.append(
                QuantityReport(q, verdict=DIFFERS, cause=SEMANTICS, causes=_causes(call, used, assumption), **kw)
            )
            continue
        if deviation is not None:
            kd = next(kd for kd, _ in outcome.explained if kd.id == deviation)
            note = kd.summary
            if joint and not combo:
                note += "; your number is what BatchNorm's semantics give (the oracle's)"
            reports.append(QuantityReport(q, verdict=DIFFERS, cause=KNOWN, deviation=deviation, note=note, **kw))
            continue
        alone, _ = _search(call, [e], allowance)
        if alone and alone[0][0]:
            c, a = alone[0]
            note = "no one combination reproduces all your numbers: this one reproduces this quantity"
            reports.append(
                QuantityReport(q, verdict=DIFFERS, cause=SEMANTICS, causes=_causes(call, c, a), note=note, **kw)
            )
            continue
        unexplained.append(e)
        mxnet_off = any(m.quantity == q for m in outcome.unexpected)
        note = (
            "MXNet also disagrees with the oracle here, beyond its error bound"
            if mxnet_off
            else f"no combination of up to {MAX_DIFFERENCES} known semantic differences reproduces your number"
        )
        reports.append(QuantityReport(q, verdict=DIFFERS, cause=UNEXPLAINED, note=note, mxnet_deviates=mxnet_off, **kw))
    path = _write_reproducer(call, backend, unexplained, oracle, allowance, reproducer) if unexplained else None
    names = tuple(v.name for v in combo)
    alternatives = tuple(tuple(v.name for v in c) for c, _ in joint[1:])
    return Explanation(
        call=call.case.describe().split(" regime=")[0],
        entry=call.entry,
        backend=backend,
        head=_head_text(call),
        quantities=tuple(reports),
        combination=names,
        alternatives=alternatives,
        reproducer=path,
        summary=_summary(reports, names, alternatives, path),
    )


def _unexplained(q: QuantityReport) -> str:
    """What an unexplained number means: MXNet off the oracle is a possible new deviation; otherwise the formula."""
    if q.mxnet_deviates:
        return "possibly a new MXNet deviation"
    return (
        "MXNet agrees with the oracle (BatchNorm's semantics as MXNet defines them), and no known semantic "
        "difference gives your number: check your formula"
    )


def _head_text(call: Call) -> str:
    head = (
        "dy as given"
        if call.target is None or call.loss is None
        else (f"{LOSS_NAMES[call.loss]} against the target, from MXNet's own y")
    )
    if call.member != "batchnorm" or call.devices > 1:
        head += f"; member {call.member}" + (f" on {call.devices} devices" if call.devices > 1 else "")
    if call.member not in RUN_MEMBERS:
        head += " (MXNet not run: bnprops has no runner for it yet; 'MXNet' below is the member's oracle)"
    return head


def _summary(
    reports: Sequence[QuantityReport], names: tuple[str, ...], alternatives: tuple[tuple[str, ...], ...], path: Any
) -> str:
    differ = [r.quantity for r in reports if r.verdict == DIFFERS]
    if not differ:
        return "every number you gave agrees with MXNet"
    parts = []
    if names:
        other = (
            f"; equally: {'; '.join(' + '.join(a) for a in alternatives)}"
            if alternatives
            else f" (the only combination of {len(names)} that does; none of fewer does)"
        )
        parts.append(
            f"your numbers are MXNet's semantics with {len(names)} difference{'s' if len(names) != 1 else ''}: "
            f"{' + '.join(names)}{other}"
        )
    known = sorted({r.deviation for r in reports if r.cause == KNOWN and r.deviation})
    if known:
        parts.append(f"MXNet deviates as known deviation {', '.join(known)}")
    lost = [r for r in reports if r.cause == UNEXPLAINED]
    for why in dict.fromkeys(_unexplained(r) for r in lost):
        which = ", ".join(r.quantity for r in lost if _unexplained(r) == why)
        parts.append(f"{which} unexplained: {why} (see the reproducer)")
    return "; ".join(parts) or f"{', '.join(differ)} differ"


def _write_reproducer(
    call: Call,
    backend: str,
    unexplained: Sequence[UserExpectation],
    oracle: Outputs,
    allowance: Outputs,
    where: str | Path | None,
) -> Path:
    """A standalone script (mxnet and numpy only): the call, MXNet's numbers beside the user's and the oracle's;
    exit status 1 while MXNet differs from the user's numbers."""
    path = (
        Path(where)
        if where is not None
        else DEFAULT_REPRODUCER_DIR / f"explain-{call.case.fingerprint().hex()[:12]}.py"
    )
    if path.is_dir():
        path = path / f"explain-{call.case.fingerprint().hex()[:12]}.py"
    snippet = make_snippet(call.case, entry=call.entry, backend="native" if backend == "native" else "onednn")
    expected = {e.quantity: e.values.tolist() for e in unexplained}
    tol = {}
    for e in unexplained:
        extra = allowance[e.quantity].reshape(e.values.shape) if e.quantity in allowance else 0.0
        tol[e.quantity] = (e.half_unit + extra + 4 * _U32 * np.abs(e.values)).tolist()
    oracle_values = {e.quantity: np.asarray(oracle[e.quantity]).tolist() for e in unexplained if e.quantity in oracle}
    lines = [
        snippet,
        "",
        f"expected = {expected!r}  # the numbers the user expected",
        f"tolerance = {tol!r}  # half a unit of their last digit, plus float32 rounding",
        f"oracle = {oracle_values!r}  # bnprops' float64 oracle",
        "",
        "",
        "def main():",
        "    differ = []",
        "    for q, want in expected.items():",
        "        got = np.asarray(actual.get(q, np.nan), dtype=np.float64).reshape(np.shape(want))",
        "        off = bool((np.abs(got - np.asarray(want)) > np.asarray(tolerance[q])).any())",
        "        differ += [q] if off else []",
        "        verdict_q = 'DIFFERS' if off else 'agrees'",
        "        print(f'{q}: MXNet {got.tolist()} expected {want} oracle {oracle.get(q)}', verdict_q)",
        "    return verdict(bool(differ), f\"MXNet's {', '.join(differ) or 'numbers'} \" + "
        "('differ from the expected ones' if differ else 'agree with the expected ones'))",
    ]
    script = reproduction.script(
        kind="explain",
        ident=path.stem,
        title="MXNet BatchNorm numbers that no known semantic difference explains",
        about=[f"Call: {call.entry} {call.case.describe()}"],
        persists="MXNet's numbers differ from the expected ones",
        body="\n".join(lines),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, script, executable=True)
    return path

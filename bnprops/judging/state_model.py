"""The reference model of a BatchNorm's state over a sequence of calls, and the check after every rule.

A single call's oracle cannot see what a BatchNorm carries from one call to the next: gamma, beta, the
moving statistics and each gradient buffer (read back as ``training.STATE_KEYS``).  After each rule
the model says what they must hold: a rule that computes is judged as one call (``judgement.judge``)
on the state *as MXNet left it*, so bounds never compound; a rule whose effect is exact must produce
exactly that; everything else must keep every bit.

Where MXNet's documentation leaves the answer open, the contracts chosen (one update of the moving
statistics per training step, in its backward; none from a second backward; gluon's grad_req setter
gives a new zero buffer; ...) and why, beside PyTorch's, are in the documentation's page on training
sequences.  ``SEQUENCE_DEVIATIONS`` records MXNet's departures with a model: a departure that matches
it is known, anything else a failure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import Any

import numpy as np

from bnprops.base import reproduction
from bnprops.base.float_warnings import ignoring
from bnprops.judging.comparator import compare
from bnprops.judging.deviations.onednn_backward_cache_ignores_mode import (
    ONEDNN_BACKWARD_CACHE_IGNORES_MODE,
    TRAINING_BACKWARD_ENTRY,
    other_mode_dx,
)
from bnprops.judging.deviations.sym_inference_backward_trains import SYM_INFERENCE_BACKWARD_TRAINS
from bnprops.judging.judgement import Outcome, judge
from bnprops.judging.known_deviations import (
    FROZEN_LAYER_KEEPS_MOVING_STATS,
    FROZEN_SYM_KEEPS_GAMMA,
    RETAINED_GRAPH_UPDATES_AGAIN,
)
from bnprops.judging.with_relu import judge_with_relu
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, PRIOR_FIELDS, QUANTITIES, Case, Outputs, param_dtype
from bnprops.model.evaluation import evaluate
from bnprops.mx import mxversion
from bnprops.mx.runners import IN_PROCESS_BACKEND, kernel_for
from bnprops.mx.training import SESSIONS, STATE_KEYS, open_session, session_source

#: What a training step produces: every quantity but the ones only output_mean_var adds.
TRAIN_QUANTITIES = tuple(q for q in QUANTITIES if q not in ("mean", "invstd"))
FORWARD_QUANTITIES = ("y", "forward_moving_mean", "forward_moving_var")
BACKWARD_QUANTITIES = ("dx", "dgamma", "dbeta", "gamma")
#: Where each gradient quantity lives in the state.
BUFFER_OF = {"dx": "grad:data", "dgamma": "grad:gamma", "dbeta": "grad:beta"}
#: BatchNormWithReLU's entries (mx.with_relu): each step judged by its judge, the head masked by that step's y.
RELU_ENTRIES = ("nd-relu", "sym-relu", "gluon-relu")


def retained_graph_updates_again(entry: str, kernel: str) -> bool:
    """Where RETAINED_GRAPH_UPDATES_AGAIN applies (it is not certain: MXNet may show the contract instead)."""
    return True


@dataclasses.dataclass(frozen=True)
class Config:
    """A session's fixed parameters and initial state."""

    entry: str
    dtype: str
    x_shape: tuple[int, ...]
    eps: float
    momentum: float
    fix_gamma: bool
    use_global_stats: bool
    grad_req: tuple[str, str, str]
    gamma: np.ndarray
    beta: np.ndarray
    moving_mean: np.ndarray
    moving_var: np.ndarray
    center: bool = True
    axis: int = 1

    def session_kwargs(self) -> dict[str, Any]:
        return {
            "x_shape": self.x_shape,
            "dtype": self.dtype,
            "params": {
                "eps": self.eps,
                "momentum": self.momentum,
                "fix_gamma": self.fix_gamma,
                "use_global_stats": self.use_global_stats,
                "axis": self.axis,
            },
            "gamma": self.gamma,
            "beta": self.beta,
            "moving_mean": self.moving_mean,
            "moving_var": self.moving_var,
            "grad_req": dict(zip(GRAD_TARGETS, self.grad_req, strict=True)),
            **({"center": self.center} if self.entry.startswith("gluon") else {}),
        }


class SequenceFailure(AssertionError):
    """The state after a rule is not what the model says; the message ends with a standalone replay script.

    ``rules`` names the sequence that ran (the failing rule last), ``quantity`` what broke there.
    """

    def __init__(self, message: str, *, rules: tuple[str, ...] = (), quantity: str = "", script: str = "") -> None:
        super().__init__(message)
        self.rules, self.quantity, self.script = rules, quantity, script


@dataclasses.dataclass
class Step:
    method: str
    args: dict[str, Any]


State = dict[str, np.ndarray | None]
#: A value a replay compares with: (expected values, bound); None expected: no array at all.
Reference = tuple[np.ndarray | None, np.ndarray | float]
#: What a replay checks after a step (Tracker.check; a raising step's: {"step", "raises"}).
Check = dict[str, Any]
#: What a sequence's script does, in its header.
REPLAYS = "Replays the rules on one BatchNorm and prints the state after each; then judges the finding's checks."


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


class Layer:
    """The model of the layer between rules: its requests and flags, the state it holds, and what each rule makes of it.

    ``state`` is the state before the next rule, as MXNet left it (so bounds never compound over a sequence).
    """

    def __init__(self, config: Config, state: State) -> None:
        self.config = config
        self.use_global_stats = config.use_global_stats
        self.req = dict(zip(GRAD_TARGETS, self.effective(config.grad_req), strict=True))
        self.hybrid = config.entry in ("gluon-hybrid", "gluon-relu")
        self.shape = config.x_shape
        #: The training step whose graph a second backward may run again (x, gamma, beta as recorded).
        self.graph: dict[str, np.ndarray] | None = None
        self.state = state

    # What the entry point makes of a request.
    @property
    def gluon(self) -> bool:
        return self.config.entry.startswith("gluon")

    @property
    def entry(self) -> str:
        if self.config.entry in RELU_ENTRIES:  # a member's entry names it, hybridized or not
            return self.config.entry
        if self.gluon:
            return "gluon-hybrid" if self.hybrid else "gluon"
        return self.config.entry

    def effective(self, reqs: tuple[str, str, str]) -> tuple[str, str, str]:
        """gluon: scale=False makes gamma 'null', center=False beta."""
        data, gamma, beta = reqs
        if self.gluon:
            gamma = "null" if self.config.fix_gamma else gamma
            beta = beta if self.config.center else "null"
        return (data, gamma, beta)

    def requests(self) -> tuple[str, str, str]:
        return (self.req["data"], self.req["gamma"], self.req["beta"])

    @property
    def frozen(self) -> bool:
        """No gradient requested of the layer (the session differentiates a learnable layer after it)."""
        return all(r == "null" for r in self.req.values())

    # The case that one call is, from the state before it.
    def case(self, x: np.ndarray, dy: np.ndarray, *, is_train: bool, gradients: bool) -> Case:
        s, config = self.state, self.config
        pdt = param_dtype(config.dtype)
        reqs = self.requests() if gradients else ("write", "write", "write")
        priors: dict[str, Any] = {}
        for target, req in zip(GRAD_TARGETS, reqs, strict=True):
            if req == "add":
                before = s["grad:" + target]
                assert before is not None
                priors[PRIOR_FIELDS[target]] = before
        return Case(
            x=np.asarray(x, dtype=config.dtype),
            gamma=np.asarray(s["gamma"], dtype=pdt),
            beta=np.asarray(s["beta"], dtype=pdt),
            moving_mean=np.asarray(s["moving_mean"], dtype=pdt),
            moving_var=np.asarray(s["moving_var"], dtype=pdt),
            dy=np.asarray(dy, dtype=config.dtype),
            axis=config.axis,
            eps=config.eps,
            momentum=config.momentum,
            fix_gamma=config.fix_gamma,
            use_global_stats=self.use_global_stats,
            is_train=is_train,
            grad_req=reqs,
            regime="sequence",
            **priors,
        )

    def call_case(self, x: np.ndarray, dy: np.ndarray, *, is_train: bool) -> Case:
        """A step as one call; a frozen layer's has no gradients (a Case cannot ask for none), its buffers stay."""
        return self.case(x, dy, is_train=is_train, gradients=not self.frozen)

    def computed(self) -> tuple[str, ...]:
        """What a step computes: a frozen layer's backward gives no gradient of its own."""
        return tuple(q for q in TRAIN_QUANTITIES if not (self.frozen and q in BUFFER_OF))

    def start_call(self, x_shape: tuple[int, ...]) -> None:
        """The buffers before a call on a batch of ``x_shape``: a new shape starts the data buffer at zero."""
        state = dict(self.state)
        if tuple(x_shape) != self.shape:
            state["grad:data"] = np.zeros(x_shape, dtype=self.config.dtype)
        self.state, self.shape = state, tuple(x_shape)

    def outputs(self, case: Case, result: dict[str, np.ndarray], after: State) -> Outputs:
        """A call's results as the single-call judgement takes them: its outputs, the state it wrote."""
        outputs: Outputs = dict(result)
        for q in ("moving_mean", "moving_var", "gamma"):
            outputs[q] = after[q]  # type: ignore[assignment]
        for target in GRAD_TARGETS:
            buffer = after["grad:" + target]
            if self.req[target] != "null" and case.request(target) != "null" and buffer is not None:
                outputs[GRADIENT_OF[target]] = buffer
        return outputs

    def null_keys(self, case: Case) -> tuple[str, ...]:
        return tuple("grad:" + t for t in GRAD_TARGETS if self.req[t] == "null" or case.request(t) == "null")

    # The exact rules: the state each must leave.
    def after_grad_req(self, target: str, req: str) -> tuple[tuple[str, str, str], State]:
        """The requests after ``target`` is set to ``req``, and the state: kept (gluon: the setter's new buffer)."""
        reqs = dict(self.req, **{target: req})
        new = self.effective((reqs["data"], reqs["gamma"], reqs["beta"]))
        expected = dict(self.state)
        new_req = new[GRAD_TARGETS.index(target)]
        if self.gluon and target != "data" and new_req != self.req[target]:
            # Parameter.grad_req's setter: a new zero buffer, or none at all for 'null'.
            size = len(self.config.gamma)
            expected["grad:" + target] = None if new_req == "null" else np.zeros(size, param_dtype(self.config.dtype))
        return new, expected

    def after_update(self, lr: float) -> State:
        """gamma -= lr dgamma, beta -= lr dbeta, in numpy in the parameter dtype, for what has a gradient."""
        expected = dict(self.state)
        for t in ("gamma", "beta"):
            grad = self.state["grad:" + t]
            if self.req[t] != "null" and grad is not None:
                expected[t] = self.state[t] - np.asarray(lr, param_dtype(self.config.dtype)) * grad
        return expected

    def after_zero_grad(self) -> State:
        return {k: (np.zeros_like(v) if k.startswith("grad:") and v is not None else v) for k, v in self.state.items()}

    def frozen_departures(
        self, case: Case, after: State, quantities: tuple[str, ...]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What a step is judged on, and the recorded deviations that explain what it is not judged on.

        A frozen layer's departures that a recorded deviation's model explains are not judged. Each model keeps
        every bit of the state before the step (FROZEN_LAYER_KEEPS_MOVING_STATS: the moving statistics in
        training; FROZEN_SYM_KEEPS_GAMMA: gamma under fix_gamma); a value that moved is judged.
        """
        checked = tuple(q for q in quantities if q in self.computed())
        if not self.frozen:
            return checked, ()
        known: list[str] = []
        kept = {k for k in ("moving_mean", "moving_var", "gamma") if k in checked and _same(after[k], self.state[k])}
        if case.uses_batch_stats and {"moving_mean", "moving_var"} <= kept:
            checked = tuple(q for q in checked if q not in ("moving_mean", "moving_var"))
            known.append(FROZEN_LAYER_KEEPS_MOVING_STATS.id)
        gamma = self.state["gamma"]
        if self.config.fix_gamma and "gamma" in kept and gamma is not None and not np.all(gamma == 1):
            checked = tuple(q for q in checked if q != "gamma")
            known.append(FROZEN_SYM_KEEPS_GAMMA.id)
        return checked, tuple(known)


class Tracker:
    """Drives a session through rules, and checks the state after each against the model (``Layer``).

    ``session_factory`` makes the session from (entry, session keyword arguments); tests plant faults
    through it.  ``known`` counts the rules whose departure a SequenceDeviation explained.
    """

    def __init__(
        self, config: Config, *, session_factory: Callable[..., Any] | None = None, backend: str = IN_PROCESS_BACKEND
    ) -> None:
        self.config = config
        self.backend = backend
        factory = session_factory or (lambda entry, **kw: open_session(entry, **kw))
        self.session = factory(config.entry, **config.session_kwargs())
        self.steps: list[Step] = []
        self.known: list[tuple[int, str]] = []
        #: (deviation id, check) for each known departure: what its reproducer checks (replay_script).
        self.recorded: list[tuple[str, Check]] = []
        #: (rule number, single-call known deviation): the steps whose departure from the oracle one explained.
        self.explained: list[tuple[int, str]] = []
        self.layer = Layer(config, self.session.state())

    @property
    def graph(self) -> dict[str, np.ndarray] | None:
        return self.layer.graph

    def _rule(self, method: str, **args: Any) -> None:
        self.steps.append(Step(method, args))

    def _judge(self, case: Case, outputs: Outputs, checked: tuple[str, ...], known: tuple[str, ...] = ()) -> None:
        self.known.extend((len(self.steps), ident) for ident in known)
        _record_kept(self, case, known)
        entry, kernel = self.layer.entry, kernel_for(case, self.backend)
        negative = 0
        if entry in RELU_ENTRIES:
            relu = judge_with_relu(case, outputs, entry=entry, kernel=kernel, checked=checked)
            outcome, negative = relu.outcome, relu.negative
        else:
            outcome = judge(case, outputs, entry=entry, kernel=kernel, checked=checked, backend=self.backend)
        if negative or not (outcome.ok or _cached_other_mode(self, case, outcome, outputs)):
            _fail_judged(self, case, outcome, outputs, negative=negative)
        self.explained.extend((len(self.steps), kd.id) for kd, _ in outcome.explained)

    def _unchanged(self, after: State, keys: tuple[str, ...], why: str, expected: State | None = None) -> None:
        want = self.layer.state if expected is None else expected
        for key in keys:
            if not _same(after[key], want[key]):
                w, a = want[key], after[key]
                detail = f"  {key} must be {why}, bit for bit\n    expected: {w!r}\n    actual:   {a!r}"
                _fail(self, key, detail, [check_of(self, key, (w, 0.0))])

    def _end(self, after: State, *, graph: dict[str, np.ndarray] | None = None) -> None:
        self.layer.graph, self.layer.state = graph, after

    # The rules.
    def train_step(self, x: np.ndarray, dy: np.ndarray) -> None:
        self._step("train_step", x, dy, is_train=True)

    def inference_step(self, x: np.ndarray, dy: np.ndarray) -> None:
        """A forward in inference mode, then a backward: one call with is_train=False (the single-call oracle's)."""
        self._step("inference_step", x, dy, is_train=False)

    def _step(self, method: str, x: np.ndarray, dy: np.ndarray, *, is_train: bool) -> None:
        self._rule(method, x=x, dy=dy)
        layer = self.layer
        layer.start_call(x.shape)
        case = layer.call_case(x, dy, is_train=is_train)
        result = getattr(self.session, method)(x, dy)
        after = self.session.state()
        self._judge(case, layer.outputs(case, result, after), *layer.frozen_departures(case, after, TRAIN_QUANTITIES))
        self._unchanged(after, layer.null_keys(case), "left alone (requested with 'null')")
        self._unchanged(after, ("beta",), "left alone (an input)")
        graph = {"x": np.asarray(x), "gamma": layer.state["gamma"], "beta": layer.state["beta"], "y": result["y"]}
        self._end(after, graph=graph if is_train else None)

    def forward(self, x: np.ndarray, train: bool) -> None:
        self._rule("forward", x=x, train=train)
        self.layer.start_call(x.shape)
        case = self.layer.case(x, np.zeros_like(x), is_train=train, gradients=False)
        result = self.session.forward(x, train)
        after = self.session.state()
        self._judge(case, dict(result), FORWARD_QUANTITIES)
        self._unchanged(after, tuple(k for k in STATE_KEYS if k != "gamma"), "left alone by a forward without backward")
        if not (self.config.fix_gamma and np.all(after["gamma"] == 1)):
            self._unchanged(after, ("gamma",), "left alone by a forward (or 1 under fix_gamma)")
        self._end(after)

    def backward_again(self, dy: np.ndarray) -> None:
        graph = self.layer.graph
        assert graph is not None, "backward_again needs a training step's graph"
        self._rule("backward_again", dy=dy)
        case = self.layer.call_case(graph["x"], dy, is_train=True)
        case = dataclasses.replace(case, gamma=graph["gamma"], beta=graph["beta"])
        self.session.backward_again(dy)
        after = self.session.state()
        # BatchNormWithReLU's second backward masks the head with the recorded forward's y.
        outputs = self.layer.outputs(case, {"y": graph["y"]} if self.layer.entry in RELU_ENTRIES else {}, after)
        self._judge(case, outputs, *self.layer.frozen_departures(case, after, BACKWARD_QUANTITIES))
        self._unchanged(after, self.layer.null_keys(case), "left alone (requested with 'null')")
        if case.uses_batch_stats and retained_graph_updates_again(self.layer.entry, kernel_for(case, self.backend)):
            _check_second_update(self, case, after)
        else:
            self._unchanged(after, ("moving_mean", "moving_var"), "left alone by a second backward of one forward")
        self._end(after, graph=graph)

    def set_grad_req(self, target: str, req: str) -> None:
        self._rule("set_grad_req", target=target, req=req)
        new, expected = self.layer.after_grad_req(target, req)
        self.session.set_grad_req(target, req)
        after = self.session.state()
        self._unchanged(after, STATE_KEYS, "as the model of a grad_req change says", expected)
        self.layer.req = dict(zip(GRAD_TARGETS, new, strict=True))
        self._end(after)

    def set_use_global_stats(self, flag: bool) -> None:
        self._rule("set_use_global_stats", flag=flag)
        self.session.set_use_global_stats(flag)
        after = self.session.state()
        self._unchanged(after, STATE_KEYS, "left alone by a change of use_global_stats")
        self.layer.use_global_stats = flag
        self._end(after)

    def update(self, lr: float) -> None:
        self._rule("update", lr=lr)
        expected = self.layer.after_update(lr)
        self.session.update(lr)
        after = self.session.state()
        self._unchanged(after, STATE_KEYS, "the update gamma -= lr dgamma, beta -= lr dbeta", expected)
        self._end(after)

    def zero_grad(self) -> None:
        self._rule("zero_grad")
        expected = self.layer.after_zero_grad()
        self.session.zero_grad()
        after = self.session.state()
        self._unchanged(after, STATE_KEYS, "zeroed (gradients) or left alone", expected)
        self._end(after, graph=self.layer.graph)

    def hybridize(self) -> None:
        self._rule("hybridize")
        self.session.hybridize()
        after = self.session.state()
        self._unchanged(after, STATE_KEYS, "left alone by hybridize")
        self.layer.hybrid = True
        self._end(after)


def check_of(tracker: Tracker, quantity: str, contract: Reference, *, recorded: Reference | None = None) -> Check:
    """What a replay checks of ``quantity`` after the latest rule: the contract's value (and bound), and a recorded
    deviation's (replay_script)."""
    return {"step": len(tracker.steps), "quantity": quantity, "contract": contract, "recorded": recorded}


def _record_kept(tracker: Tracker, case: Case, known: tuple[str, ...]) -> None:
    """A frozen layer's recorded deviations: the state kept as recorded, where the contract moves it (or writes 1)."""
    evaluation = evaluate(case) if known else None
    for ident in known:
        for q in ("gamma",) if ident == FROZEN_SYM_KEEPS_GAMMA.id else ("moving_mean", "moving_var"):
            kept = tracker.layer.state[q]
            assert kept is not None and evaluation is not None
            contract = (np.ones_like(kept), 0.0) if q == "gamma" else (evaluation.expected[q], evaluation.bound[q])
            tracker.recorded.append((ident, check_of(tracker, q, contract, recorded=(kept, 0.0))))


def _cached_other_mode(tracker: Tracker, case: Case, outcome: Outcome, outputs: Outputs) -> bool:
    """Is a step's departure ONEDNN_BACKWARD_CACHE_IGNORES_MODE's (then recorded as known)? Only where it holds
    (oneDNN kernel, its releases, batch statistics), only dx off the contract, and dx its model's within its bound.

    On sym an inference step's backward trains (sym-inference-backward-trains): the cached inference primitive
    gives the contract's dx there, which that single-call deviation, certain, calls stale."""
    kd, entry = ONEDNN_BACKWARD_CACHE_IGNORES_MODE, tracker.layer.entry
    applies = (
        entry not in RELU_ENTRIES
        and not case.use_global_stats
        and kernel_for(case, tracker.backend) == kd.needs_backend
        and kd.holds_in(mxversion.running())
    )
    excused = {SYM_INFERENCE_BACKWARD_TRAINS.id} if entry == TRAINING_BACKWARD_ENTRY and not case.is_train else set()
    off = {m.quantity for m in outcome.unexpected}
    if not applies or off - {"dx"} or {d.id for d in outcome.stale} - excused or outputs.get("dx") is None:
        return False
    evaluation = evaluate(case)
    values, bound = other_mode_dx(case, evaluation, entry=entry, version=mxversion.running())
    dx = np.asarray(outputs["dx"], dtype=np.float64)
    with ignoring("invalid"):
        if not bool(((dx == values) | (np.abs(dx - values) <= bound) | (np.isnan(dx) & np.isnan(values))).all()):
            return False
    tracker.known.append((len(tracker.steps), kd.id))
    contract = (evaluation.expected["dx"], evaluation.bound["dx"])
    tracker.recorded.append((kd.id, check_of(tracker, "dx", contract, recorded=(values, bound))))
    return True


def _fail(tracker: Tracker, what: str, detail: str, checks: list[Check]) -> None:
    """End the sequence: what broke after the last rule, with a replay script (and its checks of ``what``)."""
    names = " > ".join(s.method for s in tracker.steps)
    body = replay_script(tracker, checks=checks)
    script = standalone(tracker, body, ident=signature(tracker.steps, what), what=what)
    raise SequenceFailure(
        f"MXNet ({tracker.layer.entry}, {tracker.backend}) after rule {len(tracker.steps)} of the sequence "
        f"[{names}]: {what}\n{detail}\nsignature: {signature(tracker.steps, what)}\n"
        "Replay with (mxnet and numpy only):\n" + "\n".join("    " + line for line in script.splitlines()),
        rules=tuple(s.method for s in tracker.steps),
        quantity=what,
        script=body,
    )


def _fail_judged(tracker: Tracker, case: Case, outcome: Outcome, outputs: Outputs, *, negative: int = 0) -> None:
    """A step judged wrong; BatchNormWithReLU's was judged for the head masked by its y (``outcome.case``), and
    ``negative`` counts elements of its y below 0."""
    worst = outcome.unexpected[0] if outcome.unexpected else None
    relu = tracker.layer.entry in RELU_ENTRIES
    checks = []
    evaluation = evaluate(outcome.case)
    if worst is not None and worst.quantity in evaluation.expected:
        q = worst.quantity
        expected = np.asarray(evaluation.expected[q])
        if relu and q == "y":  # the replay reads y after the ReLU: max(., 0) moves no value farther than the bound
            expected = np.maximum(expected, 0)
        checks.append(check_of(tracker, q, (expected, np.asarray(evaluation.bound[q]))))
    detail = "\n".join("  " + m.describe() for m in outcome.unexpected)
    detail += "".join(f"\n  stale known deviation {kd.id}" for kd in outcome.stale)
    if negative:
        y = outputs["y"]
        detail += f"\n  y: {negative} elements below 0 (a ReLU output never is)"
        checks.append(check_of(tracker, "y", (np.maximum(y, 0), 0.0)))
    if relu:
        detail += "\n  (BatchNormWithReLU: judged as BatchNorm for the head masked where MXNet's y <= 0)"
    what = worst.quantity if worst else ("y" if negative else "stale")
    _fail(tracker, what, f"judged as one call: {case.describe()}\n{detail}", checks)


def _check_second_update(tracker: Tracker, case: Case, after: State) -> None:
    """Where a second backward updates again (recorded), the statistics kept, or moved by the deviation's model."""
    before = tracker.layer.state
    if _same(after["moving_mean"], before["moving_mean"]) and _same(after["moving_var"], before["moving_var"]):
        return
    # Not the contract: it must be the recorded deviation's model, one more update from this state.
    moved = {k: v for k in ("moving_mean", "moving_var") if (v := after[k]) is not None}
    evaluation = evaluate(case)
    verdict = compare(case, moved, quantities=("moving_mean", "moving_var"), evaluation=evaluation)
    checks = [
        check_of(tracker, q, (before[q], 0.0), recorded=(evaluation.expected[q], evaluation.bound[q])) for q in moved
    ]
    if not verdict.ok:
        detail = "\n".join("  " + m.describe() for m in verdict.mismatches)
        what = f"neither left alone nor {RETAINED_GRAPH_UPDATES_AGAIN.id}:\n{detail}"
        _fail(tracker, "moving statistics", what, checks)
    tracker.known.append((len(tracker.steps), RETAINED_GRAPH_UPDATES_AGAIN.id))
    tracker.recorded.extend((RETAINED_GRAPH_UPDATES_AGAIN.id, c) for c in checks)


def raising(tracker: Tracker, exc: Exception) -> Check:
    """A replay's check that the latest rule raises as ``exc`` did."""
    return {"step": len(tracker.steps), "raises": type(exc).__name__}


def signature(steps: list[Step], quantity: str) -> str:
    """A finding's signature: the sequence of rules (the shrunk, shortest one) and what broke."""
    return "sequence:" + ">".join(s.method for s in steps) + ":" + quantity


def _literal(value: Any) -> str:
    if isinstance(value, np.ndarray):
        if not value.size:
            return f"np.zeros({value.shape!r}, dtype={str(value.dtype)!r})"
        body = value.astype(np.float64).tolist()
        return f"np.array({body!r}, dtype=np.float64).astype({str(value.dtype)!r})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple):
        return "(" + "".join(f"{_literal(v)}, " for v in value) + ")"
    if isinstance(value, list):
        return "[" + "".join(f"\n    {_literal(v)}," for v in value) + "\n]"
    return repr(value)


_REPLAY = """
def value_of(quantity, result, state):
    \"\"\"Where a quantity lives after a step: a call's own outputs in its result, the rest in the state.\"\"\"
    if quantity in ('y', 'forward_moving_mean', 'forward_moving_var'):
        return result.get(quantity) if isinstance(result, dict) else None
    return state.get(BUFFER_OF.get(quantity, quantity))


def within(value, reference):
    \"\"\"Is value the reference's (expected values, bound; None: no array at all)?\"\"\"
    if reference is None:
        return False
    expected, bound = reference
    if expected is None or value is None:
        return expected is None and value is None
    a, e = np.asarray(value, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return False
    with np.errstate(invalid='ignore'):
        return bool(((a == e) | (np.abs(a - e) <= bound) | (np.isnan(a) & np.isnan(e))).all())


def main(session_class=SESSION):
    \"\"\"Replay the rules, print the state after each, and judge CHECKS: the contract's verdict.\"\"\"
    seen, raised = {}, None
    try:
        s = session_class(**KWARGS)
        print('initial', s.state())
        for i, (method, args) in enumerate(STEPS, 1):
            result = getattr(s, method)(**args)
            seen[i] = (result, s.state())
            print(f'after step {i}: {method}', *seen[i])
    except Exception as exc:
        raised = (len(seen) + 1, exc)
        print(f'step {raised[0]} raised {type(exc).__name__}: {exc}')
    notes, departs, recorded, off_contract = [], [], [], []
    for c in CHECKS:
        where = f"{c.get('quantity', 'the rule')} after step {c['step']}"
        if 'raises' in c:
            hit = raised is not None and raised[0] == c['step'] and type(raised[1]).__name__ == c['raises']
            notes.append(f"step {c['step']} {'raises' if hit else 'does not raise'} {c['raises']}")
            departs.append(hit)
            continue
        if c['step'] not in seen:
            notes.append(f'{where}: not reached (the replay raised before it)')
            departs.append(True)
            recorded.append(False)
            off_contract.append(False)
            continue
        value = value_of(c['quantity'], *seen[c['step']])
        keeps, as_recorded = within(value, c['contract']), within(value, c['recorded'])
        print(where, 'is', value, '; the contract:', None if c['contract'] is None else c['contract'][0],
              *(() if c['recorded'] is None else ('; as recorded:', c['recorded'][0])))
        said = 'as recorded' if as_recorded and not keeps else 'as the contract says' if keeps else 'NEITHER'
        notes.append(f'{where}: {said}')
        departs.append(not keeps and not as_recorded)
        recorded.append(as_recorded)
        off_contract.append(not keeps)
    if raised is not None and not any('raises' in c for c in CHECKS):
        notes.append(f'step {raised[0]} raised {type(raised[1]).__name__}, where the finding does not')
        departs.append(not AS_RECORDED)
    if AS_RECORDED:
        persists = bool(recorded) and all(recorded) and any(off_contract)
    else:
        persists = any(departs)
    return verdict(persists, '; '.join(notes) or 'nothing to check: the sequence followed the model')
"""


def replay_script(tracker: Tracker, *, checks: Seq[Check] = (), as_recorded: bool = False) -> str:
    """The body of a standalone replay (mxnet and numpy only; ``standalone`` makes it a script): the tracker's steps,
    the state printed after each, and ``checks`` judged (Tracker.check's). It persists while a check's quantity
    is neither the contract's value nor a recorded deviation's, or the step raises as found (``raises``); a
    recorded deviation's (``as_recorded``) while every check's quantity is as recorded and not all as the contract.
    """
    cls, extra = SESSIONS[tracker.config.entry]
    lines = []
    if tracker.backend == "native":
        lines += ["import os", "os.environ['MXNET_MKLDNN_ENABLED'] = '0'  # the native kernel (read at import)"]
    lines += [
        "from typing import Any",
        "import mxnet as mx",
        "nan, inf = float('nan'), float('inf')",
        "",
        session_source(cls),
        f"SESSION = {cls.__name__}",
        f"KWARGS = {_literal({**tracker.config.session_kwargs(), **extra})}",
        f"STEPS = {_literal([(step.method, step.args) for step in tracker.steps])}",
        f"BUFFER_OF = {BUFFER_OF!r}",
        "# What the finding is: per check, the step, the quantity, the contract's value and bound, and a recorded",
        "# deviation's (or the exception the step raises).",
        f"CHECKS = {_literal(list(checks))}",
        f"AS_RECORDED = {as_recorded!r}",
        _REPLAY,
    ]
    return "\n".join(lines)


def standalone(tracker: Tracker, body: str, *, ident: str, what: str, recorded: str = "") -> str:
    """A replay body (replay_script) as a standalone script under the shared reproducer contract."""
    rules = " > ".join(s.method for s in tracker.steps)
    persists = (
        f"the state after the rule shows deviation {recorded}'s model, not the contract"
        if recorded
        else f"{what} leaves the reference model of the state, as found"
    )
    return reproduction.script(
        kind="known" if recorded else "sequence",
        ident=ident,
        title="a training sequence on one BatchNorm",
        about=[f"Rules: {rules} on {tracker.layer.entry}, {tracker.backend}", "", REPLAYS],
        persists=persists,
        body=body,
        recorded=recorded,
    )

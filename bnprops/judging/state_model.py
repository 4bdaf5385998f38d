"""The reference model of a BatchNorm's state over a sequence of calls, and the check after every rule.

The state is what a BatchNorm carries from one call to the next: gamma, beta, the moving statistics
and each gradient buffer (bnprops/mx/training.py reads it back as ``STATE_KEYS``).  After each rule the
model says what it must hold:

* a rule that computes (a training step, a forward alone, a second backward) is judged as one call
  by the single-call machinery (``bnprops.judging.judgement.judge``: the oracle, the error model, the
  invariants, the known deviations), on a ``Case`` built from the state *as MXNet left it* before the
  rule.  So each step's bound is that of one call, and bounds never compound over a sequence; a
  state that went wrong earlier was caught when it did;
* everything a rule must not touch must keep every bit (a 'null' buffer, the moving statistics after
  a forward alone or after a second backward, every array after a change of grad_req,
  use_global_stats or hybridization);
* a rule whose effect is exact (zeroing the gradients, the optimiser-like update, which is computed in
  numpy in the parameter dtype) must produce exactly that.

The contracts where MXNet's documentation leaves the answer open (README, "Training sequences"):

* the moving statistics are updated once per training step, in its backward (the single-call
  oracle's contract: a forward alone leaves them; PyTorch updates them in the forward instead);
* a second backward through the same recorded graph computes the same gradients (written again, or
  added again under 'add') and does *not* update the moving statistics again: one forward is one
  batch (PyTorch: the update belongs to the forward, so a second backward cannot repeat it);
* a gradient buffer survives a change of grad_req on sym and nd/npx (the same array is re-marked);
  gluon's ``Parameter.grad_req`` setter allocates a new zero buffer (or none, for 'null'): that is
  its documented design (the setter re-initialises the gradient), so the model follows it;
* a new batch shape comes with a new data array, so the data gradient buffer starts at zero.

Where MXNet departs from these, ``SEQUENCE_DEVIATIONS`` records it with a model; a departure that
matches the model is counted as known, one that does not is a failure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from bnprops.judging.comparator import compare, judging
from bnprops.judging.judgement import judge
from bnprops.judging.known_deviations import (
    FROZEN_LAYER_KEEPS_MOVING_STATS,
    FROZEN_SYM_KEEPS_GAMMA,
    RETAINED_GRAPH_UPDATES_AGAIN,
)
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, PRIOR_FIELDS, QUANTITIES, Case, Outputs, param_dtype
from bnprops.mx.runners import IN_PROCESS_BACKEND, kernel_for
from bnprops.mx.training import SESSIONS, STATE_KEYS, open_session, session_source

#: What a training step produces: every quantity but the ones only output_mean_var adds.
TRAIN_QUANTITIES = tuple(q for q in QUANTITIES if q not in ("mean", "invstd"))
FORWARD_QUANTITIES = ("y", "forward_moving_mean", "forward_moving_var")
BACKWARD_QUANTITIES = ("dx", "dgamma", "dbeta", "gamma")
#: Where each gradient quantity lives in the state.
BUFFER_OF = {"dx": "grad:data", "dgamma": "grad:gamma", "dbeta": "grad:beta"}


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


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


class Tracker:
    """Drives a session through rules, and checks the state after each against the model.

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
        self.session_class = type(self.session)
        self.steps: list[Step] = []
        self.known: list[tuple[int, str]] = []
        self.use_global_stats = config.use_global_stats
        self.req = dict(zip(GRAD_TARGETS, self.effective(config.grad_req), strict=True))
        self.hybrid = config.entry == "gluon-hybrid"
        self.shape = config.x_shape
        #: The training step whose graph a second backward may run again (x, gamma, beta as recorded).
        self.graph: dict[str, np.ndarray] | None = None
        self.state: State = self.session.state()

    # What the entry point makes of a request.
    @property
    def gluon(self) -> bool:
        return self.config.entry.startswith("gluon")

    @property
    def entry(self) -> str:
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
        s = self.state
        pdt = param_dtype(self.config.dtype)
        reqs = self.requests() if gradients else ("write", "write", "write")
        priors: dict[str, Any] = {}
        for target, req in zip(GRAD_TARGETS, reqs, strict=True):
            if req == "add":
                before = s["grad:" + target]
                assert before is not None
                priors[PRIOR_FIELDS[target]] = before
        return Case(
            x=np.asarray(x, dtype=self.config.dtype),
            gamma=np.asarray(s["gamma"], dtype=pdt),
            beta=np.asarray(s["beta"], dtype=pdt),
            moving_mean=np.asarray(s["moving_mean"], dtype=pdt),
            moving_var=np.asarray(s["moving_var"], dtype=pdt),
            dy=np.asarray(dy, dtype=self.config.dtype),
            axis=self.config.axis,
            eps=self.config.eps,
            momentum=self.config.momentum,
            fix_gamma=self.config.fix_gamma,
            use_global_stats=self.use_global_stats,
            is_train=is_train,
            grad_req=reqs,
            regime="sequence",
            **priors,
        )

    def _fail(self, what: str, detail: str, check: dict[str, Any] | None = None) -> None:
        names = " > ".join(s.method for s in self.steps)
        script = replay_script(self, check=check)
        raise SequenceFailure(
            f"MXNet ({self.entry}, {self.backend}) after rule {len(self.steps)} of the sequence [{names}]: {what}\n"
            f"{detail}\nsignature: {signature(self.steps, what)}\nReplay with (mxnet and numpy only):\n"
            + "\n".join("    " + line for line in script.splitlines()),
            rules=tuple(s.method for s in self.steps),
            quantity=what,
            script=script,
        )

    def _judge(self, case: Case, outputs: Outputs, checked: tuple[str, ...]) -> None:
        kernel = kernel_for(case, self.backend)
        outcome = judge(case, outputs, entry=self.entry, kernel=kernel, checked=checked, backend=self.backend)
        if not outcome.ok:
            worst = outcome.unexpected[0] if outcome.unexpected else None
            check = None
            if worst is not None and worst.quantity in outputs:
                apparatus = judging(outcome.case)
                check = {
                    "quantity": worst.quantity,
                    "expected": np.asarray(apparatus.expected[worst.quantity]),
                    "bound": np.asarray(apparatus.bound[worst.quantity]),
                }
            detail = "\n".join("  " + m.describe() for m in outcome.unexpected)
            detail += "".join(f"\n  stale known deviation {kd.id}" for kd in outcome.stale)
            self._fail(worst.quantity if worst else "stale", f"judged as one call: {case.describe()}\n{detail}", check)

    def _unchanged(self, after: State, keys: tuple[str, ...], why: str, expected: State | None = None) -> None:
        want = self.state if expected is None else expected
        for key in keys:
            if not _same(after[key], want[key]):
                check = None
                w, a = want[key], after[key]
                if w is not None and a is not None and w.shape == a.shape:
                    check = {"quantity": key, "expected": w, "bound": np.zeros(w.shape)}
                self._fail(
                    key,
                    f"  {key} must be {why}, bit for bit\n    expected: {want[key]!r}\n    actual:   {after[key]!r}",
                    check,
                )

    def _buffers_after(self, x_shape: tuple[int, ...]) -> State:
        """The buffers before a call on a batch of ``x_shape``: a new shape starts the data buffer at zero."""
        state = dict(self.state)
        if tuple(x_shape) != self.shape:
            state["grad:data"] = np.zeros(x_shape, dtype=self.config.dtype)
        return state

    def _record(self, method: str, **args: Any) -> None:
        self.steps.append(Step(method, args))

    # The rules.
    def train_step(self, x: np.ndarray, dy: np.ndarray) -> None:
        self._record("train_step", x=x, dy=dy)
        self.state = self._buffers_after(x.shape)
        case = self._call_case(x, dy, is_train=True)
        result = self.session.train_step(x, dy)
        self.shape = tuple(x.shape)
        after = self.session.state()
        self._judge(case, self._outputs(case, result, after), self._frozen_departures(case, after))
        self._nulls_kept(case, after)
        self._unchanged(after, ("beta",), "left alone (an input)")
        self.graph = {"x": np.asarray(x), "gamma": self.state["gamma"], "beta": self.state["beta"]}  # type: ignore[dict-item]
        self.state = after

    def inference_step(self, x: np.ndarray, dy: np.ndarray) -> None:
        """A forward in inference mode, then a backward: one call with is_train=False (the single-call oracle's)."""
        self._record("inference_step", x=x, dy=dy)
        self.state = self._buffers_after(x.shape)
        case = self._call_case(x, dy, is_train=False)
        result = self.session.inference_step(x, dy)
        self.shape = tuple(x.shape)
        after = self.session.state()
        self._judge(case, self._outputs(case, result, after), self._frozen_departures(case, after))
        self._nulls_kept(case, after)
        self._unchanged(after, ("beta",), "left alone (an input)")
        self.graph = None
        self.state = after

    def _call_case(self, x: np.ndarray, dy: np.ndarray, *, is_train: bool) -> Case:
        """A step as one call; a frozen layer's has no gradients (a Case cannot ask for none), its buffers stay."""
        return self.case(x, dy, is_train=is_train, gradients=not self.frozen)

    def _frozen_departures(
        self, case: Case, after: State, quantities: tuple[str, ...] = TRAIN_QUANTITIES
    ) -> tuple[str, ...]:
        """What a step is judged on: a frozen layer's departures that a recorded deviation's model explains are not.

        Each model keeps every bit of the state before the step (FROZEN_LAYER_KEEPS_MOVING_STATS: the moving
        statistics in training; FROZEN_SYM_KEEPS_GAMMA: gamma under fix_gamma); a value that moved is judged.
        """
        checked = tuple(q for q in quantities if q in self._computed())
        if not self.frozen:
            return checked
        kept = {k for k in ("moving_mean", "moving_var", "gamma") if k in checked and _same(after[k], self.state[k])}
        if case.uses_batch_stats and {"moving_mean", "moving_var"} <= kept:
            checked = tuple(q for q in checked if q not in ("moving_mean", "moving_var"))
            self.known.append((len(self.steps), FROZEN_LAYER_KEEPS_MOVING_STATS.id))
        gamma = self.state["gamma"]
        if self.config.fix_gamma and "gamma" in kept and gamma is not None and not np.all(gamma == 1):
            checked = tuple(q for q in checked if q != "gamma")
            self.known.append((len(self.steps), FROZEN_SYM_KEEPS_GAMMA.id))
        return checked

    def _computed(self) -> tuple[str, ...]:
        """What a step computes: a frozen layer's backward gives no gradient of its own."""
        return tuple(q for q in TRAIN_QUANTITIES if not (self.frozen and q in BUFFER_OF))

    def forward(self, x: np.ndarray, train: bool) -> None:
        self._record("forward", x=x, train=train)
        self.state = self._buffers_after(x.shape)
        case = self.case(x, np.zeros_like(x), is_train=train, gradients=False)
        result = self.session.forward(x, train)
        self.shape = tuple(x.shape)
        after = self.session.state()
        self._judge(case, dict(result), FORWARD_QUANTITIES)
        keys = tuple(k for k in STATE_KEYS if k != "gamma")
        self._unchanged(after, keys, "left alone by a forward without backward")
        if not (self.config.fix_gamma and np.all(after["gamma"] == 1)):
            self._unchanged(after, ("gamma",), "left alone by a forward (or 1 under fix_gamma)")
        self.graph = None
        self.state = after

    def backward_again(self, dy: np.ndarray) -> None:
        assert self.graph is not None, "backward_again needs a training step's graph"
        self._record("backward_again", dy=dy)
        graph = self.graph
        case = dataclasses.replace(
            self._call_case(graph["x"], dy, is_train=True), gamma=graph["gamma"], beta=graph["beta"]
        )
        self.session.backward_again(dy)
        after = self.session.state()
        outputs = self._outputs(case, {}, after)
        self._judge(case, outputs, self._frozen_departures(case, after, BACKWARD_QUANTITIES))
        self._nulls_kept(case, after)
        if not case.uses_batch_stats or not retained_graph_updates_again(self.entry, kernel_for(case, self.backend)):
            self._unchanged(after, ("moving_mean", "moving_var"), "left alone by a second backward of one forward")
        elif not (
            _same(after["moving_mean"], self.state["moving_mean"])
            and _same(after["moving_var"], self.state["moving_var"])
        ):
            # Not the contract: it must be the recorded deviation's model, one more update from this state.
            moved = {"moving_mean": after["moving_mean"], "moving_var": after["moving_var"]}
            verdict = compare(case, moved, quantities=("moving_mean", "moving_var"))
            if not verdict.ok:
                detail = "\n".join("  " + m.describe() for m in verdict.mismatches)
                self._fail("moving statistics", f"neither left alone nor {RETAINED_GRAPH_UPDATES_AGAIN.id}:\n{detail}")
            self.known.append((len(self.steps), RETAINED_GRAPH_UPDATES_AGAIN.id))
        self.state = after

    def set_grad_req(self, target: str, req: str) -> None:
        self._record("set_grad_req", target=target, req=req)
        reqs = dict(self.req)
        reqs[target] = req
        new = self.effective((reqs["data"], reqs["gamma"], reqs["beta"]))
        old = self.req[target]
        self.session.set_grad_req(target, req)
        after = self.session.state()
        expected = dict(self.state)
        new_req = new[GRAD_TARGETS.index(target)]
        if self.gluon and target != "data" and new_req != old:
            # Parameter.grad_req's setter: a new zero buffer, or none at all for 'null'.
            size = len(self.config.gamma)
            expected["grad:" + target] = None if new_req == "null" else np.zeros(size, param_dtype(self.config.dtype))
        self._unchanged(after, STATE_KEYS, "as the model of a grad_req change says", expected)
        self.req = dict(zip(GRAD_TARGETS, new, strict=True))
        self.graph = None
        self.state = after

    def set_use_global_stats(self, flag: bool) -> None:
        self._record("set_use_global_stats", flag=flag)
        self.session.set_use_global_stats(flag)
        after = self.session.state()
        self._unchanged(after, STATE_KEYS, "left alone by a change of use_global_stats")
        self.use_global_stats = flag
        self.graph = None
        self.state = after

    def update(self, lr: float) -> None:
        self._record("update", lr=lr)
        self.session.update(lr)
        after = self.session.state()
        expected = dict(self.state)
        pdt = param_dtype(self.config.dtype)
        for t in ("gamma", "beta"):
            grad = self.state["grad:" + t]
            if self.req[t] != "null" and grad is not None:
                expected[t] = self.state[t] - np.asarray(lr, pdt) * grad
        self._unchanged(after, STATE_KEYS, "the update gamma -= lr dgamma, beta -= lr dbeta", expected)
        self.graph = None
        self.state = after

    def zero_grad(self) -> None:
        self._record("zero_grad")
        self.session.zero_grad()
        after = self.session.state()
        expected = {
            k: (np.zeros_like(v) if k.startswith("grad:") and v is not None else v) for k, v in self.state.items()
        }
        self._unchanged(after, STATE_KEYS, "zeroed (gradients) or left alone", expected)
        self.state = after

    def hybridize(self) -> None:
        self._record("hybridize")
        self.session.hybridize()
        after = self.session.state()
        self._unchanged(after, STATE_KEYS, "left alone by hybridize")
        self.hybrid = True
        self.graph = None
        self.state = after

    # Helpers of the rules.
    def _outputs(self, case: Case, result: dict[str, np.ndarray], after: State) -> Outputs:
        outputs: Outputs = dict(result)
        for q in ("moving_mean", "moving_var", "gamma"):
            outputs[q] = after[q]  # type: ignore[assignment]
        for target in GRAD_TARGETS:
            buffer = after["grad:" + target]
            if self.req[target] != "null" and case.request(target) != "null" and buffer is not None:
                outputs[GRADIENT_OF[target]] = buffer
        return outputs

    def _nulls_kept(self, case: Case, after: State) -> None:
        keys = tuple("grad:" + t for t in GRAD_TARGETS if self.req[t] == "null" or case.request(t) == "null")
        self._unchanged(after, keys, "left alone (requested with 'null')")


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
    return repr(value)


_WHERE = {
    "y": "result['y']",
    "forward_moving_mean": "result['forward_moving_mean']",
    "forward_moving_var": "result['forward_moving_var']",
    **{q: f"state[{b!r}]" for q, b in BUFFER_OF.items()},
}


def replay_script(tracker: Tracker, *, check: dict[str, Any] | None = None) -> str:
    """A standalone script (mxnet and numpy only) that replays the tracker's steps and prints the state after each.

    ``check``: the quantity of the last step that failed, its expected values and bound; the script
    exits with status 1 while MXNet's value lies outside that bound.
    """
    cls, extra = SESSIONS[tracker.config.entry]
    lines = ["from __future__ import annotations"]
    if tracker.backend == "native":
        lines += ["import os", "os.environ['MXNET_MKLDNN_ENABLED'] = '0'  # the native kernel (read at import)"]
    lines += [
        "import sys",
        "from typing import Any",
        "import mxnet as mx, numpy as np",
        "nan, inf = float('nan'), float('inf')",
        "",
        session_source(cls),
        f"s = {cls.__name__}(**{_literal({**tracker.config.session_kwargs(), **extra})})",
        "state = s.state()",
        "print('initial', state)",
    ]
    for i, step in enumerate(tracker.steps, 1):
        args = ", ".join(f"{k}={_literal(v)}" for k, v in step.args.items())
        lines.append(f"result = s.{step.method}({args})")
        lines.append("state = s.state()")
        lines.append(f"print('after step {i}: {step.method}', result, state)")
    if check is not None:
        quantity = check["quantity"]
        where = _WHERE.get(quantity, f"state[{quantity!r}]")
        lines += [
            f"actual = np.asarray({where}, dtype=np.float64)",
            f"expected = {_literal(np.asarray(check['expected'], dtype=np.float64))}",
            f"bound = {_literal(np.asarray(check['bound'], dtype=np.float64))}",
            "bad = ~((np.abs(actual - expected) <= bound) | (np.isnan(actual) & np.isnan(expected)))",
            f"print({quantity!r}, 'expected', expected, 'bound', bound, 'actual', actual)",
            "sys.exit(1 if bad.any() else 0)",
        ]
    return "\n".join(lines) + "\n"

"""Training sequences as values: a session's configuration and its rules, drawn whole, run and stored.

The pytest state machines (test_training) draw their rules one at a time; the fuzz job needs
the whole sequence as one value that its example database can store, shrink (Hypothesis shortens the
list of rules first, so a finding comes with the shortest sequence that shows it) and replay.  A
``Sequence`` is that value; ``run_sequence`` drives it through a ``state_model.Tracker``, which checks
the state after every rule.  Rules that do not apply where they fall (a second backward with no
recorded graph, hybridizing a layer that is not gluon's) are skipped, as the machines' preconditions
skip them.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import Any

import numpy as np
from hypothesis import strategies as st

from bnprops.judging.shortest_sequence import fixed_args, fixed_config
from bnprops.judging.state_model import RELU_ENTRIES, Config, SequenceFailure, Tracker, raising, replay_script
from bnprops.model.case import GRAD_TARGETS, param_dtype
from bnprops.mx import family
from bnprops.mx.runners import IN_PROCESS_BACKEND
from bnprops.mx.with_relu import PLAIN

#: The entry points a session exists for, and the requests a rule may set.
ENTRIES = ("sym", "nd", "npx", "gluon", "gluon-hybrid")
#: Family members' entries a session exists for (mx.training.SESSIONS): BatchNormWithReLU, float32 4-D axis 1.
MEMBER_ENTRIES = RELU_ENTRIES
REQUESTS = ("write", "add", "null")
#: Rules a sequence draws (state_model.Tracker's methods).
RULES = (
    "train_step",
    "forward",
    "inference_step",
    "backward_again",
    "set_grad_req",
    "set_use_global_stats",
    "update",
    "zero_grad",
    "hybridize",
)
#: A drawn batch is one of these (0: the configuration's own size); backward_again's head gradient is drawn for
#: the largest and cut to the recorded batch.
_BATCHES = (0, 0, 1, 3)
_MAX_BATCH = 4
_FORMAT = "bnprops.sequence/1"


@functools.cache
def _values(shape: tuple[int, ...], lo: float, hi: float, dtype: str) -> st.SearchStrategy[np.ndarray]:
    """An array of ``dtype`` with values in [lo, hi], from one drawn seed through numpy (the endpoints are exact in
    every dtype, so rounding keeps the values in range): an element-by-element draw made a sequence cost 11 ms to
    draw, and what a sequence finding needs shrunk is its rules, not its values."""
    return st.integers(0, 2**32 - 1).map(lambda seed: np.random.default_rng(seed).uniform(lo, hi, shape).astype(dtype))


@st.composite
def configs(draw: st.DrawFn, *, entries: Seq[str] = ENTRIES, dtypes: Seq[str] = ("float32", "float64")) -> Config:
    """A session's configuration and initial state: small shapes, well-conditioned values, any requests."""
    entry = draw(st.sampled_from(list(entries)), label="entry")
    member = entry in MEMBER_ENTRIES  # BatchNormWithReLU runs float32 4-D input with channels on axis 1 only
    dtype = "float32" if member else draw(st.sampled_from(list(dtypes)), label="dtype")
    channels = draw(st.integers(1, 3), label="channels")
    tail = draw(st.sampled_from([(1, 1), (2, 1), (1, 3)] if member else [(), (2,)]), label="trailing dims")
    pdt = param_dtype(dtype)
    return Config(
        entry=entry,
        dtype=dtype,
        x_shape=(draw(st.integers(1, _MAX_BATCH), label="batch"), channels, *tail),
        eps=draw(st.sampled_from([1e-3, 1e-5]), label="eps"),
        momentum=draw(st.sampled_from([0.9, 0.5, 0.0]), label="momentum"),
        fix_gamma=draw(st.booleans(), label="fix_gamma"),
        use_global_stats=draw(st.booleans(), label="use_global_stats"),
        grad_req=tuple(draw(st.sampled_from(REQUESTS), label=f"grad_req {t}") for t in GRAD_TARGETS),  # type: ignore[arg-type]
        gamma=draw(_values((channels,), 0.25, 2.0, pdt)),
        beta=draw(_values((channels,), -1.0, 1.0, pdt)),
        moving_mean=draw(_values((channels,), -1.0, 1.0, pdt)),
        moving_var=draw(_values((channels,), 0.25, 2.0, pdt)),
        center=draw(st.booleans(), label="center"),
    )


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule of a sequence and its arguments (arrays drawn for the batch they name)."""

    method: str
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, name: str) -> Any:
        return dict(self.args)[name]


@st.composite
def _with_batch(draw: st.DrawFn, method: str, x_shape: tuple[int, ...], dt: str) -> Rule:
    batch = draw(st.sampled_from(_BATCHES), label="batch size")
    shape = (batch or x_shape[0], *x_shape[1:])
    args: dict[str, Any] = {"batch": batch, "x": draw(_values(shape, -4.0, 4.0, dt))}
    if method == "forward":
        args["train"] = draw(st.booleans())
    else:
        args["dy"] = draw(_values(shape, -2.0, 2.0, dt))
    return Rule(method, tuple(args.items()))


@functools.cache
def _rules(x_shape: tuple[int, ...], dt: str, max_rules: int) -> st.SearchStrategy[list[Rule]]:
    """The rules for a configuration's shape and dtype: built once per pair, as building (and Hypothesis's
    validating) a strategy costs more than drawing from it."""
    return st.lists(_rule(x_shape, dt), min_size=1, max_size=max_rules)


def _rule(x_shape: tuple[int, ...], dt: str) -> st.SearchStrategy[Rule]:
    full = (_MAX_BATCH, *x_shape[1:])
    return st.one_of(
        _with_batch("train_step", x_shape, dt),
        _with_batch("forward", x_shape, dt),
        _with_batch("inference_step", x_shape, dt),
        _values(full, -2.0, 2.0, dt).map(lambda dy: Rule("backward_again", (("dy", dy),))),
        st.tuples(st.sampled_from(GRAD_TARGETS), st.sampled_from(REQUESTS)).map(
            lambda tr: Rule("set_grad_req", (("target", tr[0]), ("req", tr[1])))
        ),
        st.booleans().map(lambda f: Rule("set_use_global_stats", (("flag", f),))),
        st.sampled_from([0.5, 0.125]).map(lambda lr: Rule("update", (("lr", lr),))),
        st.just(Rule("zero_grad")),
        st.just(Rule("hybridize")),
    )


@dataclasses.dataclass(frozen=True)
class Sequence:
    """A configuration and the rules to run on it, in order."""

    config: Config
    rules: tuple[Rule, ...]

    def for_entry(self, entry: str) -> Sequence:
        """The same sequence on another entry point (the fuzz target's)."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, entry=entry))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.method for r in self.rules)

    def describe(self) -> str:
        c = self.config
        reqs = "/".join(c.grad_req)
        head = (
            f"{c.entry} {c.dtype}{list(c.x_shape)} eps={c.eps:g} momentum={c.momentum:g} fix_gamma={c.fix_gamma} "
            f"use_global_stats={c.use_global_stats} grad_req(data/gamma/beta)={reqs}"
        )
        if c.entry.startswith("gluon"):
            head += f" center={c.center}"
        return f"{head}: {' > '.join(self.names) or '(no rules)'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "config": {k: _encode(v) for k, v in dataclasses.asdict(self.config).items()},
            "rules": [{"method": r.method, "args": {k: _encode(v) for k, v in r.args}} for r in self.rules],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sequence:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"not a bnprops sequence (expected format {_FORMAT!r})")
        raw = {k: _decode(v) for k, v in data["config"].items()}
        raw["x_shape"], raw["grad_req"] = tuple(raw["x_shape"]), tuple(raw["grad_req"])
        rules = tuple(
            Rule(str(r["method"]), tuple((k, _decode(v)) for k, v in r["args"].items())) for r in data["rules"]
        )
        return cls(Config(**raw), rules)

    @classmethod
    def from_json(cls, text: str) -> Sequence:
        return cls.from_dict(json.loads(text))


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"dtype": str(value.dtype), "shape": list(value.shape), "values": value.astype(np.float64).tolist()}
    if isinstance(value, tuple):
        return list(value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"dtype", "shape", "values"}:
        return np.asarray(value["values"], dtype=np.float64).astype(value["dtype"]).reshape(value["shape"])
    return value


def sequences(
    *, entries: Seq[str] = ENTRIES, dtypes: Seq[str] = ("float32", "float64"), max_rules: int = 8
) -> st.SearchStrategy[Sequence]:
    """Sequences of up to ``max_rules`` rules on a drawn configuration (lists shrink to the shortest first)."""
    if not entries or not set(entries) <= set(ENTRIES + MEMBER_ENTRIES):
        raise ValueError(f"entries must be some of {ENTRIES + MEMBER_ENTRIES}, got {entries!r}")
    if max_rules < 1:
        raise ValueError(f"max_rules must be at least 1, got {max_rules}")
    return configs(entries=entries, dtypes=dtypes).flatmap(
        lambda c: _rules(c.x_shape, c.dtype, max_rules).map(lambda rules: Sequence(c, tuple(rules)))
    )


def fixed_sequence(*rules: str, entry: str = "nd", dtype: str = "float64", **config: object) -> Sequence:
    """The named rules on judging.shortest_sequence's fixed batch (a (3, 2) x, or its values in the ``x_shape``
    given) and configuration, as a Sequence: a recorded sequence deviation's shortest sequence is this."""
    built = fixed_config(entry=entry, dtype=dtype, **config)
    steps = []
    for method in rules:
        args = fixed_args(method, x_shape=built.x_shape, dtype=dtype)
        batch = {"batch": 0} if "x" in args else {}  # a rule with a batch names it: the configuration's own size
        steps.append(Rule(method, tuple((batch | args).items())))
    return Sequence(built, tuple(steps))


def member_unavailable_reason(entry: str, backend: str) -> str | None:
    """Why a member entry's sessions cannot run on ``backend`` here (its release, its kernels), or None."""
    return family.skip_reason(entry, backend)


def routed_entry(sequence: Sequence, entry: str, backend: str) -> str:
    """The entry a sequence drawn for ``sequence.config.entry`` runs on at the plain target ``entry``: a member
    entry drawn runs on the target whose code it shares (mx.with_relu.PLAIN) where it can, else the target's."""
    drawn = sequence.config.entry
    if drawn in MEMBER_ENTRIES and PLAIN[drawn] == entry and member_unavailable_reason(drawn, backend) is None:
        return drawn
    return entry


@dataclasses.dataclass(frozen=True)
class SequenceRun:
    """What running a sequence came to: the rules that ran, the failure (if any) and the recorded deviations."""

    sequence: Sequence
    ran: tuple[str, ...]
    #: (rule, deviation id) for each rule where a recorded sequence deviation's model held instead of the contract.
    known: tuple[tuple[str, str], ...]
    #: The failing rule's quantity ('' when the state followed the model throughout), the message and the replay.
    quantity: str = ""
    message: str = ""
    script: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.quantity)


SessionFactory = Callable[..., Any]


def resolve(path: str | None) -> SessionFactory | None:
    """A session factory named module:function (tests plant faulty sessions so, in a worker process too)."""
    if not path:
        return None
    module, _, name = path.partition(":")
    factory: SessionFactory = getattr(importlib.import_module(module), name)
    return factory


def run_sequence(
    sequence: Sequence,
    *,
    backend: str = IN_PROCESS_BACKEND,
    session_factory: SessionFactory | None = None,
    script: bool = False,
    deviation: str = "",
) -> SequenceRun:
    """Drive ``sequence`` through a Tracker on this process's backend; the first departure from the model ends it.

    MXNet raising in a rule is a finding too (quantity 'raises:<exception type>').  A failure comes with its
    replay script's body (state_model.replay_script); ``script``: a run that follows the model too, whose replay
    checks recorded deviation ``deviation`` as recorded (none: it has nothing to check, and exits 0).
    """
    tracker: Tracker | None = None
    try:
        tracker = Tracker(sequence.config, session_factory=session_factory, backend=backend)
        for rule in sequence.rules:
            _apply(tracker, rule)
    except SequenceFailure as failure:
        assert tracker is not None
        return SequenceRun(sequence, failure.rules, _known(tracker), failure.quantity, str(failure), failure.script)
    except Exception as exc:  # MXNet refused a rule: a finding, kept with its message and a replay that raises so
        ran = () if tracker is None else tuple(s.method for s in tracker.steps)
        known = () if tracker is None else _known(tracker)
        what = f"raises:{type(exc).__name__}"
        replay = "" if tracker is None else replay_script(tracker, checks=[raising(tracker, exc)])
        return SequenceRun(sequence, ran, known, what, f"{type(exc).__name__}: {exc}", replay)
    checks = [c for ident, c in tracker.recorded if ident == deviation]
    replay = replay_script(tracker, checks=checks, as_recorded=bool(deviation)) if script else ""
    return SequenceRun(sequence, tuple(s.method for s in tracker.steps), _known(tracker), script=replay)


def _known(tracker: Tracker) -> tuple[tuple[str, str], ...]:
    return tuple(dict.fromkeys((tracker.steps[i - 1].method, ident) for i, ident in tracker.known))


def _apply(t: Tracker, rule: Rule) -> None:
    m, c = rule.method, t.config
    if m in ("train_step", "inference_step", "forward"):
        x = rule.arg("x")
        if rule.arg("batch") == 0 and x.shape != t.layer.shape:  # 'the batch size in use', drawn for the initial one
            x = np.resize(x, t.layer.shape).astype(c.dtype)
        if m == "forward":
            t.forward(x, rule.arg("train"))
        else:
            dy = rule.arg("dy")
            getattr(t, m)(x, np.resize(dy, x.shape).astype(c.dtype))
    elif m == "backward_again":
        if t.graph is not None:
            n = t.graph["x"].shape[0]
            t.backward_again(np.resize(rule.arg("dy"), (n, *t.graph["x"].shape[1:])).astype(c.dtype))
    elif m == "hybridize":
        if t.layer.gluon:
            t.hybridize()
    elif m == "update":
        t.update(rule.arg("lr"))
    elif m == "set_grad_req":
        t.set_grad_req(rule.arg("target"), rule.arg("req"))
    elif m == "set_use_global_stats":
        t.set_use_global_stats(rule.arg("flag"))
    elif m == "zero_grad":
        t.zero_grad()
    else:
        raise ValueError(f"unknown rule {m!r}; expected one of {RULES}")

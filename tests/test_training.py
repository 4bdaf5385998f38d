"""Stateful properties: one BatchNorm driven through sequences of training steps, per entry-point family.

Each RuleBasedStateMachine draws a session (bnprops/training.py) and a sequence of rules; after every
rule bnprops/state_model.py checks the state (moving statistics, gamma, every gradient buffer) against
the reference model, each computing rule as one call judged by the single-call oracle on the state
MXNet left.  A failure shrinks to the shortest sequence and prints a standalone replay script.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bnprops.case import param_dtype
from bnprops.state_model import Config, SequenceFailure, Tracker, signature
from bnprops.training import AutogradSession, SymSession, open_session
from tests.helpers import budget

ROOT = Path(__file__).resolve().parent.parent
REQS = ("write", "add", "null")


def values(n: int, lo: float, hi: float) -> st.SearchStrategy[list[float]]:
    return st.lists(st.floats(lo, hi, width=32), min_size=n, max_size=n)


class BatchNormSequences(RuleBasedStateMachine):
    """Sequences of rules on one BatchNorm; subclasses choose the entry points."""

    entries: tuple[str, ...] = ("sym",)
    #: How the session is made (entry, **kwargs); the meta tests plant faulty sessions through it.
    session_factory: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.tracker: Tracker | None = None

    @property
    def t(self) -> Tracker:
        assert self.tracker is not None
        return self.tracker

    def _array(self, data: st.DataObject, shape: tuple[int, ...], lo: float, hi: float, dtype: str) -> np.ndarray:
        n = int(np.prod(shape))
        return np.asarray(data.draw(values(n, lo, hi)), dtype=dtype).reshape(shape)

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        entry = data.draw(st.sampled_from(self.entries), label="entry")
        dtype = data.draw(st.sampled_from(["float32", "float64"]), label="dtype")  # oneDNN and native in-process
        channels = data.draw(st.integers(1, 3), label="channels")
        tail = data.draw(st.sampled_from([(), (2,)]), label="trailing dims")
        batch = data.draw(st.integers(1, 4), label="batch")
        fix_gamma = data.draw(st.booleans(), label="fix_gamma")
        center = data.draw(st.booleans(), label="center") if entry.startswith("gluon") else True
        reqs = tuple(data.draw(st.sampled_from(REQS), label=f"grad_req {t}") for t in ("data", "gamma", "beta"))
        pdt = param_dtype(dtype)
        config = Config(
            entry=entry,
            dtype=dtype,
            x_shape=(batch, channels, *tail),
            eps=data.draw(st.sampled_from([1e-3, 1e-5]), label="eps"),
            momentum=data.draw(st.sampled_from([0.9, 0.5, 0.0]), label="momentum"),
            fix_gamma=fix_gamma,
            use_global_stats=data.draw(st.booleans(), label="use_global_stats"),
            grad_req=("write", "write", "write"),  # set below, once the entry point's mapping is known
            gamma=self._array(data, (channels,), 0.25, 2.0, pdt),
            beta=self._array(data, (channels,), -1.0, 1.0, pdt),
            moving_mean=self._array(data, (channels,), -1.0, 1.0, pdt),
            moving_var=self._array(data, (channels,), 0.25, 2.0, pdt),
            center=center,
        )
        probe = Tracker.__new__(Tracker)
        probe.config = config
        effective = probe.effective(reqs)  # type: ignore[arg-type]
        if effective == ("null", "null", "null"):
            reqs = ("write", *reqs[1:])  # something must take a gradient, or there is no backward
        config = Config(**{**config.__dict__, "grad_req": reqs})
        self.tracker = Tracker(config, session_factory=self.session_factory)

    def _batch(self, data: st.DataObject) -> np.ndarray:
        shape = list(self.t.shape)
        shape[0] = data.draw(st.sampled_from([shape[0], shape[0], 1, 3]), label="batch size")
        return self._array(data, tuple(shape), -4.0, 4.0, self.t.config.dtype)

    @rule(data=st.data())
    def train_step(self, data: st.DataObject) -> None:
        x = self._batch(data)
        dy = self._array(data, x.shape, -2.0, 2.0, self.t.config.dtype)
        self.t.train_step(x, dy)

    @rule(data=st.data(), train=st.booleans())
    def forward(self, data: st.DataObject, train: bool) -> None:
        self.t.forward(self._batch(data), train)

    @precondition(lambda self: self.tracker is not None and self.tracker.graph is not None)
    @rule(data=st.data())
    def backward_again(self, data: st.DataObject) -> None:
        assert self.t.graph is not None
        self.t.backward_again(self._array(data, self.t.graph["x"].shape, -2.0, 2.0, self.t.config.dtype))

    @rule(which=st.sampled_from(["data", "gamma", "beta"]), req=st.sampled_from(REQS))
    def set_grad_req(self, which: str, req: str) -> None:
        target = which
        reqs = dict(self.t.req)
        reqs[target] = req
        if self.t.effective((reqs["data"], reqs["gamma"], reqs["beta"])) == ("null", "null", "null"):
            return  # a layer with nothing to differentiate has no backward to run
        self.t.set_grad_req(target, req)

    @rule(flag=st.booleans())
    def set_use_global_stats(self, flag: bool) -> None:
        self.t.set_use_global_stats(flag)

    @rule(lr=st.sampled_from([0.5, 0.125]))
    def update(self, lr: float) -> None:
        self.t.update(lr)

    @rule()
    def zero_grad(self) -> None:
        self.t.zero_grad()

    @invariant()
    def finite_state(self) -> None:
        """Finite data, gamma, beta and eps > 0: nothing the BatchNorm carries may be NaN or inf."""
        if self.tracker is None:
            return
        for key, value in self.t.state.items():
            assert value is None or np.isfinite(value).all(), f"{key} is not finite after {self.t.steps}: {value}"


class GluonSequences(BatchNormSequences):
    entries = ("gluon", "gluon-hybrid")

    @precondition(lambda self: self.tracker is not None)
    @rule()
    def hybridize(self) -> None:
        self.t.hybridize()


class SymSequences(BatchNormSequences):
    entries = ("sym",)


class AutogradSequences(BatchNormSequences):
    entries = ("nd", "npx")


#: Steps per sequence; examples per machine: a quarter of the profile budget (100 in dev: 3 machines in about 10 s).
STEPS = 12


def run(machine: type[RuleBasedStateMachine], *, examples: int | None = None, steps: int = STEPS) -> None:
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples or budget(0.25),
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


@pytest.mark.property
@pytest.mark.parametrize("machine", [SymSequences, AutogradSequences, GluonSequences], ids=["sym", "nd-npx", "gluon"])
def test_state_follows_the_model_over_sequences(machine: type[RuleBasedStateMachine]) -> None:
    run(machine)


# Meta tests: faults that only show in a sequence must be caught, and replayable.


class DoubleUpdateOnSecondStep(AutogradSession):
    """Planted: from the second training step on, the backward runs twice (the moving statistics update twice)."""

    calls = 0

    def train_step(self, x: Any, dy: Any) -> Any:
        result = super().train_step(x, dy)
        self.calls += 1
        if self.calls >= 2:
            with self._semantics():
                self.last.backward(self._head(dy), retain_graph=True)
        return result


class WriteAccumulatesFromSecondStep(SymSession):
    """Planted: from the second training step on, a 'write' gradient buffer is not reset: it accumulates."""

    calls = 0

    def train_step(self, x: Any, dy: Any) -> Any:
        before = {k: g.asnumpy() for k, g in self.grads.items()}
        result = super().train_step(x, dy)
        self.calls += 1
        names = {"bn_gamma": "gamma", "bn_beta": "beta"}
        if self.calls >= 2:
            for name, target in names.items():
                if self.req[target] == "write":
                    self.grads[name][:] = self.grads[name].asnumpy() + before[name]
        return result


def planted(entry: str, session: type) -> type[BatchNormSequences]:
    def factory(_: str, **kwargs: Any) -> Any:
        return session(**kwargs)

    class Planted(BatchNormSequences):
        entries = (entry,)
        session_factory = staticmethod(factory)

    return Planted


@pytest.mark.parametrize(
    ("entry", "session", "quantity"),
    [("nd", DoubleUpdateOnSecondStep, "moving_"), ("sym", WriteAccumulatesFromSecondStep, "d")],
    ids=["moving-stats-updated-twice", "write-buffer-not-reset"],
)
def test_a_fault_on_the_second_call_is_caught_in_a_sequence(
    entry: str, session: type, quantity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hypothesis gives up shrinking after MAX_SHRINKING_SECONDS (300 s): a stateful shrink that meets a
    # plateau of MXNet-heavy variants would hold the run that long (seen once in a few runs), so cap it.
    monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", 10)
    machine = planted(entry, session)
    run(machine, examples=1, steps=1)  # a first-call-only check misses it
    with pytest.raises(SequenceFailure) as caught:
        run(machine, examples=100)
    message = str(caught.value)
    line = next(s for s in message.splitlines() if s.startswith("signature: "))
    _, sequence, failed = line.removeprefix("signature: ").split(":", 2)
    # Caught in a sequence with the two training steps the fault needs, on a planted quantity. (Shrinking is
    # capped above, so the sequence may keep some steps that do not matter, such as zero_grad.)
    steps = sequence.split(">")
    assert steps.count("train_step") >= 2 and failed.startswith(quantity), message
    script = message.split("Replay with (mxnet and numpy only):\n", 1)[1]
    script = "\n".join(s[4:] for s in script.splitlines())
    # The planted fault is not in the replayed MXNet, which matches the model: the script exits 0.
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_replay_script_runs_alone_and_reproduces(tmp_path: Path) -> None:
    """A fault in the state (a gradient buffer) replays from the script with mxnet and numpy only: it exits 1."""
    config = Config(
        entry="nd",
        dtype="float64",
        x_shape=(3, 2),
        eps=1e-3,
        momentum=0.9,
        fix_gamma=False,
        use_global_stats=False,
        grad_req=("write", "write", "write"),
        gamma=np.array([1.5, 0.5]),
        beta=np.array([0.1, -0.2]),
        moving_mean=np.zeros(2),
        moving_var=np.ones(2),
    )
    tracker = Tracker(config, session_factory=lambda entry, **kw: WriteAccumulatesFromSecondStep(**kw))
    x = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.25]])
    tracker.train_step(x, x * 0.5)
    with pytest.raises(SequenceFailure) as caught:
        tracker.train_step(x, -x)
    assert "signature: sequence:train_step>train_step:d" in str(caught.value)
    script = "\n".join(s[4:] for s in str(caught.value).split("mxnet and numpy only):\n", 1)[1].splitlines())
    path = tmp_path / "replay.py"
    path.write_text(script)
    # The script replays on MXNet's own session (no fault), so MXNet is right there: exit status 0.
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "after step 2: train_step" in done.stdout
    assert signature(tracker.steps, "dgamma") == "sequence:train_step>train_step:dgamma"


_NATIVE_SEQUENCES = """
import numpy as np
from bnprops.runners import IN_PROCESS_BACKEND
from bnprops.state_model import Config, Tracker
assert IN_PROCESS_BACKEND == 'native', IN_PROCESS_BACKEND
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 2)).astype('float32')
known = []
for entry in ('sym', 'nd', 'npx', 'gluon', 'gluon-hybrid'):
    for reqs in (('write', 'write', 'write'), ('add', 'add', 'add'), ('null', 'write', 'add')):
        config = Config(entry=entry, dtype='float32', x_shape=(4, 2), eps=1e-3, momentum=0.9, fix_gamma=False,
                        use_global_stats=False, grad_req=reqs, gamma=np.array([1.5, .5], 'float32'),
                        beta=np.array([.1, .2], 'float32'), moving_mean=np.zeros(2, 'float32'),
                        moving_var=np.ones(2, 'float32'))
        t = Tracker(config)
        t.train_step(x, x * 0.5)
        t.backward_again(-x)
        t.forward(x, True)
        t.set_grad_req('gamma', 'write')
        t.train_step(x[:3], x[:3])
        t.update(0.5)
        t.set_use_global_stats(True)
        t.train_step(x, x)
        t.zero_grad()
        known += [(entry, k) for _, k in t.known]
print(sorted(set(known)))
"""


def test_sequences_on_the_native_kernel() -> None:
    """float32 on MXNet's own kernel (MXNET_MKLDNN_ENABLED=0, read at start-up): fixed sequences in a subprocess."""
    env = {**os.environ, "MXNET_MKLDNN_ENABLED": "0"}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _NATIVE_SEQUENCES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "retained-graph-backward-updates-again" in done.stdout, done.stdout
    assert time.monotonic() - start < 120


def test_sessions_open_for_every_entry_point() -> None:
    for entry in ("sym", "nd", "npx", "gluon", "gluon-hybrid"):
        session = open_session(
            entry,
            x_shape=(2, 1),
            dtype="float32",
            params={"eps": 1e-3, "momentum": 0.9, "fix_gamma": False, "use_global_stats": False, "axis": 1},
            gamma=np.ones(1, "float32"),
            beta=np.zeros(1, "float32"),
            moving_mean=np.zeros(1, "float32"),
            moving_var=np.ones(1, "float32"),
            grad_req={"data": "write", "gamma": "write", "beta": "write"},
        )
        assert set(session.state()) >= {"gamma", "moving_mean", "grad:data"}

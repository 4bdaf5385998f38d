"""BatchNorm's input as a network makes it: a producer chain, its description, its reproducer and its strategy.

A ``Chain`` is a value: the API the network is built in, the input's shape and dtype, a short tuple of
producer steps (convolution, dense, pooling, activation, concatenation, slicing, reshape, transpose),
BatchNorm's parameters and the seed every array comes from. It is JSON-serialisable and rebuilds
the same network bit for bit; mx.network_kernel runs it, judging.in_network judges it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from bnprops.base import reproduction
from bnprops.base.selection import validate_choices
from bnprops.model.case import DTYPES
from bnprops.mx import network_kernel
from bnprops.mx.network_kernel import APIS, STEP_KEYS, step_output_shape

#: A step: its op and parameters as sorted (key, value) pairs (tuples, not lists: chains are hashable).
Step = tuple[tuple[str, Any], ...]
#: Channel counts a convolution or dense layer draws: oneDNN blocks by 8 and 16 (nChw8c, nChw16c), so
#: 8, 16 and 64 take its blocked layouts and the others (1, 3, 5, 12, 20) its plain or padded ones.
CHANNELS = (8, 16, 64, 1, 3, 5, 12, 20)
#: The first step of a chain: what makes BatchNorm's input from the network's input.
FIRST_STEPS = ("conv1d", "conv2d", "conv3d", "dense", "none")
#: The steps that may follow the first.
LATER_STEPS = ("act", "pool", "concat", "slice", "reshape", "transpose")
FORMAT = "bnprops.chain/1"


def step(op: str, **params: Any) -> Step:
    """A step with exactly the parameters its op takes (network_kernel.STEP_KEYS)."""
    if op not in STEP_KEYS:
        raise ValueError(f"unknown step {op!r}; choose from {sorted(STEP_KEYS)}")
    if set(params) != set(STEP_KEYS[op]):
        raise ValueError(f"step {op!r} takes {STEP_KEYS[op]}, got {tuple(sorted(params))}")
    frozen = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in params.items()}
    return (("op", op), *sorted(frozen.items()))


def _step_dict(s: Step) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in s}


def _step_text(s: Step) -> str:
    d = dict(s)
    op = d.pop("op")
    if op == "conv":
        return f"conv{d['dims']}d({d['channels']}, k{d['kernel']}, pad {d['pad']})"
    if op == "act":
        return str(d["kind"])
    if op == "pool":
        return f"{d['kind']}pool({d['kernel']})"
    if op == "slice":
        return f"slice(axis {d['axis']}, {d['begin']}:{d['end']})"
    return f"{op}({', '.join(str(v) for v in d.values())})"


@dataclasses.dataclass(frozen=True)
class Chain:
    """A network that makes BatchNorm's input, BatchNorm last; trained forward, then backward(dy)."""

    api: str
    input_shape: tuple[int, ...]
    steps: tuple[Step, ...]
    axis: int = 1
    eps: float = 1e-3
    momentum: float = 0.9
    fix_gamma: bool = False
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"unknown api {self.api!r}; choose from {APIS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        object.__setattr__(self, "input_shape", tuple(int(n) for n in self.input_shape))
        object.__setattr__(self, "steps", tuple(step(**_step_dict(s)) for s in self.steps))
        out = self.bn_input_shape  # raises ValueError where a step cannot take its input
        if not -len(out) <= self.axis < len(out):
            raise ValueError(f"BatchNorm axis {self.axis} is out of range for its input of shape {out}")

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The input's shape, then each step's output shape."""
        return network_kernel.shapes(self.to_dict())

    @property
    def bn_input_shape(self) -> tuple[int, ...]:
        shape = self.input_shape
        for s in self.steps:
            shape = step_output_shape(_step_dict(s), shape)
        return shape

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(str(dict(s)["op"]) for s in self.steps)

    def with_(self, **changes: Any) -> Chain:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The spec network_kernel runs: plain JSON types only."""
        return {
            "format": FORMAT,
            "api": self.api,
            "dtype": self.dtype,
            "input_shape": list(self.input_shape),
            "steps": [_step_dict(s) for s in self.steps],
            "bn": {"axis": self.axis, "eps": self.eps, "momentum": self.momentum, "fix_gamma": self.fix_gamma},
            "seed": self.seed,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chain:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a bnprops chain (format {data.get('format')!r}, expected {FORMAT!r})")
        bn = data["bn"]
        return cls(
            api=data["api"],
            input_shape=tuple(data["input_shape"]),
            steps=tuple(step(**s) for s in data["steps"]),
            axis=int(bn["axis"]),
            eps=float(bn["eps"]),
            momentum=float(bn["momentum"]),
            fix_gamma=bool(bn["fix_gamma"]),
            dtype=data["dtype"],
            seed=int(data["seed"]),
        )

    @classmethod
    def from_json(cls, text: str) -> Chain:
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """One line: ``sym: float32[2, 3, 8, 8] -> conv2d(16, k3, pad 1) -> relu -> BatchNorm(axis=1, ...)``."""
        parts = [f"{self.api}: {self.dtype}{list(self.input_shape)}", *(_step_text(s) for s in self.steps)]
        bn = (
            f"BatchNorm({self.dtype}{list(self.bn_input_shape)}, axis={self.axis}, eps={self.eps!r}, "
            f"momentum={self.momentum!r}, fix_gamma={self.fix_gamma}) seed={self.seed}"
        )
        return " -> ".join([*parts, bn])

    def __repr__(self) -> str:
        return f"<Chain {self.describe()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def snippet(
        self,
        *,
        backend: str = "onednn",
        ident: str = "",
        kind: str = "network",
        about: Sequence[str] = (),
        recorded: str = "",
        raises: str = "",
    ) -> str:
        """A standalone reproducer (mxnet and numpy only, bnprops.base.reproduction's contract) that builds this
        network, runs it, runs the same BatchNorm alone (mx.nd.BatchNorm) on a plain copy of its captured input,
        and prints how the two differ.

        It persists while they differ at all (on oneDNN a different layout may legitimately round differently:
        read the numbers) or the network raises; for ``recorded`` (a recorded network deviation's id) while the
        network raises with its message, ``raises``. ``main(in_network)`` takes another in-network
        run, so that a test can run the same comparison on a planted one.
        """
        body = chain_body(self, backend=backend, recorded=raises if recorded else "")
        persists = f"the network raises {raises!r}" if recorded else "in-network results differ or it raises"
        return reproduction.script(
            kind=kind,
            ident=ident or f"chain-{hashlib.sha256(self.to_json().encode()).hexdigest()[:10]}",
            title="BatchNorm inside a network, against the same call alone",
            about=[f"Chain: {self.describe()}", *about],
            persists=persists,
            body=body,
            recorded=recorded,
        )


def chain_body(chain: Chain, *, backend: str, recorded: str = "") -> str:
    """The reproducer's body (Chain.snippet): the network kernel's source, the chain's spec and ``main``."""
    if backend not in ("onednn", "native"):
        raise ValueError(f"a chain runs on a CPU backend ('onednn' or 'native'), not {backend!r}")
    source = inspect.getsource(network_kernel).replace("from __future__ import annotations\n", "")
    head = ["import os"]
    if backend == "native":
        head.append("os.environ['MXNET_MKLDNN_ENABLED'] = '0'  # the native kernel (read at import)")
    head.append("os.environ.setdefault('MXNET_ENGINE_TYPE', 'NaiveEngine')  # as bnprops runs MXNet")
    tail = f"""
import json
spec = json.loads({chain.to_json()!r})
RECORDED = {recorded!r}  # a recorded deviation's message: it persists while the network raises with it


def main(in_network=run_in_network):
    \"\"\"The contract's verdict: BatchNorm in the network against the plain call (or the network raising).\"\"\"
    print({chain.describe()!r})
    try:
        net = in_network(spec)  # BatchNorm inside the network, with its input x and head gradient dy captured
    except Exception as exc:
        raised = f"the network raised {{type(exc).__name__}}: {{exc}}"
        return verdict(RECORDED in str(exc), raised)
    plain = run_plain(spec, net['x'], net['dy'])  # the same BatchNorm alone on a plain copy of x
    differ = []
    for q, value in plain.items():
        if q not in net:
            continue
        diff = np.abs(net[q].astype(np.float64) - value.astype(np.float64))
        same = np.array_equal(net[q], value, equal_nan=True)
        differ += [] if same else [q]
        worst = np.unravel_index(int(np.nanargmax(diff)), diff.shape) if diff.size else ()
        print(f"{{q:12}} {{'bit for bit' if same else 'differs'}}; max |in-network - plain| = {{np.nanmax(diff):.3g}}"
              + ('' if same else f" at {{worst}}: {{net[q][worst]!r}} vs {{value[worst]!r}}"))
    found = f"in-network differs from plain in {{', '.join(differ)}}" if differ else "in-network equals plain"
    return verdict(bool(differ) and not RECORDED, found + ('; the network did not raise' if RECORDED else ''))
"""
    return "\n".join(head) + "\n" + source + tail


def chain_step_names(chain: Chain) -> str:
    """The chain's shape of steps, for tallies: 'conv2d>relu>transpose'."""
    names = []
    for s in chain.steps:
        d = dict(s)
        names.append(f"conv{d['dims']}d" if d["op"] == "conv" else str(d.get("kind", d["op"])))
    return ">".join(names) or "none"


def _first(draw: st.DrawFn, first: str, channels: Sequence[int]) -> tuple[tuple[int, ...], list[Step]]:
    """The input shape and the first step (none: BatchNorm takes the input as it is)."""
    n = draw(st.integers(2, 4))
    if first == "dense":
        features = draw(st.sampled_from([(draw(st.integers(1, 24)),), (2, 3, 3)]))
        return (n, *features), [step("dense", units=draw(st.sampled_from(channels)))]
    if first == "none":
        return (n, draw(st.sampled_from(channels)), draw(st.integers(1, 6)), draw(st.integers(1, 6))), []
    dims = int(first[4])
    spatial = {1: (3, 12), 2: (3, 7), 3: (3, 4)}[dims]
    shape = (n, draw(st.integers(1, 4)), *(draw(st.integers(*spatial)) for _ in range(dims)))
    kernel = draw(st.sampled_from([1, 3]))
    pad = draw(st.sampled_from([0, kernel // 2]))
    if kernel > min(shape[2:]) + 2 * pad:
        kernel, pad = 1, 0
    return shape, [step("conv", dims=dims, channels=draw(st.sampled_from(channels)), kernel=kernel, pad=pad)]


def _later(draw: st.DrawFn, op: str, shape: tuple[int, ...], channel: int) -> tuple[Step, int] | None:
    """One more step on ``shape`` (channels at ``channel``), with where the channels are after it; None: it
    cannot take that shape."""
    ndim = len(shape)
    if op == "act":
        return step("act", kind=draw(st.sampled_from(["relu", "tanh", "sigmoid", "softrelu"]))), channel
    if op == "pool":
        if ndim < 3 or channel != 1 or min(shape[2:]) < 2:
            return None
        return step("pool", kind=draw(st.sampled_from(["max", "avg"])), kernel=2), channel
    if op == "concat":
        return (step("concat"), channel) if ndim >= 2 else None
    if op == "slice":
        axis = draw(st.sampled_from([0, 1] if ndim >= 2 else [0]))
        if shape[axis] < 2:
            return None
        begin = draw(st.integers(0, shape[axis] - 2))
        end = draw(st.integers(begin + 1, shape[axis]))
        return step("slice", axis=axis, begin=begin, end=end), channel
    if op == "reshape":  # the spatial dimensions merged into one, the channels kept where they are
        if ndim < 4 or channel not in (1, ndim - 1):
            return None
        spatial = math.prod(shape[2:]) if channel == 1 else math.prod(shape[1:-1])
        target = (shape[0], shape[1], spatial) if channel == 1 else (shape[0], spatial, shape[-1])
        return step("reshape", shape=target), (1 if channel == 1 else 2)
    if op == "transpose":
        if ndim < 2:
            return None
        to_last = draw(st.booleans())
        if to_last:  # channels-last, as a user ports an NHWC model
            axes = (*(i for i in range(ndim) if i != channel), channel)
        else:
            axes = tuple(draw(st.permutations(range(ndim))))
        return step("transpose", axes=axes), axes.index(channel)
    raise ValueError(f"unknown step {op!r}")


def chains(
    *,
    apis: Sequence[str] | None = None,
    dtypes: Sequence[str] = ("float32",),
    first_steps: Sequence[str] | None = None,
    later_steps: Sequence[str] | None = None,
    max_steps: int = 3,
    channels: Sequence[int] = CHANNELS,
    channel_axis_share: float = 0.8,
) -> st.SearchStrategy[Chain]:
    """Producer chains ending in BatchNorm.

    ``first_steps`` choose what makes BatchNorm's input (FIRST_STEPS; 'none' hands it the network's
    input), ``later_steps`` what may follow (LATER_STEPS), up to ``max_steps`` steps in all.
    BatchNorm's axis is the producer's channel axis (wherever the steps moved it, written as a
    positive or a negative index) in ``channel_axis_share`` of the chains, any axis otherwise.
    float16 reaches only chains without convolution or dense layers: MXNet's CPU gemm has none.
    """
    apis_ = tuple(APIS) if apis is None else validate_choices("api", apis, allowed=APIS)
    dtypes_ = validate_choices("dtype", dtypes, allowed=DTYPES)
    firsts = FIRST_STEPS if first_steps is None else validate_choices("first step", first_steps, allowed=FIRST_STEPS)
    laters = LATER_STEPS if later_steps is None else validate_choices("step", later_steps, allowed=LATER_STEPS)
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if not channels or any(int(c) < 1 for c in channels):
        raise ValueError(f"channels must be positive channel counts, got {list(channels)}")
    if not 0 <= channel_axis_share <= 1:
        raise ValueError(f"channel_axis_share must lie in [0, 1], got {channel_axis_share}")

    @st.composite
    def build(draw: st.DrawFn) -> Chain:
        dtype = draw(st.sampled_from(dtypes_))
        usable = [f for f in firsts if dtype != "float16" or f == "none"]
        if not usable:
            raise ValueError("float16 chains need first step 'none': MXNet's CPU gemm (conv, dense) has no float16")
        shape, steps = _first(draw, draw(st.sampled_from(usable)), channels)
        current = step_output_shape(_step_dict(steps[0]), shape) if steps else shape
        channel = 1
        for _ in range(draw(st.integers(0, max_steps - len(steps)))):
            later = _later(draw, draw(st.sampled_from(laters)), current, channel)
            if later is None:
                continue
            steps.append(later[0])
            channel = later[1]
            current = step_output_shape(_step_dict(later[0]), current)
        ndim = len(current)
        axis = channel if draw(st.floats(0, 1)) < channel_axis_share else draw(st.integers(0, ndim - 1))
        if draw(st.booleans()):
            axis -= ndim  # the same axis as users of channels-last write it: -1
        return Chain(
            api=draw(st.sampled_from(apis_)),
            input_shape=shape,
            steps=tuple(steps),
            axis=axis,
            eps=draw(st.sampled_from([1e-3, 1e-5, 2e-5, 0.1])),
            momentum=draw(st.sampled_from([0.9, 0.99, 0.1, 0.0])),
            fix_gamma=draw(st.booleans()),
            dtype=dtype,
            seed=draw(st.integers(0, 2**32 - 1)),
        )

    return build()

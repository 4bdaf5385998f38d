"""The value type for one BatchNorm call: its parameters, its arrays, and the quantities it yields."""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import inspect
import json
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

DTYPES = ("float16", "float32", "float64")
#: The operator's defaults (src/operator/nn/batch_norm-inl.h, BatchNormParam).
DEFAULT_EPS = 1e-3
DEFAULT_MOMENTUM = 0.9

#: Every quantity a BatchNorm call produces that bnprops checks, in report order.
QUANTITIES = (
    "y",
    "dx",
    "dgamma",
    "dbeta",
    "moving_mean",
    "moving_var",
    "gamma",
    "mean",
    "invstd",
    # The moving statistics between forward and backward: when the update happens.
    "forward_moving_mean",
    "forward_moving_var",
)

ARRAY_FIELDS = ("x", "gamma", "beta", "moving_mean", "moving_var", "dy")
#: What a gradient buffer may be asked to do (MXNet's OpReqType as Python names it).
GRAD_REQS = ("write", "add", "null")
#: The arrays that take a gradient, in the order of ``Case.grad_req``, with the quantity each yields.
GRAD_TARGETS = ("data", "gamma", "beta")
GRADIENT_OF = {"data": "dx", "gamma": "dgamma", "beta": "dbeta"}
#: The gradient buffers' contents before the call, for targets requested with 'add'.
PRIOR_FIELDS = {"data": "prior_dx", "gamma": "prior_dgamma", "beta": "prior_dbeta"}
#: Where a runner returns what a target's gradient buffer holds after a call that requested it with 'null'
#: (filled with ``sentinel`` before; bnprops/invariants.py checks it kept every bit). Not quantities: the
#: oracle has none of them, so the comparator, which iterates the oracle's quantities, passes them by.
NULL_BUFFER_OF = {"data": "null_dx", "gamma": "null_dgamma", "beta": "null_dbeta"}
WRITE_ALL = ("write", "write", "write")
_CASE_FORMAT = "bnprops.case/1"
T = TypeVar("T")

#: What a runner or the oracle returns: quantity name -> array (absent if not produced).
Outputs = dict[str, np.ndarray]


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()).decode()


def param_dtype(dtype: str) -> str:
    """gamma, beta and the moving statistics are float32 for float16 data, else the data's dtype."""
    return "float32" if dtype == "float16" else dtype


def sentinel(shape: tuple[int, ...], axis: int, dtype: str) -> np.ndarray:
    """What a gradient buffer requested with 'null' holds before the call: odd multiples of 1/16 in
    (-16, 16), exact in every dtype, varying along every axis but the channel axis (constant along it,
    so that a stacked call's buffers split into each case's own, bnprops/batching.py)."""
    other = [d for i, d in enumerate(shape) if i != axis]
    period = ((np.arange(251) * 37 % 251 - 125.5) / 8).astype(dtype)  # element k holds period[k % 251]
    values = np.resize(period, int(np.prod(other))).reshape(other)
    return np.ascontiguousarray(np.broadcast_to(np.expand_dims(values, axis), shape))


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One BatchNorm call: forward (training mode unless ``is_train`` is False), then backward(dy).

    ``grad_req`` gives the request for data, gamma and beta (see GRAD_TARGETS); a target requested
    with 'add' starts from the matching ``prior_*`` array, which must be given exactly then.
    """

    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    moving_mean: np.ndarray
    moving_var: np.ndarray
    dy: np.ndarray
    axis: int = 1
    eps: float = DEFAULT_EPS
    momentum: float = DEFAULT_MOMENTUM
    fix_gamma: bool = True
    use_global_stats: bool = False
    output_mean_var: bool = False
    #: Training mode for the forward and the backward (sym: forward(is_train=); autograd: train_mode=).
    is_train: bool = True
    grad_req: tuple[str, str, str] = WRITE_ALL
    prior_dx: np.ndarray | None = None
    prior_dgamma: np.ndarray | None = None
    prior_dbeta: np.ndarray | None = None
    #: Labels of the value regimes the strategy drew from; they classify failures, nothing reads them.
    regime: str = "given"

    def __post_init__(self) -> None:
        dtype = str(self.x.dtype)
        if dtype not in DTYPES:
            raise ValueError(f"x has dtype {dtype}; bnprops cases are one of {DTYPES}")
        ndim = self.x.ndim
        if ndim < 1:
            raise ValueError("x must have at least one dimension (BatchNorm needs a channel axis)")
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"axis={self.axis} is out of range for x of shape {self.x.shape}")
        if self.dy.shape != self.x.shape or self.dy.dtype != self.x.dtype:
            raise ValueError(
                f"dy must match x: got {self.dy.dtype}{self.dy.shape}, expected {self.x.dtype}{self.x.shape}"
            )
        channels = self.x.shape[self.axis]
        pdt = param_dtype(dtype)
        for name in ("gamma", "beta", "moving_mean", "moving_var"):
            arr = getattr(self, name)
            if arr.shape != (channels,) or str(arr.dtype) != pdt:
                raise ValueError(
                    f"{name} must be {pdt} of shape ({channels},) for axis {self.axis} of {self.x.shape}, "
                    f"got {arr.dtype}{arr.shape}"
                )
        self._validate_requests(pdt)
        # Derived values are memoised per case (see memo), so a case's arrays must not change under it.
        for name in self._array_fields():
            getattr(self, name).flags.writeable = False

    def fingerprint(self) -> bytes:
        """A digest of everything that defines the call (what to_json holds), at a fraction of its cost."""

        def compute() -> bytes:
            digest = hashlib.sha1()
            for field in dataclasses.fields(self):
                value = getattr(self, field.name)
                if isinstance(value, np.ndarray):
                    digest.update(f"{field.name}:{value.dtype}{value.shape}".encode())
                    digest.update(np.ascontiguousarray(value).tobytes())
                else:
                    digest.update(f"{field.name}={value!r};".encode())
            return digest.digest()

        return self.memo("fingerprint", compute)

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``, once per case: the oracle, error model and known deviations share derived values."""
        cache: dict[str, Any] = self.__dict__.setdefault("_memo", {})
        if key not in cache:
            cache[key] = compute()
        result: T = cache[key]
        return result

    def _validate_requests(self, pdt: str) -> None:
        reqs = tuple(self.grad_req)
        if len(reqs) != len(GRAD_TARGETS) or any(r not in GRAD_REQS for r in reqs):
            raise ValueError(
                f"grad_req must be 3 of {GRAD_REQS} (for {', '.join(GRAD_TARGETS)}), got {self.grad_req!r}"
            )
        if reqs == ("null",) * 3:
            raise ValueError("grad_req is 'null' for data, gamma and beta: there is nothing to differentiate")
        object.__setattr__(self, "grad_req", reqs)
        for target, req in zip(GRAD_TARGETS, reqs, strict=True):
            field = PRIOR_FIELDS[target]
            prior = getattr(self, field)
            if req != "add":
                if prior is not None:
                    raise ValueError(f"{field} is given but grad_req for {target} is {req!r}, not 'add'")
                continue
            shape, dtype = (self.x.shape, self.dtype) if target == "data" else ((self.channels,), pdt)
            if prior is None or prior.shape != shape or str(prior.dtype) != dtype:
                got = "nothing" if prior is None else f"{prior.dtype}{prior.shape}"
                raise ValueError(f"grad_req 'add' for {target} needs {field} of {dtype}{shape}, got {got}")

    # Derived facts the oracle, runners and comparator share.
    @functools.cached_property
    def dtype(self) -> str:
        return str(self.x.dtype)

    @functools.cached_property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    @functools.cached_property
    def channel_axis(self) -> int:
        return self.axis % self.x.ndim

    @functools.cached_property
    def channels(self) -> int:
        return int(self.x.shape[self.axis])

    @functools.cached_property
    def reduce_axes(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.x.ndim) if i != self.channel_axis)

    @functools.cached_property
    def reduction_length(self) -> int:
        """M, the number of elements that share one channel's statistics."""
        return int(self.x.size // max(self.channels, 1))

    @property
    def uses_batch_stats(self) -> bool:
        """Batch statistics normalise (and the moving ones update) only in training without use_global_stats."""
        return self.is_train and not self.use_global_stats

    def request(self, target: str) -> str:
        """The grad_req of 'data', 'gamma' or 'beta'."""
        return self.grad_req[GRAD_TARGETS.index(target)]

    def prior(self, target: str) -> np.ndarray | None:
        prior: np.ndarray | None = getattr(self, PRIOR_FIELDS[target])
        return prior

    def null_sentinel(self, target: str) -> np.ndarray:
        """What the runners fill ``target``'s gradient buffer with when it is requested with 'null'."""
        if target == "data":
            result: np.ndarray = sentinel(self.shape, self.channel_axis, self.dtype)
        else:
            result = sentinel((self.channels,), 0, param_dtype(self.dtype))
        return result

    @property
    def accumulates(self) -> bool:
        return "add" in self.grad_req

    def _array_fields(self) -> tuple[str, ...]:
        return ARRAY_FIELDS + tuple(f for f in PRIOR_FIELDS.values() if getattr(self, f) is not None)

    def with_(self, **changes: Any) -> Case:
        return dataclasses.replace(self, **changes)

    # Serialisation: JSON that round-trips bit for bit.
    def to_dict(self) -> dict[str, Any]:
        arrays = {
            name: {
                "dtype": str(arr.dtype),
                "shape": list(arr.shape),
                "b64": _b64(arr),
            }
            for name, arr in ((n, getattr(self, n)) for n in self._array_fields())
        }
        return {
            "format": _CASE_FORMAT,
            "axis": self.axis,
            # floats go through repr, which round-trips exactly; hex is there for humans checking bits.
            "eps": self.eps,
            "eps_hex": float(self.eps).hex(),
            "momentum": self.momentum,
            "fix_gamma": self.fix_gamma,
            "use_global_stats": self.use_global_stats,
            "output_mean_var": self.output_mean_var,
            "is_train": self.is_train,
            "grad_req": list(self.grad_req),
            "regime": self.regime,
            "arrays": arrays,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        if data.get("format") != _CASE_FORMAT:
            raise ValueError(f"not a bnprops case (format {data.get('format')!r}, expected {_CASE_FORMAT!r})")
        arrays = {}
        for name in ARRAY_FIELDS + tuple(f for f in PRIOR_FIELDS.values() if f in data["arrays"]):
            spec = data["arrays"][name]
            raw = base64.b64decode(spec["b64"])
            arr = np.frombuffer(raw, dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
            arrays[name] = arr.astype(spec["dtype"]).reshape(spec["shape"])
        return cls(
            **arrays,
            axis=int(data["axis"]),
            eps=float.fromhex(data["eps_hex"]) if "eps_hex" in data else float(data["eps"]),
            momentum=float(data["momentum"]),
            fix_gamma=bool(data["fix_gamma"]),
            use_global_stats=bool(data["use_global_stats"]),
            output_mean_var=bool(data.get("output_mean_var", False)),
            # Cases saved before these fields existed ran in training mode with grad_req='write'.
            is_train=bool(data.get("is_train", True)),
            grad_req=tuple(data.get("grad_req", WRITE_ALL)),
            regime=str(data.get("regime", "given")),
        )

    @classmethod
    def from_json(cls, text: str) -> Case:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"case JSON does not parse: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("case JSON must be an object")
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Case):
            return NotImplemented
        return self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    # The reproducer.
    def snippet(self, *, entry: str = "sym", backend: str = "onednn") -> str:
        """A standalone script (mxnet and numpy only) that makes this exact call and prints what MXNet returns.

        It leaves MXNet's results in ``actual``, a dict from quantity name to numpy array.

        ``entry`` is how the call reaches the operator (bnprops.runners.ENTRY_POINTS); ``backend``
        'native' disables oneDNN, which MXNet reads at start-up.
        """
        body = _SNIPPET_BODIES.get(entry)
        if body is None:
            raise ValueError(f"no reproducer for entry point {entry!r}; choose from {sorted(_SNIPPET_BODIES)}")
        pdt = param_dtype(self.dtype)

        def arr(a: np.ndarray) -> str:
            if not a.size:  # an empty batch: its shape is all there is to it
                return f"np.zeros({a.shape!r}, dtype={str(a.dtype)!r})"
            # float64 repr of every element is exact, and casting back restores the original bits.
            return f"np.array({a.astype(np.float64).tolist()!r}, dtype=np.float64).astype({str(a.dtype)!r})"

        head = []
        if backend == "native":
            head += ["import os", "os.environ['MXNET_MKLDNN_ENABLED'] = '0'  # the native kernel (read at import)"]
        head += [
            "import mxnet as mx, numpy as np",
            "nan, inf = float('nan'), float('inf')  # as repr writes non-finite data",
            f"x = {arr(self.x)}",
            f"dy = {arr(self.dy)}",
            f"gamma, beta = {arr(self.gamma)}, {arr(self.beta)}",
            f"moving_mean, moving_var = {arr(self.moving_mean)}, {arr(self.moving_var)}",
            f"C, pdt = {self.channels}, {pdt!r}",
            f"req = {dict(zip(GRAD_TARGETS, self.grad_req, strict=True))!r}",
            "prior = {"
            + ", ".join(f"{t!r}: {arr(p)}" for t in GRAD_TARGETS if (p := self.prior(t)) is not None)
            + "}  # gradient buffers' contents before the call (grad_req 'add')",
            f"params = dict(eps={self.eps!r}, momentum={self.momentum!r}, fix_gamma={self.fix_gamma}, "
            f"use_global_stats={self.use_global_stats}, axis={self.axis})",
            f"is_train, output_mean_var = {self.is_train}, {self.output_mean_var}",
        ]
        head.append(f"gradient_of, null_buffer_of = {GRADIENT_OF!r}, {NULL_BUFFER_OF!r}")
        head.append(inspect.getsource(sentinel).rstrip())  # standalone: numpy as np only
        head.append(
            f"null = {{t: sentinel(x.shape, {self.channel_axis}, x.dtype) if t == 'data' else sentinel((C,), 0, pdt) "
            "for t, r in req.items() if r == 'null'}  # 'null' requests' buffers before the call: it must leave them"
        )
        tail = "for q, value in actual.items():\n    print(q, value)"
        return "\n".join(head) + "\n" + body.strip("\n") + "\n" + tail

    def __repr__(self) -> str:
        return f"<Case {self.describe()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints falsifying examples with this; the arrays are in the reproducer.
        printer.text(repr(self))

    def describe(self) -> str:
        """A one-line summary for messages and tables."""
        flags = [f"fix_gamma={self.fix_gamma}", f"use_global_stats={self.use_global_stats}"]
        if self.output_mean_var:
            flags.append("output_mean_var=True")
        if not self.is_train:
            flags.append("is_train=False")
        if self.grad_req != WRITE_ALL:
            flags.append("grad_req=" + "/".join(self.grad_req))
        return (
            f"BatchNorm({self.dtype}{list(self.shape)}, axis={self.axis}, eps={self.eps!r}, "
            f"momentum={self.momentum!r}, {', '.join(flags)}) regime={self.regime}"
        )


_SNIPPET_SYM = """
sym = mx.sym.BatchNorm(mx.sym.Variable('data'), name='bn', output_mean_var=output_mean_var, **params)
names = {'data': 'data', 'gamma': 'bn_gamma', 'beta': 'bn_beta'}
values = {'data': x, 'gamma': gamma, 'beta': beta}
# Every target has a gradient buffer, a 'null' one too (bind, not simple_bind, which allocates none for it).
buffers = {t: null.get(t, prior.get(t, np.zeros_like(v))) for t, v in values.items()}
exe = sym.bind(mx.cpu(), args={names[t]: mx.nd.array(v, dtype=v.dtype) for t, v in values.items()},
               args_grad={names[t]: mx.nd.array(v, dtype=v.dtype) for t, v in buffers.items()},
               grad_req={names[t]: r for t, r in req.items()},
               aux_states={'bn_moving_mean': mx.nd.array(moving_mean, dtype=pdt),
                           'bn_moving_var': mx.nd.array(moving_var, dtype=pdt)})
outs = exe.forward(is_train=is_train)
actual = {'forward_moving_mean': exe.aux_dict['bn_moving_mean'].asnumpy(),
          'forward_moving_var': exe.aux_dict['bn_moving_var'].asnumpy()}
heads = [mx.nd.array(dy, dtype=dy.dtype)] + [mx.nd.zeros(C, dtype=pdt)] * (2 if output_mean_var else 0)
exe.backward(heads)
actual['y'] = outs[0].asnumpy()
if output_mean_var:
    actual['mean'], actual['invstd'] = outs[1].asnumpy(), outs[2].asnumpy()
for t in req:
    actual[null_buffer_of[t] if t in null else gradient_of[t]] = exe.grad_dict[names[t]].asnumpy()
actual['gamma'] = exe.arg_dict['bn_gamma'].asnumpy()
actual['moving_mean'] = exe.aux_dict['bn_moving_mean'].asnumpy()
actual['moving_var'] = exe.aux_dict['bn_moving_var'].asnumpy()
"""

_SNIPPET_AUTOGRAD = """
{setup}mod, op = {modules}
arrays = {{'data': mod.array(x, dtype=x.dtype), 'gamma': mod.array(gamma, dtype=pdt),
          'beta': mod.array(beta, dtype=pdt)}}
mm, mv = mod.array(moving_mean, dtype=pdt), mod.array(moving_var, dtype=pdt)
buffers = {{}}
for t, r in req.items():
    arrays[t].attach_grad(grad_req=r)  # a 'null' request too: its buffer must stay as filled
    buffers[t] = arrays[t].grad  # kept: autograd forgets a 'null' variable's buffer in backward
for t, value in {{**prior, **null}}.items():
    buffers[t][:] = value
with mx.autograd.record(train_mode=is_train):
    outs = op(arrays['data'], arrays['gamma'], arrays['beta'], mm, mv, output_mean_var=output_mean_var, **params)
y = outs[0] if output_mean_var else outs
actual = {{'forward_moving_mean': mm.asnumpy(), 'forward_moving_var': mv.asnumpy()}}
mx.autograd.backward([y], [mod.array(dy, dtype=dy.dtype)], train_mode=is_train)
actual['y'] = y.asnumpy()
if output_mean_var:
    actual['mean'], actual['invstd'] = outs[1].asnumpy(), outs[2].asnumpy()
for t in req:
    actual[null_buffer_of[t] if t in null else gradient_of[t]] = buffers[t].asnumpy()
actual['gamma'] = arrays['gamma'].asnumpy()
actual['moving_mean'], actual['moving_var'] = mm.asnumpy(), mv.asnumpy()
"""

_SNIPPET_GLUON = """
from mxnet.gluon import nn
# gluon's own mapping: fix_gamma = not scale (gamma then takes no gradient), center = beta learns.
layer = nn.BatchNorm(axis=params['axis'], momentum=params['momentum'], epsilon=params['eps'],
                     center=req['beta'] != 'null', scale=not params['fix_gamma'],
                     use_global_stats=params['use_global_stats'], in_channels=C)
layer.initialize(ctx=mx.cpu())
layer.cast(x.dtype.name)  # float16 keeps its parameters in float32
for p, value in [(layer.gamma, gamma), (layer.beta, beta), (layer.running_mean, moving_mean),
                 (layer.running_var, moving_var)]:
    p.set_data(mx.nd.array(value, dtype=pdt))
if not params['fix_gamma']:
    layer.gamma.grad_req = req['gamma']
if req['beta'] != 'null':
    layer.beta.grad_req = req['beta']
for t, value in prior.items():
    if t != 'data':
        getattr(layer, t).grad()[:] = value
{hybridize}data = mx.nd.array(x, dtype=x.dtype)
# A 'null' request for data gets a buffer that must stay as filled; gluon gives a 'null' Parameter none at all.
data.attach_grad(grad_req=req['data'])
data_grad = data.grad  # kept: autograd forgets a 'null' variable's buffer in backward
for t, value in {{**prior, **null}}.items():
    if t == 'data':
        data_grad[:] = value
if not is_train:
    y = layer(data)  # inference, as gluon runs it outside autograd.record()
with mx.autograd.record(train_mode=is_train):
    out = layer(data)
y = out if is_train else y
actual = {{'forward_moving_mean': layer.running_mean.data().asnumpy(),
          'forward_moving_var': layer.running_var.data().asnumpy()}}
out.backward(mx.nd.array(dy, dtype=dy.dtype), train_mode=is_train)
actual['y'] = y.asnumpy()
actual[null_buffer_of['data'] if 'data' in null else 'dx'] = data_grad.asnumpy()
for t, p in (('gamma', layer.gamma), ('beta', layer.beta)):
    if p.grad_req != 'null':
        actual[gradient_of[t]] = p.grad().asnumpy()
actual['gamma'] = layer.gamma.data().asnumpy()
actual['moving_mean'] = layer.running_mean.data().asnumpy()
actual['moving_var'] = layer.running_var.data().asnumpy()
"""

_SNIPPET_BODIES = {
    "sym": _SNIPPET_SYM,
    "nd": _SNIPPET_AUTOGRAD.format(modules="mx.nd, mx.nd.BatchNorm", setup=""),
    # the numpy interface, as its users turn it on (bnprops's runner scopes it to the call)
    "npx": _SNIPPET_AUTOGRAD.format(modules="mx.np, mx.npx.batch_norm", setup="mx.npx.set_np()\n"),
    "gluon": _SNIPPET_GLUON.format(hybridize=""),
    "gluon-hybrid": _SNIPPET_GLUON.format(hybridize="layer.hybridize()\n"),
}

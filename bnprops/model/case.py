"""The value type for one BatchNorm call: its parameters, its arrays, and the quantities it yields."""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
from typing import Any, TypeVar

import numpy as np

DTYPES = ("float16", "float32", "float64")
#: dtype -> its name: numpy's str(dtype) runs Python code each time, and every case asks many times.
_DTYPE_NAMES = {np.dtype(name): name for name in (*DTYPES, "bool", "int8", "uint8", "int32", "int64")}


def dtype_name(dtype: np.dtype[Any]) -> str:
    """str(dtype), looked up."""
    name = _DTYPE_NAMES.get(dtype)
    return str(dtype) if name is None else name


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

#: The quantities with one value per element of x (the rest have one per channel).
PER_ELEMENT = ("y", "dx")

ARRAY_FIELDS = ("x", "gamma", "beta", "moving_mean", "moving_var", "dy")
#: What a gradient buffer may be asked to do (MXNet's OpReqType as Python names it).
GRAD_REQS = ("write", "add", "null")
#: The arrays that take a gradient, in the order of ``Case.grad_req``, with the quantity each yields.
GRAD_TARGETS = ("data", "gamma", "beta")
GRADIENT_OF = {"data": "dx", "gamma": "dgamma", "beta": "dbeta"}
#: The gradient buffers' contents before the call, for targets requested with 'add'.
PRIOR_FIELDS = {"data": "prior_dx", "gamma": "prior_dgamma", "beta": "prior_dbeta"}
#: Where a runner returns what a target's gradient buffer holds after a call that requested it with 'null'
#: (filled with ``sentinel`` before; judging.invariants checks it kept every bit). Not quantities: the
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
    so that a stacked call's buffers split into each case's own, mx.batching)."""
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
    #: The rows of x's axis 0 each device gets, in rank order, for an operator that splits the batch over
    #: devices (SyncBatchNorm); empty for the operators that run on one device.
    devices: tuple[int, ...] = ()
    #: Labels of the value regimes the strategy drew from; they classify failures, nothing reads them.
    regime: str = "given"

    def __post_init__(self) -> None:
        _validate(self)
        # A case is a value: its fingerprint and every evaluation of it assume its arrays never change.
        for name in self._array_fields():
            getattr(self, name).flags.writeable = False

    @functools.cached_property
    def _fingerprint(self) -> bytes:
        return _digest(self)

    def fingerprint(self) -> bytes:
        """A digest of everything that defines the call (what to_json holds), at a fraction of its cost."""
        return self._fingerprint

    # Derived facts the oracle, runners and comparator share.
    @functools.cached_property
    def dtype(self) -> str:
        return dtype_name(self.x.dtype)

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

    # Serialisation: JSON that round-trips bit for bit (case_to_dict, case_from_dict below).
    def to_dict(self) -> dict[str, Any]:
        return case_to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        return case_from_dict(data)

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

    def __repr__(self) -> str:
        return f"<Case {self.describe()}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # Hypothesis prints falsifying examples with this; the arrays are in the reproducer.
        printer.text(repr(self))

    def describe(self) -> str:
        """A one-line summary for messages and tables."""
        return _describe(self)


def with_channel_axis(case: Case, axis: int) -> Case:
    """The same call with the channel axis moved to ``axis`` (x, dy and a prior dx moved alike): an operator
    that takes channels on one axis only (axis 1, or the last) runs it."""
    target = axis % case.x.ndim
    moved = {
        name: np.moveaxis(value, case.channel_axis, target)
        for name, value in (("x", case.x), ("dy", case.dy), ("prior_dx", case.prior_dx))
        if value is not None
    }
    return case.with_(**moved, axis=axis)


def _validate(case: Case) -> None:
    """A Case is a valid BatchNorm call, or ValueError says what is wrong."""
    dtype = dtype_name(case.x.dtype)
    if dtype not in DTYPES:
        raise ValueError(f"x has dtype {dtype}; bnprops cases are one of {DTYPES}")
    ndim = case.x.ndim
    if ndim < 1:
        raise ValueError("x must have at least one dimension (BatchNorm needs a channel axis)")
    if not -ndim <= case.axis < ndim:
        raise ValueError(f"axis={case.axis} is out of range for x of shape {case.x.shape}")
    if case.dy.shape != case.x.shape or case.dy.dtype != case.x.dtype:
        raise ValueError(f"dy must match x: got {case.dy.dtype}{case.dy.shape}, expected {case.x.dtype}{case.x.shape}")
    channels = case.x.shape[case.axis]
    pdt = param_dtype(dtype)
    for name in ("gamma", "beta", "moving_mean", "moving_var"):
        arr = getattr(case, name)
        if arr.shape != (channels,) or dtype_name(arr.dtype) != pdt:
            raise ValueError(
                f"{name} must be {pdt} of shape ({channels},) for axis {case.axis} of {case.x.shape}, "
                f"got {arr.dtype}{arr.shape}"
            )
    _validate_requests(case, pdt)
    _validate_devices(case)


def _validate_devices(case: Case) -> None:
    devices = tuple(int(n) for n in case.devices)
    if devices and (sum(devices) != case.x.shape[0] or min(devices) < 1):
        raise ValueError(
            f"devices must be positive row counts adding up to x's batch of {case.x.shape[0]}, got {case.devices!r}"
        )
    object.__setattr__(case, "devices", devices)


def _validate_requests(case: Case, pdt: str) -> None:
    reqs = tuple(case.grad_req)
    if len(reqs) != len(GRAD_TARGETS) or any(r not in GRAD_REQS for r in reqs):
        raise ValueError(f"grad_req must be 3 of {GRAD_REQS} (for {', '.join(GRAD_TARGETS)}), got {case.grad_req!r}")
    if reqs == ("null",) * 3:
        raise ValueError("grad_req is 'null' for data, gamma and beta: there is nothing to differentiate")
    object.__setattr__(case, "grad_req", reqs)
    for target, req in zip(GRAD_TARGETS, reqs, strict=True):
        field = PRIOR_FIELDS[target]
        prior = getattr(case, field)
        if req != "add":
            if prior is not None:
                raise ValueError(f"{field} is given but grad_req for {target} is {req!r}, not 'add'")
            continue
        shape, dtype = (case.x.shape, case.dtype) if target == "data" else ((case.channels,), pdt)
        if prior is None or prior.shape != shape or dtype_name(prior.dtype) != dtype:
            got = "nothing" if prior is None else f"{prior.dtype}{prior.shape}"
            raise ValueError(f"grad_req 'add' for {target} needs {field} of {dtype}{shape}, got {got}")


def case_to_dict(case: Case) -> dict[str, Any]:
    arrays = {
        name: {
            "dtype": str(arr.dtype),
            "shape": list(arr.shape),
            "b64": _b64(arr),
        }
        for name, arr in ((n, getattr(case, n)) for n in case._array_fields())
    }
    return {
        "format": _CASE_FORMAT,
        "axis": case.axis,
        # floats go through repr, which round-trips exactly; hex is there for humans checking bits.
        "eps": case.eps,
        "eps_hex": float(case.eps).hex(),
        "momentum": case.momentum,
        "fix_gamma": case.fix_gamma,
        "use_global_stats": case.use_global_stats,
        "output_mean_var": case.output_mean_var,
        "is_train": case.is_train,
        "grad_req": list(case.grad_req),
        "devices": list(case.devices),
        "regime": case.regime,
        "arrays": arrays,
    }


def case_from_dict(data: dict[str, Any]) -> Case:
    if data.get("format") != _CASE_FORMAT:
        raise ValueError(f"not a bnprops case (format {data.get('format')!r}, expected {_CASE_FORMAT!r})")
    arrays = {}
    for name in ARRAY_FIELDS + tuple(f for f in PRIOR_FIELDS.values() if f in data["arrays"]):
        spec = data["arrays"][name]
        raw = base64.b64decode(spec["b64"])
        arr = np.frombuffer(raw, dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
        arrays[name] = arr.astype(spec["dtype"]).reshape(spec["shape"])
    return Case(
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
        devices=tuple(int(n) for n in data.get("devices", ())),
        regime=str(data.get("regime", "given")),
    )


def _digest(case: Case) -> bytes:
    digest = hashlib.sha1()
    for field in dataclasses.fields(case):
        value = getattr(case, field.name)
        if isinstance(value, np.ndarray):
            digest.update(f"{field.name}:{dtype_name(value.dtype)}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(f"{field.name}={value!r};".encode())
    return digest.digest()


def _describe(case: Case) -> str:
    flags = [f"fix_gamma={case.fix_gamma}", f"use_global_stats={case.use_global_stats}"]
    if case.output_mean_var:
        flags.append("output_mean_var=True")
    if not case.is_train:
        flags.append("is_train=False")
    if case.grad_req != WRITE_ALL:
        flags.append("grad_req=" + "/".join(case.grad_req))
    if case.devices:
        flags.append("devices=" + "+".join(map(str, case.devices)))
    return (
        f"BatchNorm({case.dtype}{list(case.shape)}, axis={case.axis}, eps={case.eps!r}, "
        f"momentum={case.momentum!r}, {', '.join(flags)}) regime={case.regime}"
    )


def quantity_shape(case: Case, quantity: str) -> tuple[int, ...]:
    """The shape of a quantity's values: x's for y and dx, one per channel for the rest."""
    return case.shape if quantity in PER_ELEMENT else (case.channels,)

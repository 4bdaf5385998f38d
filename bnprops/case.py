"""The value type for one BatchNorm call: its parameters, its arrays, and the quantities it yields."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

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
)

ARRAY_FIELDS = ("x", "gamma", "beta", "moving_mean", "moving_var", "dy")
_CASE_FORMAT = "bnprops.case/1"

#: What a runner or the oracle returns: quantity name -> array (absent if not produced).
Outputs = dict[str, np.ndarray]


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()).decode()


def param_dtype(dtype: str) -> str:
    """gamma, beta and the moving statistics are float32 for float16 data, else the data's dtype."""
    return "float32" if dtype == "float16" else dtype


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One BatchNorm call, as the symbolic executor runs it: forward(is_train=True), then backward(dy)."""

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

    # Derived facts the oracle, runners and comparator share.
    @property
    def dtype(self) -> str:
        return str(self.x.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    @property
    def channel_axis(self) -> int:
        return self.axis % self.x.ndim

    @property
    def channels(self) -> int:
        return int(self.x.shape[self.axis])

    @property
    def reduce_axes(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.x.ndim) if i != self.channel_axis)

    @property
    def reduction_length(self) -> int:
        """M, the number of elements that share one channel's statistics."""
        return int(self.x.size // max(self.channels, 1))

    @property
    def uses_batch_stats(self) -> bool:
        return not self.use_global_stats

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
            for name, arr in ((n, getattr(self, n)) for n in ARRAY_FIELDS)
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
        for name in ARRAY_FIELDS:
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
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())

    # The reproducer.
    def snippet(self) -> str:
        """A standalone script (mxnet and numpy only) that makes this exact call and prints what MXNet returns."""
        pdt = param_dtype(self.dtype)

        def arr(name: str) -> str:
            a = getattr(self, name)
            # float64 repr of every element is exact, and casting back restores the original bits.
            return f"np.array({a.astype(np.float64).tolist()!r}, dtype=np.float64).astype({str(a.dtype)!r})"

        head = "[dy]" + (" + [mx.nd.zeros(C, dtype=pdt)] * 2" if self.output_mean_var else "")
        return "\n".join(
            [
                "import mxnet as mx, numpy as np",
                f"x = {arr('x')}",
                f"dy = {arr('dy')}",
                f"gamma, beta = {arr('gamma')}, {arr('beta')}",
                f"moving_mean, moving_var = {arr('moving_mean')}, {arr('moving_var')}",
                f"C, pdt = {self.channels}, {pdt!r}",
                "bn = mx.sym.BatchNorm(mx.sym.Variable('data'), name='bn', "
                f"eps={self.eps!r}, momentum={self.momentum!r}, fix_gamma={self.fix_gamma}, "
                f"use_global_stats={self.use_global_stats}, output_mean_var={self.output_mean_var}, axis={self.axis})",
                f"exe = bn.simple_bind(mx.cpu(), data=x.shape, type_dict={{'data': {self.dtype!r}, "
                "'bn_gamma': pdt, 'bn_beta': pdt}, grad_req='write')",
                "for name, value in [('data', x), ('bn_gamma', gamma), ('bn_beta', beta)]:",
                "    exe.arg_dict[name][:] = value",
                "exe.aux_dict['bn_moving_mean'][:] = moving_mean",
                "exe.aux_dict['bn_moving_var'][:] = moving_var",
                "outs = exe.forward(is_train=True)",
                f"exe.backward({head.replace('dy', 'mx.nd.array(dy, dtype=dy.dtype)', 1)})",
                "print('y', outs[0].asnumpy())",
                "for name in ('data', 'bn_gamma', 'bn_beta'):",
                "    print('grad', name, exe.grad_dict[name].asnumpy())",
                "print('moving', exe.aux_dict['bn_moving_mean'].asnumpy(), exe.aux_dict['bn_moving_var'].asnumpy())",
            ]
        )

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
        return (
            f"BatchNorm({self.dtype}{list(self.shape)}, axis={self.axis}, eps={self.eps!r}, "
            f"momentum={self.momentum!r}, {', '.join(flags)}) regime={self.regime}"
        )

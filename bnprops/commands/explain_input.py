"""The input of ``bnprops explain``: the call as the user made it, and their numbers with the digits they gave.

Numbers arrive as pasted (JSON literals, numeric text) and keep their decimal digits, from which the
precision of a match follows; parameters left out take MXNet's defaults for the entry point.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import numpy as np

from bnprops.commands.semantic_variants import GLUON, LOSSES, MEMBERS, Call
from bnprops.model.case import QUANTITIES, Case, param_dtype
from bnprops.mx.runners import ENTRY_POINTS, adapt

#: Quantities a user can state expectations for (mean and invstd are output_mean_var's outputs).
EXPECTABLE = QUANTITIES


@dataclasses.dataclass(frozen=True)
class UserExpectation:
    """A user's number(s) for one quantity and how precisely they gave them (half an ulp of the last digit)."""

    quantity: str
    values: np.ndarray
    half_unit: np.ndarray
    text: str


# Input: numbers as the user pasted them.
def _decimals(value: Any, where: str) -> Any:
    """Nested lists of Decimals, keeping the digits the user gave."""
    if isinstance(value, bool) or value is None or isinstance(value, str | dict):
        raise ValueError(f"{where}: expected numbers, got {value!r}")
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | float | np.floating | np.integer):
        return Decimal(repr(float(value)))
    if isinstance(value, np.ndarray):
        return [_decimals(v, where) for v in value.tolist()] if value.ndim else _decimals(value.item(), where)
    if isinstance(value, list | tuple):
        return [_decimals(v, where) for v in value]
    raise ValueError(f"{where}: expected a number or a list of numbers, got {type(value).__name__}")


def _literal(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value, parse_float=Decimal, parse_int=Decimal)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{where}: {value!r} is not a number or a JSON list of numbers ({exc.msg}); write e.g. "
                "-2.127873 or '[[0.18527887], [-1.23678724]]'"
            ) from None
    return value


def _nested_floats(dec: Any, where: str) -> np.ndarray:
    try:
        return np.array(dec, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: a ragged list; every row must have the same length") from None


def parse_expectation(quantity: str, value: Any) -> UserExpectation:
    """The user's number(s) for ``quantity``: a number, a numeric string or a JSON list (as text or lists)."""
    if quantity not in EXPECTABLE:
        raise ValueError(f"unknown quantity {quantity!r} in the expectations; choose from {', '.join(EXPECTABLE)}")
    where = f"expected {quantity}"
    dec = _decimals(_literal(value, where), where)
    values = _nested_floats(dec, where)
    exps = [d.as_tuple().exponent for d in np.array(dec, dtype=object).ravel()]
    half = np.array([0.5 * 10.0**e if isinstance(e, int) else 0.0 for e in exps]).reshape(values.shape)
    return UserExpectation(quantity, values, half, value if isinstance(value, str) else repr(value))


def _array(name: str, value: Any, dtype: str) -> np.ndarray:
    where = f"{name}"
    return _nested_floats(_decimals(_literal(value, where), where), where).astype(dtype)


def _channels(name: str, value: Any, default: float, channels: int, dtype: str, axis: int, shape: Any) -> np.ndarray:
    if value is None:
        return np.full(channels, default, dtype=dtype)
    arr = _array(name, value, dtype).ravel()
    if arr.size == 1:
        return np.full(channels, arr[0], dtype=dtype)
    if arr.size != channels:
        raise ValueError(
            f"{name} has {arr.size} values; x of shape {tuple(shape)} has {channels} channels on axis {axis}"
        )
    return arr


def _flag(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be True or False, got {value!r}")


def build_call(
    *,
    entry: str,
    case: Case | None,
    arrays: Mapping[str, Any],
    target: Any,
    loss: str | None,
    dtype: str,
    params: Mapping[str, Any],
    gamma_read_back: bool,
    member: str = "batchnorm",
    devices: int = 1,
) -> Call:
    """The call as the user made it, with MXNet's defaults (for that entry point) where they left a parameter out.

    ``member``: the family member it went through (MEMBERS); ``devices``: the data-parallel devices its batch
    was split over (equal slices along axis 0)."""
    if member not in MEMBERS:
        raise ValueError(f"unknown member {member!r}; choose from {', '.join(MEMBERS)}")
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a whole number of at least 1, got {devices!r}")
    if devices > 1 and member not in ("batchnorm", "sync"):
        raise ValueError(f"devices applies to batchnorm and sync (data-parallel BatchNorm), not {member}")
    if entry not in ENTRY_POINTS:
        raise ValueError(f"unknown entry point {entry!r}; choose from {', '.join(ENTRY_POINTS)}")
    gluon = entry in GLUON
    fix_gamma, scale, center = (_flag(k, params.get(k)) for k in ("fix_gamma", "scale", "center"))
    if gluon and fix_gamma is not None:
        raise ValueError("gluon.nn.BatchNorm has no fix_gamma: give scale (gluon passes fix_gamma = not scale)")
    if not gluon and (scale is not None or center is not None):
        raise ValueError(f"scale and center are gluon.nn.BatchNorm's; entry point {entry!r} takes fix_gamma")
    if loss is not None and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
    given = {k: v for k, v in arrays.items() if v is not None}
    if case is not None and "x" in given:
        raise ValueError("give the arrays either as a case (JSON) or as literals, not both")
    changes: dict[str, Any] = {}
    for key in ("eps", "momentum", "use_global_stats", "axis", "is_train", "output_mean_var"):
        if params.get(key) is not None:
            changes[key] = params[key]
    if gluon and scale is not None:
        changes["fix_gamma"] = not scale
    elif fix_gamma is not None:
        changes["fix_gamma"] = fix_gamma
    if gluon and changes.get("output_mean_var"):
        raise ValueError("gluon.nn.BatchNorm has no output_mean_var; use entry point nd, npx or sym for it")
    for key in ("eps", "momentum"):
        if key in changes and not (isinstance(changes[key], int | float) and math.isfinite(changes[key])):
            raise ValueError(f"{key} must be a finite number, got {changes[key]!r}")
    if case is None:
        if "x" not in given:
            raise ValueError("give the data: x as a JSON literal (e.g. '[[0.18527887], [-1.23678724]]') or a case")
        if dtype not in ("float16", "float32", "float64"):
            raise ValueError(f"unknown dtype {dtype!r}; choose from float16, float32, float64")
        x = _array("x", given["x"], dtype)
        axis = int(changes.get("axis", 1))
        if x.ndim < 1 or not -x.ndim <= axis < x.ndim:
            raise ValueError(f"axis {axis} is out of range for x of shape {x.shape}")
        c, pdt = int(x.shape[axis]), param_dtype(dtype)
        # sym's simple_bind zero-initialises every array; gluon's initialisers (and the usual nd/npx setup) give
        # gamma 1, beta 0, moving_mean 0, moving_var 1.
        g0, v0 = (0.0, 0.0) if entry == "sym" else (1.0, 1.0)
        fields: dict[str, Any] = {
            name: _channels(name, given.get(name), default, c, pdt, axis, x.shape)
            for name, default in (("gamma", g0), ("beta", 0.0), ("moving_mean", 0.0), ("moving_var", v0))
        }
        case = Case(
            x=x,
            dy=np.zeros_like(x),
            **fields,
            eps=1e-5 if gluon else 1e-3,
            fix_gamma=not gluon,
            regime="explain",
        )
    elif len(given) > 1 or (given and "dy" not in given):
        raise ValueError("with a case, only dy may be given as a literal (the case holds the other arrays)")
    try:
        case = case.with_(**changes)
        if gluon and center is False:
            case = case.with_(grad_req=(case.grad_req[0], case.grad_req[1], "null"), prior_dbeta=None)
        if "dy" in given and target is not None:
            raise ValueError("give the head gradient dy or the target that produced it, not both")
        target_arr = None
        if target is not None:
            target_arr = _array("target", target, case.dtype).astype(np.float64)
            if target_arr.shape != case.shape:
                raise ValueError(f"target has shape {target_arr.shape}; x has shape {case.shape}")
        elif "dy" in given:
            dy = _array("dy", given["dy"], case.dtype)
            if dy.shape != case.shape:
                raise ValueError(f"dy has shape {dy.shape}; x has shape {case.shape}")
            case = case.with_(dy=dy)
        elif "x" in given:  # a case JSON brings its own dy
            raise ValueError("give the head gradient: dy, or the target (and loss) that produced it")
        case = adapt(entry, case)
    except TypeError as exc:
        raise ValueError(f"bad parameter: {exc}") from None
    if devices > 1 and (case.channel_axis == 0 or case.shape[0] % devices):
        raise ValueError(
            f"the batch of {case.shape[0] if case.x.ndim else 0} along axis 0 does not split into {devices} equal "
            "device slices (and the channel axis must not be 0)"
        )
    loss = (loss or "l2") if target_arr is not None else None
    return Call(case, entry, target_arr, loss, gamma_read_back, member=member, devices=devices)

"""MXNet runners: each takes a Case, calls BatchNorm through one entry point and returns its Outputs."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

# Quiet the per-bind "Subgraph backend MKLDNN is activated" log line before mxnet loads.
os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")

import mxnet as mx

from bnprops.case import Case, Outputs, param_dtype

Runner = Callable[[Case], Outputs]

#: Read by MXNet at start-up: "0" sends float32 to the native kernel instead of oneDNN.
ONEDNN_ENABLED = os.environ.get("MXNET_MKLDNN_ENABLED", "1") != "0"


def kernel_for(case: Case) -> str:
    """Which CPU kernel runs the case in this process: float32 goes to oneDNN unless it is disabled."""
    return "onednn" if case.dtype == "float32" and ONEDNN_ENABLED else "native"


def _signature(case: Case) -> tuple[Any, ...]:
    """Everything that fixes the bound graph; cases that share it can reuse one executor."""
    return (
        case.shape,
        case.dtype,
        case.axis,
        case.eps,
        case.momentum,
        case.fix_gamma,
        case.use_global_stats,
        case.output_mean_var,
    )


@functools.lru_cache(maxsize=512)
def _executor(signature: tuple[Any, ...]) -> Any:
    shape, dtype, axis, eps, momentum, fix_gamma, use_global_stats, output_mean_var = signature
    sym = mx.sym.BatchNorm(
        mx.sym.Variable("data"),
        name="bn",
        eps=eps,
        momentum=momentum,
        fix_gamma=fix_gamma,
        use_global_stats=use_global_stats,
        output_mean_var=output_mean_var,
        axis=axis,
    )
    pdt = param_dtype(dtype)
    return sym.simple_bind(
        mx.cpu(),
        data=shape,
        type_dict={"data": dtype, "bn_gamma": pdt, "bn_beta": pdt},
        grad_req="write",
    )


def run_symbolic(case: Case) -> Outputs:
    """mx.sym.BatchNorm + simple_bind, forward(is_train=True), backward(dy): the forum thread's path."""
    exe = _executor(_signature(case))
    exe.arg_dict["data"][:] = case.x
    exe.arg_dict["bn_gamma"][:] = case.gamma
    exe.arg_dict["bn_beta"][:] = case.beta
    exe.aux_dict["bn_moving_mean"][:] = case.moving_mean
    exe.aux_dict["bn_moving_var"][:] = case.moving_var
    outs = exe.forward(is_train=True)
    heads = [mx.nd.array(case.dy, dtype=case.dtype)]
    if case.output_mean_var:
        # The mean and invstd outputs take no gradient; their heads must still be given.
        heads += [mx.nd.zeros(case.channels, dtype=param_dtype(case.dtype))] * 2
    exe.backward(heads)
    result: Outputs = {
        "y": outs[0].asnumpy(),
        "dx": exe.grad_dict["data"].asnumpy(),
        "dgamma": exe.grad_dict["bn_gamma"].asnumpy(),
        "dbeta": exe.grad_dict["bn_beta"].asnumpy(),
        "moving_mean": exe.aux_dict["bn_moving_mean"].asnumpy(),
        "moving_var": exe.aux_dict["bn_moving_var"].asnumpy(),
        "gamma": exe.arg_dict["bn_gamma"].asnumpy(),
    }
    if case.output_mean_var:
        result["mean"] = outs[1].asnumpy()
        result["invstd"] = outs[2].asnumpy()
    return result


#: Entry points by name: how a user reaches the operator.
RUNNERS: dict[str, Runner] = {"sym": run_symbolic}
#: CPU kernels: float32 runs through oneDNN by default; "native" forces MXNet's own kernel.
BACKENDS = ("onednn", "native")


def runner_for(entry: str, backend: str) -> Runner:
    """The runner for an entry point on a backend.

    Only the backend this process runs in is served in-process (see ONEDNN_ENABLED); the other one
    needs a process started with MXNET_MKLDNN_ENABLED set accordingly.
    """
    if entry not in RUNNERS:
        raise ValueError(f"unknown entry point {entry!r}; choose from {sorted(RUNNERS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    in_process = "onednn" if ONEDNN_ENABLED else "native"
    if backend != in_process:
        raise NotImplementedError(f"backend {backend!r} needs a worker process (not built yet)")
    return RUNNERS[entry]

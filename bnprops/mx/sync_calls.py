"""SyncBatchNorm's calls, made in the process that runs them: one per device, on mx.cpu(0..ndev-1).

The calls wait at a barrier for each other, so they only complete under the threaded engine with two or more
CPU worker threads (NaiveEngine and one worker thread per device hang): this module runs in the sync worker
(``python -m bnprops.mx.sync_calls KERNEL``, started by bnprops.mx.sync), never in bnprops' own process. Each call
gets a key of its own: a key's state (rank counter, barrier, buffers) is created by its first caller's ndev.
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Any

import numpy as np

from bnprops.model.case import Case, Outputs
from bnprops.model.sync import device_split, offsets
from bnprops.mx.helper_process import answer

#: The environment SyncBatchNorm needs (set before mxnet is imported).
ENGINE = {"MXNET_ENGINE_TYPE": "ThreadedEnginePerDevice", "MXNET_CPU_WORKER_NTHREADS": "2"}
_KEYS = itertools.count()


def _arrays(case: Case) -> list[dict[str, Any]]:
    """Each device's inputs as MXNet arrays on its own context, gradients attached where requested."""
    import mxnet as mx

    devices = []
    for d, rows in enumerate(offsets(device_split(case))):
        ctx = mx.cpu(d)
        arrays = {
            "x": mx.nd.array(case.x[rows], ctx=ctx, dtype="float32"),
            "dy": mx.nd.array(case.dy[rows], ctx=ctx, dtype="float32"),
            **{n: mx.nd.array(getattr(case, n), ctx=ctx, dtype="float32") for n in ("gamma", "beta")},
            **{n: mx.nd.array(getattr(case, n), ctx=ctx, dtype="float32") for n in ("moving_mean", "moving_var")},
        }
        arrays["x"].attach_grad()
        devices.append(arrays)
    return devices


def _gathered(ys: list[Any], grads: list[dict[str, Any]], state: list[dict[str, Any]], forward: Any) -> Outputs:
    """The devices' results as one call's Outputs: y and dx concatenated along axis 0, dgamma and dbeta summed
    over devices (a trainer's allreduce) with each device's beside them, the moving statistics and gamma of
    device 0 with every device's beside them (they must agree)."""
    out: Outputs = {
        "y": np.concatenate([y.asnumpy() for y in ys]),
        "dx": np.concatenate([g["dx"].asnumpy() for g in grads]),
    }
    for q in ("dgamma", "dbeta"):
        if all(q in g for g in grads):
            parts = np.stack([g[q].asnumpy() for g in grads])
            out[q] = parts.astype(np.float64).sum(axis=0)
            out[q + "_partials"] = parts
    for q in ("moving_mean", "moving_var", "gamma"):
        every = np.stack([s[q].asnumpy() for s in state])
        out[q], out[q + "_devices"] = every[0], every
    out["forward_moving_mean"], out["forward_moving_var"] = forward
    return out


def run_nd(case: Case) -> Outputs:
    """mx.nd.contrib.SyncBatchNorm, one call per device under autograd, backward with each device's dy."""
    import mxnet as mx

    devices = _arrays(case)
    ndev, key = len(devices), f"bnprops-sync-{os.getpid()}-{next(_KEYS)}"
    for a in devices:
        a["gamma"].attach_grad(grad_req="write" if case.request("gamma") != "null" else "null")
        a["beta"].attach_grad()
    with mx.autograd.record(train_mode=case.is_train):
        ys = [
            mx.nd.contrib.SyncBatchNorm(
                a["x"],
                a["gamma"],
                a["beta"],
                a["moving_mean"],
                a["moving_var"],
                eps=case.eps,
                momentum=case.momentum,
                fix_gamma=case.fix_gamma,
                use_global_stats=case.use_global_stats,
                ndev=ndev,
                key=key,
            )
            for a in devices
        ]
    forward = (devices[0]["moving_mean"].asnumpy(), devices[0]["moving_var"].asnumpy())
    mx.autograd.backward(ys, head_grads=[a["dy"] for a in devices], train_mode=case.is_train)
    mx.nd.waitall()
    wanted = ("dgamma", "dbeta") if case.request("gamma") != "null" else ("dbeta",)
    grads = [{"dx": a["x"].grad, **{q: a[q[1:]].grad for q in wanted}} for a in devices]
    return _gathered(ys, grads, devices, forward)


def run_gluon(case: Case) -> Outputs:
    """mx.gluon.contrib.nn.SyncBatchNorm (scale = not fix_gamma, so gamma takes no gradient under fix_gamma),
    initialised on every device, the batch loaded device by device."""
    import mxnet as mx

    devices = _arrays(case)
    ctxs = [mx.cpu(d) for d in range(len(devices))]
    net = mx.gluon.contrib.nn.SyncBatchNorm(
        in_channels=case.channels,
        num_devices=len(devices),
        momentum=case.momentum,
        epsilon=case.eps,
        center=True,
        scale=not case.fix_gamma,
        use_global_stats=case.use_global_stats,
    )
    net.initialize(ctx=ctxs)
    for name, param in (("gamma", net.gamma), ("beta", net.beta)):
        param.set_data(mx.nd.array(getattr(case, name), dtype="float32"))
    net.running_mean.set_data(mx.nd.array(case.moving_mean, dtype="float32"))
    net.running_var.set_data(mx.nd.array(case.moving_var, dtype="float32"))
    with mx.autograd.record(train_mode=case.is_train):
        ys = [net(a["x"]) for a in devices]
    means, variances = net.running_mean.list_data(), net.running_var.list_data()
    forward = (means[0].asnumpy(), variances[0].asnumpy())
    mx.autograd.backward(ys, head_grads=[a["dy"] for a in devices], train_mode=case.is_train)
    mx.nd.waitall()
    grads: list[dict[str, Any]] = [{"dx": a["x"].grad} for a in devices]
    for q, param in (("dgamma", net.gamma), ("dbeta", net.beta)):
        if param.grad_req != "null":
            for g, value in zip(grads, param.list_grad(), strict=True):
                g[q] = value
    state = [
        {"moving_mean": m, "moving_var": v, "gamma": g}
        for m, v, g in zip(means, variances, net.gamma.list_data(), strict=True)
    ]
    return _gathered(ys, grads, state, forward)


def run_sym(case: Case) -> Outputs:
    """mx.sym.contrib.SyncBatchNorm bound once per device (one executor each, sharing the key), forward in
    training mode on every executor, then backward on every executor."""
    import mxnet as mx

    devices = _arrays(case)
    ndev, key = len(devices), f"bnprops-sync-{os.getpid()}-{next(_KEYS)}"
    names = ("x", "gamma", "beta")
    out = mx.sym.contrib.SyncBatchNorm(
        *(mx.sym.Variable(n) for n in names),
        mx.sym.Variable("moving_mean"),
        mx.sym.Variable("moving_var"),
        eps=case.eps,
        momentum=case.momentum,
        fix_gamma=case.fix_gamma,
        use_global_stats=case.use_global_stats,
        ndev=ndev,
        key=key,
    )
    req = {"x": "write", "gamma": case.request("gamma"), "beta": "write"}
    executors = []
    for d, a in enumerate(devices):
        ctx = mx.cpu(d)
        grads = {n: mx.nd.zeros(a[n].shape, ctx=ctx) for n in names}
        executors.append(
            out.bind(
                ctx,
                args={n: a[n] for n in names},
                args_grad=grads,
                grad_req=req,
                aux_states={"moving_mean": a["moving_mean"], "moving_var": a["moving_var"]},
            )
        )
    ys = [exe.forward(is_train=case.is_train)[0] for exe in executors]
    forward = (devices[0]["moving_mean"].asnumpy(), devices[0]["moving_var"].asnumpy())
    for exe, a in zip(executors, devices, strict=True):
        exe.backward([a["dy"]])
    mx.nd.waitall()
    wanted = {"dx": "x", "dbeta": "beta", **({"dgamma": "gamma"} if req["gamma"] != "null" else {})}
    grads_out = [{q: exe.grad_dict[n] for q, n in wanted.items()} for exe in executors]
    return _gathered(ys, grads_out, devices, forward)


#: Entry name -> the call, in this process.
CALLS = {"sync-nd": run_nd, "sync-sym": run_sym, "sync-gluon": run_gluon}


def _wrong_engine(kernel: str) -> tuple[str, dict[str, str | None]] | None:
    """The refusal of a process without the engine SyncBatchNorm needs (None: it has it, and MXNet is loaded before
    the first request, so that a call's timeout is the call's)."""
    engine = {k: os.environ.get(k) for k in ENGINE}
    if engine != ENGINE:
        return ("wrong engine", engine)
    import mxnet  # noqa: F401

    return None


def _call(request: tuple[str, Case]) -> Outputs:
    entry, case = request
    return CALLS[entry](case)


def main(argv: list[str]) -> int:
    """The worker's side: answer (entry, case) requests on stdin until it closes."""
    return answer(argv, module="bnprops.mx.sync_calls", call=_call, refusal=_wrong_engine)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

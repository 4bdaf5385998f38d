"""SyncBatchNorm as a family member: its runners, what it can express, its kernels and its reproducer.

The calls need the threaded engine, which bnprops' own process does not run (it runs NaiveEngine), so every
case goes to a long-lived sync worker (bnprops.mx.sync_calls) per CPU kernel, started on first use, dying
with its parent, restarted after a crash or a hang: a call that waits longer than CALL_TIMEOUT_S at
SyncBatchNorm's barrier (a key or device-count mismatch) is killed with its worker and raised as WorkerCrashed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from bnprops.model.case import WRITE_ALL, Case, Outputs
from bnprops.model.sync import applied, device_split
from bnprops.mx import mxversion
from bnprops.mx.helper_process import START_TIMEOUT_S, shared
from bnprops.mx.runners import IN_PROCESS_BACKEND
from bnprops.mx.sync_calls import ENGINE
from bnprops.mx.worker import Worker

ENTRIES = ("sync-nd", "sync-sym", "sync-gluon")
#: A sync case is small; a call that takes longer waits at a barrier that will never open.
CALL_TIMEOUT_S = 60.0
MAX_DEVICES = 4
#: Before it, the operator reshapes its data to 4-D only from 2-D (other shapes raise a shape check, and the
#: other devices then wait at the merge for ever).
ANY_NDIM_SINCE = "1.5.0"
#: SyncBatchNorm is a legacy mshadow operator with no oneDNN implementation: MXNET_MKLDNN_ENABLED changes nothing
#: (both kernels' outputs are the same bits, test_sync_batchnorm), so it runs on either.
KERNELS: dict[str, str | None] = {"onednn": None, "native": None}
#: The requests of gluon's layer with scale=False (fix_gamma): gamma takes no gradient.
FROZEN_GAMMA = ("write", "null", "write")


def unavailable_reason() -> str | None:
    """Why this MXNet lacks the operator (None: it has it)."""
    try:
        import mxnet as mx
    except ImportError as exc:
        return f"mxnet does not import: {exc}"
    if not hasattr(mx.nd.contrib, "SyncBatchNorm"):
        return f"MXNet {mxversion.running()} has no mx.nd.contrib.SyncBatchNorm"
    return None


def unexpressible_reason(case: Case) -> str | None:
    """Why SyncBatchNorm cannot run ``case`` as bnprops judges it (None: it can)."""
    split = device_split(case)
    if case.dtype != "float32":
        return f"float32 only (the kernel reads every blob as real_t), not {case.dtype}"
    if case.x.ndim < 2 or case.channel_axis != 1:
        return "channels on axis 1 of data with at least 2 dimensions only"
    if case.x.ndim not in (2, 4) and mxversion.parse(mxversion.running()) < mxversion.parse(ANY_NDIM_SINCE):
        return f"MXNet before {ANY_NDIM_SINCE} takes 2-D or 4-D data only (apache/mxnet#14542 added the others)"
    if not 1 <= len(split) <= MAX_DEVICES or min(split) < 1 or sum(split) != case.shape[0]:
        return f"a split of the batch over 1 to {MAX_DEVICES} devices with a row each, not {split}"
    if case.output_mean_var:
        return "its third output is the batch variance, not BatchNorm's invstd"
    if not case.uses_batch_stats:
        return "inference and use_global_stats: a scale-shift form the error model does not bound yet"
    if case.grad_req not in (WRITE_ALL, FROZEN_GAMMA if case.fix_gamma else WRITE_ALL):
        return "each device's buffers are requested with 'write' ('add'/'null' per device are not modelled yet)"
    if not np.isfinite(case.x).all() or not np.isfinite(case.dy).all():
        return "finite data only (NaN/inf propagation through the merge is not modelled)"
    return None


def adapt(entry: str, case: Case) -> Case:
    """The case as ``entry`` runs it: eps as a float (SyncBatchNormParam's type); for gluon, gamma takes no
    gradient under fix_gamma (scale=False)."""
    case = applied(case)
    if entry == "sync-gluon" and case.fix_gamma:
        case = case.with_(grad_req=FROZEN_GAMMA)
    return case


class SyncWorker(Worker):
    """One sync worker process for one CPU kernel: the calls of mx.sync_calls, under the threaded engine whose
    barrier SyncBatchNorm needs; ``run`` is safe to call from one thread at a time."""

    module = "bnprops.mx.sync_calls"
    name = "SyncBatchNorm"
    environment: ClassVar[dict[str, str]] = dict(ENGINE)

    def __init__(self, kernel: str, *, call_timeout: float = CALL_TIMEOUT_S) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"a sync worker runs a CPU kernel ({sorted(KERNELS)}), not {kernel!r}")
        super().__init__(kernel, start_timeout=START_TIMEOUT_S, call_timeout=call_timeout)
        self.kernel = kernel


def worker_for(kernel: str) -> SyncWorker:
    """The shared sync worker of a CPU kernel, created on first use."""
    return shared(SyncWorker, kernel)


def run(case: Case, *, entry: str, kernel: str = IN_PROCESS_BACKEND) -> Outputs:
    """``case`` through ``entry`` on ``kernel``, in that kernel's sync worker (ValueError where it cannot run)."""
    reason = unexpressible_reason(case)
    if reason is not None:
        raise ValueError(f"{entry} cannot run {case.describe()}: {reason}")
    return worker_for(kernel).run(entry, adapt(entry, case))


def runner_for(entry: str, kernel: str) -> Callable[[Case], Outputs]:
    return functools.partial(run, entry=entry, kernel=kernel)


#: Entry name -> runner on the kernel bnprops' own process runs (runner_for gives the other).
RUNNERS: dict[str, Callable[[Case], Outputs]] = {entry: runner_for(entry, IN_PROCESS_BACKEND) for entry in ENTRIES}


def snippet(case: Case, entry: str, *, backend: str = IN_PROCESS_BACKEND) -> str:
    """A standalone script (mxnet and numpy only) making the call ``case`` through ``entry``: the environment
    SyncBatchNorm needs, one call per device, backward; MXNet's results left in ``actual``."""
    case = adapt(entry, case)
    split = device_split(case)

    def arr(a: np.ndarray) -> str:
        return f"np.array({a.astype(np.float64).tolist()!r}, dtype=np.float32)"

    env = {**ENGINE, **({"MXNET_MKLDNN_ENABLED": "0"} if backend == "native" else {})}
    lines = [
        "import os",
        *(f"os.environ[{k!r}] = {v!r}  # SyncBatchNorm's barrier needs the threaded engine" for k, v in env.items()),
        "import mxnet as mx, numpy as np",
        f"x, dy = {arr(case.x)}, {arr(case.dy)}",
        f"gamma, beta = {arr(case.gamma)}, {arr(case.beta)}",
        f"moving_mean, moving_var = {arr(case.moving_mean)}, {arr(case.moving_var)}",
        f"split = {list(split)!r}  # rows of x per device, in rank order",
        f"eps, momentum, fix_gamma = {case.eps!r}, {case.momentum!r}, {case.fix_gamma}",
        "ends = np.cumsum([0] + split)",
        "ctxs = [mx.cpu(d) for d in range(len(split))]",
        "xs = [mx.nd.array(x[a:b], ctx=c) for a, b, c in zip(ends, ends[1:], ctxs)]",
        "dys = [mx.nd.array(dy[a:b], ctx=c) for a, b, c in zip(ends, ends[1:], ctxs)]",
        "for v in xs:",
        "    v.attach_grad()",
    ]
    if entry == "sync-nd":
        lines += [
            "ps = [[mx.nd.array(v, ctx=c) for v in (gamma, beta, moving_mean, moving_var)] for c in ctxs]",
            "for p in ps:",
            "    p[0].attach_grad(); p[1].attach_grad()",
            "with mx.autograd.record():",
            "    ys = [mx.nd.contrib.SyncBatchNorm(v, *p, eps=eps, momentum=momentum, fix_gamma=fix_gamma,",
            "                                      ndev=len(split), key='repro') for v, p in zip(xs, ps)]",
            "mx.autograd.backward(ys, head_grads=dys)",
            "dgammas, dbetas = [p[0].grad.asnumpy() for p in ps], [p[1].grad.asnumpy() for p in ps]",
            "moving = (ps[0][2].asnumpy(), ps[0][3].asnumpy())",
        ]
    elif entry == "sync-sym":
        lines += [
            "names = ('x', 'gamma', 'beta', 'moving_mean', 'moving_var')",
            "out = mx.sym.contrib.SyncBatchNorm(*(mx.sym.Variable(n) for n in names), eps=eps, momentum=momentum,",
            "                                   fix_gamma=fix_gamma, ndev=len(split), key='repro')",
            "exes = []",
            "for v, c in zip(xs, ctxs):",
            "    p = [mx.nd.array(a, ctx=c) for a in (gamma, beta, moving_mean, moving_var)]",
            "    grads = {n: mx.nd.zeros(a.shape, ctx=c) for n, a in zip(names, [v] + p[:2])}",
            "    exes.append(out.bind(c, args={'x': v, 'gamma': p[0], 'beta': p[1]}, args_grad=grads,",
            "                         aux_states={'moving_mean': p[2], 'moving_var': p[3]}))",
            "ys = [e.forward(is_train=True)[0] for e in exes]",
            "for e, d in zip(exes, dys):",
            "    e.backward([d])",
            "class Grad:  # the executors' gradients, where the other entries read v.grad",
            "    def __init__(self, e): self.grad = e.grad_dict['x']",
            "xs = [Grad(e) for e in exes]",
            "dgammas = [e.grad_dict['gamma'].asnumpy() for e in exes]",
            "dbetas = [e.grad_dict['beta'].asnumpy() for e in exes]",
            "moving = (exes[0].aux_dict['moving_mean'].asnumpy(), exes[0].aux_dict['moving_var'].asnumpy())",
        ]
    else:
        lines += [
            "net = mx.gluon.contrib.nn.SyncBatchNorm(in_channels=len(gamma), num_devices=len(split),",
            "    momentum=momentum, epsilon=eps, scale=not fix_gamma)",
            "net.initialize(ctx=ctxs)",
            "for p, v in ((net.gamma, gamma), (net.beta, beta), (net.running_mean, moving_mean),",
            "             (net.running_var, moving_var)):",
            "    p.set_data(mx.nd.array(v))",
            "with mx.autograd.record():",
            "    ys = [net(v) for v in xs]",
            "mx.autograd.backward(ys, head_grads=dys)",
            "dgammas = [g.asnumpy() for g in net.gamma.list_grad()] if not fix_gamma else []",
            "dbetas = [g.asnumpy() for g in net.beta.list_grad()]",
            "moving = (net.running_mean.list_data()[0].asnumpy(), net.running_var.list_data()[0].asnumpy())",
        ]
    lines += [
        "actual = {'y': np.concatenate([v.asnumpy() for v in ys]),",
        "          'dx': np.concatenate([v.grad.asnumpy() for v in xs]),",
        "          'dbeta_partials': np.stack(dbetas), 'moving_mean': moving[0], 'moving_var': moving[1]}",
        "if dgammas:",
        "    actual['dgamma_partials'] = np.stack(dgammas)",
        "for name, value in actual.items():",
        "    print(name, value.tolist())",
    ]
    return "\n".join(lines) + "\n"

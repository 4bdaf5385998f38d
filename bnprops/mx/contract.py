"""Probes of bad input a user can pass that a Case cannot describe: parameter arrays of the wrong length.

BatchNorm's documented contract ("Assume the input has size k on axis 1, then both gamma and
beta have shape (k,)"; the moving statistics are per channel too) makes any other length an
error the operator should raise. MXNet 1.9.1 does not check: a longer array is silently read in
part, and a shorter one is read and written out of bounds, which can corrupt the heap. So every
probe runs in a throwaway process (``python -m bnprops.mx.contract ENTRY``), never in the caller's,
and the one shorter-array probe runs last there, after the safe longer-array ones. The process
prints one JSON line per probe as it goes, so a crash loses nothing that came before it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

from bnprops.mx.helper_process import environment_for

PARAMETERS = ("gamma", "beta", "moving_mean", "moving_var")
CHANNELS = 3
#: The longer-array probes, then the shorter one (last: it may corrupt the process).
LONGER, SHORTER = CHANNELS + 2, CHANNELS - 1
PROBE_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class Observation:
    """What one wrong-length call did."""

    entry: str
    backend: str
    parameter: str  # one of PARAMETERS, or "all" for gluon's in_channels (every parameter at once)
    length: int
    outcome: str  # "error", "accepted" or "crashed"
    detail: str = ""

    @property
    def rejected(self) -> bool:
        return self.outcome == "error"

    def describe(self) -> str:
        what = "in_channels" if self.parameter == "all" else self.parameter
        return (
            f"{self.entry} on {self.backend}: {what} of length {self.length} for {CHANNELS} channels -> "
            f"{self.outcome}{': ' + self.detail if self.detail else ''}"
        )


def probes(entry: str) -> list[tuple[str, int]]:
    """(parameter, length) in the order they run; gluon sets all four through in_channels."""
    if entry in ("gluon", "gluon-hybrid"):
        return [("all", LONGER), ("all", SHORTER)]
    return [(p, LONGER) for p in PARAMETERS] + [("gamma", SHORTER)]


def observe(entry: str, backend: str, *, timeout: float = PROBE_TIMEOUT_S) -> list[Observation]:
    """Run every probe for an entry point on a CPU backend in a throwaway process."""
    proc = subprocess.run(
        [sys.executable, "-m", "bnprops.mx.contract", entry],
        capture_output=True,
        text=True,
        env=environment_for(backend),
        timeout=timeout,
        check=False,
    )
    seen = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    result = [Observation(entry, backend, d["parameter"], d["length"], d["outcome"], d["detail"]) for d in seen]
    if len(result) < len(probes(entry)):
        parameter, length = probes(entry)[len(result)]
        detail = f"exit status {proc.returncode}; stderr ends: {proc.stderr[-300:].strip()}"
        result.append(Observation(entry, backend, parameter, length, "crashed", detail))
    return result


def _call(entry: str, parameter: str, length: int) -> Any:
    import mxnet as mx
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, CHANNELS)).astype("float32")
    values = {p: np.full(CHANNELS, 0.5 if p != "moving_var" else 1.0, "float32") for p in PARAMETERS}
    if parameter in values:
        values[parameter] = np.linspace(0.5, 1.5, length).astype("float32")
    if entry in ("gluon", "gluon-hybrid"):
        layer = mx.gluon.nn.BatchNorm(in_channels=length, scale=True)
        layer.initialize()
        if entry == "gluon-hybrid":
            layer.hybridize()
        data = mx.nd.array(x)
        data.attach_grad()
        with mx.autograd.record():
            y = layer(data)
        y.backward()
        return y.asnumpy(), layer.gamma.grad().asnumpy(), layer.running_mean.data().asnumpy()
    if entry == "sym":
        # bind() with the user's own arrays: simple_bind would infer (and allocate) the right shapes.
        sym = mx.sym.BatchNorm(mx.sym.Variable("data"), name="bn", fix_gamma=False)
        args = {
            "data": mx.nd.array(x),
            "bn_gamma": mx.nd.array(values["gamma"]),
            "bn_beta": mx.nd.array(values["beta"]),
        }
        aux = {f"bn_{p}": mx.nd.array(values[p]) for p in ("moving_mean", "moving_var")}
        grads = {name: mx.nd.zeros(a.shape) for name, a in args.items()}
        exe = sym.bind(mx.cpu(), args=args, args_grad=grads, aux_states=aux)
        exe.forward(is_train=True)
        exe.backward([mx.nd.ones(x.shape)])
        return exe.outputs[0].asnumpy(), exe.grad_dict["bn_gamma"].asnumpy()
    mod, op = (mx.np, mx.npx.batch_norm) if entry == "npx" else (mx.nd, mx.nd.BatchNorm)
    arrays = {p: mod.array(v) for p, v in values.items()}
    data = mod.array(x)
    for a in (data, arrays["gamma"], arrays["beta"]):
        a.attach_grad()
    with mx.autograd.record():
        y = op(data, arrays["gamma"], arrays["beta"], arrays["moving_mean"], arrays["moving_var"], fix_gamma=False)
    y.backward()
    return y.asnumpy(), arrays["gamma"].grad.asnumpy(), arrays["moving_mean"].asnumpy()


def main(argv: list[str]) -> int:
    from bnprops.mx.runners import ENTRY_POINTS

    if len(argv) != 1 or argv[0] not in ENTRY_POINTS:
        print(f"usage: python -m bnprops.mx.contract {{{','.join(ENTRY_POINTS)}}}", file=sys.stderr)
        return 2
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    for parameter, length in probes(argv[0]):
        try:
            _call(argv[0], parameter, length)
            outcome, detail = "accepted", ""
        except Exception as exc:  # MXNetError, or a Python-side check: either is a rejection
            outcome = "error"
            lines = [ln for ln in str(exc).splitlines() if "Check failed" in ln or "Error" in ln] or [str(exc)]
            detail = f"{type(exc).__name__}: {lines[0][:200]}"
        line = {"parameter": parameter, "length": length, "outcome": outcome, "detail": detail}
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

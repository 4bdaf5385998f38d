"""BatchNormWithReLU as a family member: BatchNorm and ReLU in one oneDNN call, through nd, sym and gluon.

Its runners are mx.runners's (they share the plain entry points' code); here they are named by the member's
entries, with what it can run (float32 4-D input, channels on axis 1), on which kernel (oneDNN only), and
its standalone call for reproducers. Each entry corresponds to the plain entry point whose code it shares.
"""

from __future__ import annotations

import mxnet as mx

from bnprops.model.case import Case
from bnprops.mx import runners, snippets

#: Entry -> the plain entry point whose call it makes with the fused operator instead.
PLAIN = {"nd-relu": "nd", "sym-relu": "sym", "gluon-relu": "gluon-hybrid"}

RUNNERS: dict[str, runners.Runner] = {
    "nd-relu": runners.run_nd_with_relu,
    "sym-relu": runners.run_sym_with_relu,
    "gluon-relu": runners.run_gluon_with_relu,
}

#: Verified in batch_norm_relu.cc (1.9.1): FComputeEx<cpu> only, and LOG(FATAL) without oneDNN.
KERNELS: dict[str, str | None] = {
    "onednn": None,
    "native": "oneDNN only: the operator has no CPU kernel without oneDNN (MXNET_MKLDNN_ENABLED=0 raises)",
}


def unexpressible_reason(case: Case) -> str | None:
    """Why BatchNormWithReLU cannot run ``case`` (SupportMKLDNNBNReLU: float32, 4-D, axis 1), or None."""
    if case.dtype != "float32" or case.x.ndim != 4 or case.channel_axis != 1:
        got = f"{case.dtype}{list(case.shape)} axis={case.axis}"
        return f"BatchNormWithReLU runs only float32 4-D input with axis=1, not {got}"
    return None


def unavailable_reason() -> str | None:
    """Why this MXNet lacks the operator (it came with oneDNN builds; gluon.nn.BatchNormReLU beside it), or None."""
    if not runners.ONEDNN_BUILT:
        return f"MXNet {mx.__version__} was built without oneDNN: BatchNormWithReLU has no kernel"
    missing = [
        name
        for name, ok in (
            ("mx.nd.contrib.BatchNormWithReLU", hasattr(mx.nd.contrib, "BatchNormWithReLU")),
            ("mx.gluon.nn.BatchNormReLU", hasattr(mx.gluon.nn, "BatchNormReLU")),
        )
        if not ok
    ]
    return f"MXNet {mx.__version__} has no {', '.join(missing)}" if missing else None


def adapt(entry: str, case: Case) -> Case:
    """The case as the entry can express it: gluon's mapping for gluon-relu (as the plain entry's adapt)."""
    return runners.adapt(PLAIN[entry], case)


_SNIPPET_CALLS = {
    "mx.sym.BatchNorm(": "mx.sym.contrib.BatchNormWithReLU(",
    "mx.nd, mx.nd.BatchNorm": "mx.nd, mx.nd.contrib.BatchNormWithReLU",
    "nn.BatchNorm(": "nn.BatchNormReLU(",
}


def snippet(case: Case, entry: str, *, backend: str = "onednn") -> str:
    """The standalone call (mxnet and numpy only): the plain entry's script with the fused operator."""
    text = snippets.snippet(case, entry=PLAIN[entry], backend=backend)
    replaced = text
    for plain, fused in _SNIPPET_CALLS.items():
        replaced = replaced.replace(plain, fused)
    if replaced == text:
        raise AssertionError(f"the {PLAIN[entry]} snippet no longer names the operator it replaces")
    return replaced

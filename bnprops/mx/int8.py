"""int8 quantization of BatchNorm (quantize_net, _contrib_quantized_batch_norm), as a member of the family.

A case runs as a BatchNorm alone, quantized with 'naive' calibration on the case's own data by
``mx.contrib.quantization.quantize_net`` (int8-gluon) or ``quantize_model_mkldnn`` (int8-sym): quantize, the
int8 BatchNorm, dequantize. The quantized graph is for
inference only: the runner returns y, and the runner refuses a graph that kept the float BatchNorm.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import mxnet as mx
import numpy as np

from bnprops.model.case import Case, Outputs
from bnprops.mx import mxversion, rewrite_snippets
from bnprops.mx.runners import ONEDNN_BUILT, ONEDNN_ENABLED

QUANTIZED_OP = "_contrib_quantized_batch_norm"

KERNELS: dict[str, str | None] = {
    "onednn": None,
    "native": "oneDNN only: _contrib_quantized_batch_norm has only a oneDNN kernel (FComputeEx<cpu> in "
    "mkldnn_quantized_batch_norm.cc), registered only in the oneDNN build",
}


#: quantize_net and quantize_model_mkldnn take quantize_mode (full: BatchNorm quantized too) from this release.
QUANTIZE_MODE_SINCE = "1.7.0"


def unavailable_reason() -> str | None:
    """Why this MXNet cannot quantize BatchNorm (None if it can)."""
    if not ONEDNN_BUILT or not ONEDNN_ENABLED:
        return "int8 BatchNorm needs oneDNN (built and enabled): _contrib_quantized_batch_norm has no other kernel"
    try:
        from mxnet.contrib.quantization import quantize_net  # noqa: F401
    except ImportError:
        return f"MXNet {mx.__version__} has no mx.contrib.quantization.quantize_net"
    if mxversion.parse(mxversion.running()) < mxversion.parse(QUANTIZE_MODE_SINCE):
        return f"bnprops's int8 runners pass quantize_mode, which MXNet's quantizers take from {QUANTIZE_MODE_SINCE}"
    return None


def unexpressible_reason(case: Case) -> str | None:
    """Why an int8 BatchNorm cannot carry ``case``, or None."""
    if case.dtype != "float32":
        return f"quantize_net quantizes float32 models, not {case.dtype}"
    if case.x.ndim != 4 or case.channel_axis != 1:
        return "the quantized BatchNorm takes 4-D data with channels on axis 1 (oneDNN's NCHW)"
    if not np.isfinite(case.x).all():
        return "int8 has no NaN or inf, and calibration takes the data's minimum and maximum"
    if not np.abs(case.x).max() > 0:
        return "all-zero data calibrates an empty range (0 / 0 scales)"
    if case.output_mean_var:
        return "the quantized BatchNorm's mean and var outputs are its output range, not statistics"
    return None


def quantized_ops(block: Any) -> list[str]:
    return sorted({n["op"] for n in json.loads(block(mx.sym.var("data")).tojson())["nodes"] if n["op"] != "null"})


def run_int8_gluon(case: Case) -> Outputs:
    """gluon BatchNorm on the case's parameters, quantize_net(calib_mode='naive') on x, then y = qnet(x)."""
    from mxnet.contrib.quantization import quantize_net

    net = mx.gluon.nn.HybridSequential()
    net.add(
        mx.gluon.nn.BatchNorm(
            axis=1,
            momentum=case.momentum,
            epsilon=case.eps,
            scale=not case.fix_gamma,
            use_global_stats=case.use_global_stats,
            in_channels=case.channels,
        )
    )
    net.initialize()
    bn = net[0]
    for param, value in (
        (bn.gamma, case.gamma),
        (bn.beta, case.beta),
        (bn.running_mean, case.moving_mean),
        (bn.running_var, case.moving_var),
    ):
        param.set_data(mx.nd.array(value))
    net.hybridize()
    data = mx.nd.array(case.x)
    n = case.shape[0]
    calib = mx.gluon.data.DataLoader(mx.gluon.data.ArrayDataset(data, mx.nd.zeros(n)), batch_size=n)
    quiet = logging.getLogger("bnprops.int8")
    quiet.setLevel(logging.ERROR)
    qnet = quantize_net(
        net,
        quantize_mode="full",
        calib_data=calib,
        calib_mode="naive",
        ctx=mx.cpu(),
        exclude_layers_match=[],
        num_calib_examples=n,
        logger=quiet,
    )
    y = qnet(data).asnumpy()
    ops = quantized_ops(qnet)
    if QUANTIZED_OP not in ops or "BatchNorm" in ops:
        raise RuntimeError(f"quantize_net did not replace BatchNorm by {QUANTIZED_OP}: the graph has {ops}")
    return {"y": y}


def run_int8_sym(case: Case) -> Outputs:
    """mx.sym.BatchNorm quantized by ``quantize_model_mkldnn`` ('naive' calibration on x through an NDArrayIter,
    quantized_dtype 'auto'), bound without gradients, forward(is_train=False)."""
    from mxnet.contrib.quantization import quantize_model_mkldnn

    sym = mx.sym.BatchNorm(
        mx.sym.var("data"),
        name="bn",
        eps=case.eps,
        momentum=case.momentum,
        fix_gamma=case.fix_gamma,
        use_global_stats=case.use_global_stats,
        axis=1,
    )
    args = {"bn_gamma": mx.nd.array(case.gamma), "bn_beta": mx.nd.array(case.beta)}
    aux = {"bn_moving_mean": mx.nd.array(case.moving_mean), "bn_moving_var": mx.nd.array(case.moving_var)}
    n = case.shape[0]
    quiet = logging.getLogger("bnprops.int8")
    quiet.setLevel(logging.ERROR)
    qsym, qargs, qaux = quantize_model_mkldnn(
        sym,
        args,
        aux,
        ctx=mx.cpu(),
        calib_mode="naive",
        calib_data=mx.io.NDArrayIter(data=case.x, batch_size=n),
        num_calib_examples=n,
        quantized_dtype="auto",
        quantize_mode="full",
        logger=quiet,
    )
    ops = sorted({node["op"] for node in json.loads(qsym.tojson())["nodes"] if node["op"] != "null"})
    if QUANTIZED_OP not in ops or "BatchNorm" in ops:
        raise RuntimeError(f"quantize_model did not replace BatchNorm by {QUANTIZED_OP}: the graph has {ops}")
    exe = qsym.bind(mx.cpu(), {"data": mx.nd.array(case.x), **qargs}, aux_states=qaux, grad_req="null")
    return {"y": exe.forward(is_train=False)[0].asnumpy()}


RUNNERS: dict[str, Callable[[Case], Outputs]] = {"int8-gluon": run_int8_gluon, "int8-sym": run_int8_sym}


def snippet(case: Case, entry: str, *, backend: str = "onednn") -> str:
    """The standalone reproducer of ``case`` through ``entry`` (mxnet and numpy only; oneDNN is the only
    kernel, so ``backend`` is always onednn)."""
    return rewrite_snippets.snippet(case, entry)

"""BatchNorm deployed through ONNX: exported by mx.onnx.export_model, run by onnxruntime's CPU provider.

The exported node is ONNX BatchNormalization in inference mode, so the entry ``onnx`` yields y only, for
the case as inference (``as_exported``). onnx and onnxruntime are an optional extra (``onnx``): without
them the entry is unavailable and says why. The semantics, verified by runs, are on the ONNX export page.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np

from bnprops.model.case import WRITE_ALL, Case, Outputs

ENTRY = "onnx"
#: The versions the entry was verified with (the extra's pins say why those).
VERIFIED = {"onnx": "1.15.0-1.18.0", "onnxruntime": "1.32.0"}
#: The CPU kernels: onnxruntime computes the exported graph, whichever MXNet kernel would have run it.
KERNELS: dict[str, str | None] = {
    "onednn": None,
    "native": "onnxruntime computes the exported BatchNorm, not MXNet: MXNET_MKLDNN_ENABLED does not reach it "
    "(the exporter only reads the parameters), so a native run repeats the onednn one",
}


def unavailable_reason() -> str | None:
    """Why this environment cannot export and run a BatchNorm through ONNX, or None."""
    if not hasattr(mx, "onnx") or not hasattr(mx.onnx, "export_model"):
        return f"MXNet {mx.__version__} has no mx.onnx.export_model (added in 1.9)"
    missing = [name for name in ("onnx", "onnxruntime") if not _importable(name)]
    if missing:
        return f"{' and '.join(missing)} not installed (pip install -e '.[onnx]')"
    try:
        from onnx import mapping  # noqa: F401  (MXNet 1.9.1's exporter imports it; onnx 1.19+ dropped it)
    except ImportError:
        from importlib.metadata import version

        return f"onnx {version('onnx')} has no onnx.mapping, which MXNet's exporter imports: install onnx < 1.19"
    return None


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def unexpressible_reason(case: Case) -> str | None:
    """Why the ONNX entry cannot run ``case``, or None (each verified in the exporter's source or by a run)."""
    if case.dtype != "float32":
        return f"the onnx entry exports float32 graphs only, not {case.dtype}"
    if case.x.ndim < 2:
        return "ONNX BatchNormalization takes (N, C, ...) input: at least 2 dimensions"
    if case.channel_axis != 1:
        return f"MXNet's exporter raises NotImplementedError for axis != 1 (convert_batchnorm), not axis {case.axis}"
    if case.x.size == 0:
        return "an empty batch has no ONNX graph to run"
    if case.output_mean_var:
        return "output_mean_var: the exporter writes BatchNormalization with one output"
    if case.uses_batch_stats:
        return "the exported node is inference only (moving statistics): batch statistics have no ONNX export"
    return None


def as_exported(case: Case) -> Case:
    """The inference call whose y the exported graph computes (is_train False, no gradient requests)."""
    return case.with_(
        is_train=False, grad_req=WRITE_ALL, prior_dx=None, prior_dgamma=None, prior_dbeta=None, output_mean_var=False
    )


def _symbol(case: Case) -> Any:
    return mx.sym.BatchNorm(
        mx.sym.var("data"),
        eps=case.eps,
        momentum=case.momentum,
        fix_gamma=case.fix_gamma,
        use_global_stats=case.use_global_stats,
        axis=case.axis,
        name="bn",
    )


def export(case: Case, path: str) -> None:
    """Export the case's BatchNorm (its parameters as stored) to ``path`` with mx.onnx.export_model."""
    params = {
        "bn_gamma": mx.nd.array(case.gamma),
        "bn_beta": mx.nd.array(case.beta),
        "bn_moving_mean": mx.nd.array(case.moving_mean),
        "bn_moving_var": mx.nd.array(case.moving_var),
    }
    mx.onnx.export_model(_symbol(case), params, in_shapes=[case.shape], in_types=[np.float32], onnx_file_path=path)


@functools.lru_cache(maxsize=1)
def _session_options() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the exporter lists the initializers as graph inputs: a warning per run
    options.intra_op_num_threads = 1
    return options


def run_onnx(case: Case) -> Outputs:
    """Export ``case`` as inference, run it in onnxruntime (CPU provider, default optimisations): {"y": y}."""
    reason = unavailable_reason() or unexpressible_reason(as_exported(case))
    if reason is not None:
        raise ValueError(f"{ENTRY} cannot run {case.describe()}: {reason}")
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bnprops-onnx-") as folder:
        path = str(Path(folder) / "bn.onnx")
        export(case, path)
        session = ort.InferenceSession(path, _session_options(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"data": np.ascontiguousarray(case.x)})
    return {"y": np.asarray(y)}


RUNNERS: dict[str, Callable[[Case], Outputs]] = {ENTRY: run_onnx}


def snippet(case: Case, entry: str = ENTRY) -> str:
    """A standalone script (mxnet, numpy, onnx and onnxruntime) that exports the case and runs it; y in ``actual``."""
    if entry != ENTRY:
        raise ValueError(f"no ONNX reproducer for entry {entry!r}")

    def arr(a: np.ndarray) -> str:
        return f"np.array({a.astype(np.float64).tolist()!r}, dtype=np.float64).astype('float32')"

    return "\n".join(
        [
            "import mxnet as mx, numpy as np, onnxruntime as ort  # and onnx < 1.19 (for onnx.mapping)",
            "nan, inf = float('nan'), float('inf')  # as repr writes non-finite data",
            f"x = {arr(case.x)}",
            f"gamma, beta = {arr(case.gamma)}, {arr(case.beta)}",
            f"moving_mean, moving_var = {arr(case.moving_mean)}, {arr(case.moving_var)}",
            f"sym = mx.sym.BatchNorm(mx.sym.var('data'), eps={case.eps!r}, momentum={case.momentum!r}, "
            f"fix_gamma={case.fix_gamma}, use_global_stats={case.use_global_stats}, axis=1, name='bn')",
            "params = {'bn_gamma': mx.nd.array(gamma), 'bn_beta': mx.nd.array(beta),",
            "          'bn_moving_mean': mx.nd.array(moving_mean), 'bn_moving_var': mx.nd.array(moving_var)}",
            "mx.onnx.export_model(sym, params, in_shapes=[x.shape], in_types=[np.float32], onnx_file_path='bn.onnx')",
            "session = ort.InferenceSession('bn.onnx', providers=['CPUExecutionProvider'])",
            "actual = {'y': session.run(None, {'data': x})[0]}",
            "exe = sym.bind(mx.cpu(), {'data': mx.nd.array(x), 'bn_gamma': params['bn_gamma'], "
            "'bn_beta': params['bn_beta']},",
            "               aux_states={k: params[k] for k in ('bn_moving_mean', 'bn_moving_var')})",
            "mxnet_y = exe.forward(is_train=False)[0].asnumpy()  # MXNet's own inference, for comparison",
            "print('onnxruntime y', actual['y'])",
            "print('MXNet y      ', mxnet_y)",
        ]
    )

"""The ONNX exporter drops fix_gamma: the exported BatchNormalization scales by gamma as stored, not by 1."""

from __future__ import annotations

import numpy as np

from bnprops.judging.declarations import KnownDeviation
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.model.case import Case
from bnprops.model.folded_inference import folded_bound_y, folded_oracle_y, scale_gamma
from bnprops.mx import mxversion


def onnx_fix_gamma_dropped(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if not case.fix_gamma:
        return []
    stored = scale_gamma(case, stored=True)
    channels = np.asarray(stored != 1)  # (a NaN gamma too: the exported graph multiplies by it)
    values = folded_oracle_y(case, gamma=stored)
    tolerance = folded_bound_y(case, values, gamma=stored)
    return predict_over(ctx, ["y"], channels, {"y": values}, {"y": tolerance}, certain=True)


def _reproducer() -> Case:
    """The research probe's call: two channels, stored gamma [2, 3], fix_gamma=True."""
    x = (np.arange(8, dtype=np.float32) / 4).reshape(2, 2, 2)
    return Case(
        x=x,
        dy=np.ones_like(x),
        gamma=np.array([2.0, 3.0], np.float32),
        beta=np.array([0.5, -0.5], np.float32),
        moving_mean=np.array([1.0, 0.0], np.float32),
        moving_var=np.array([4.0, 0.25], np.float32),
        eps=2e-5,
        momentum=0.8,
        fix_gamma=True,
        is_train=False,
        regime="reproducer",
    )


ONNX_FIX_GAMMA_DROPPED = KnownDeviation(
    id="onnx-fix-gamma-dropped",
    releases=mxversion.Releases(
        probed=(("1.9.1", True),),
        why="needs mx.onnx.export_model (1.9)",
        basis="mx.onnx.export_model (the new mx2onnx) is first released in 1.9.0 (forward-ported to master by "
        "apache/mxnet#20355); 1.3.1-1.8.0 cannot express it",
    ),
    summary="mx.onnx.export_model drops fix_gamma: the exported BatchNorm scales by the stored gamma, not 1",
    quantities=frozenset({"y"}),
    conditions="the onnx entry (mx.onnx.export_model, run by onnxruntime); fix_gamma=True; in the channels whose "
    "stored gamma is not 1 (the sym API never overwrites it before an inference; gluon's scale=False layers "
    "keep gamma 1 unless a user or a loaded file set it)",
    model="y = gamma_stored (x - moving_mean) / sqrt(moving_var + eps) + beta, within the folded form's bound "
    "(model.folded_inference) for that gamma",
    predict=onnx_fix_gamma_dropped,
    evidence="convert_batchnorm (python/mxnet/onnx/mx2onnx/_op_translations/_op_translations_opset12.py:416-441, "
    "1.9.1) writes BatchNormalization(data, gamma, beta, moving_mean, moving_var) with epsilon and momentum "
    "only: fix_gamma and use_global_stats are never read, and gamma is exported as stored. Run (onnx 1.18.0, "
    "onnxruntime 1.32.0): stored gamma [2, 3], fix_gamma=True: MXNet's inference y [1.25e-06, 0.125, 0.49996, "
    "0.99994, 0.5, 0.625, 2.49988, 2.99986], onnxruntime's [-0.5, -0.25, 2.49988, 3.99982, 0.5, 0.74999, "
    "8.49964, 9.99958]. use_global_stats is dropped too, without effect: the exported node is inference only, "
    "and MXNet's inference normalises with the moving statistics whatever use_global_stats says.",
    reproducer=_reproducer,
    entries=frozenset({"onnx"}),
    upstream="apache/mxnet#9624 (open design defect: with fix_gamma the saved gamma is not 1, 'a problem in "
    "convert MXNet parameters to other deep-learning platforms'; fixed for the CoreML converter only); "
    "apache/mxnet#15645 (the same fix for the TensorRT path's ONNX conversion, not for mx.onnx)",
)

DEVIATIONS = (ONNX_FIX_GAMMA_DROPPED,)

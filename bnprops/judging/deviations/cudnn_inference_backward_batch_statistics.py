"""cuDNN's backward after an inference forward takes the batch statistics: training gradients for dx and dgamma."""

from __future__ import annotations

from bnprops.judging.declarations import FROM_SOURCE, GPU_SOURCE_SCOPE, KnownDeviation, minimal
from bnprops.judging.deviation_models import Context, Prediction, predict_over
from bnprops.model.evaluation import evaluate


def cudnn_inference_backward_batch_statistics(ctx: Context) -> list[Prediction]:
    case = ctx.case
    if ctx.kernel != "cudnn" or case.is_train or case.use_global_stats or case.reduction_length < 1:
        return []
    # The training oracle's gradients (batch statistics) and its GPU bounds; the moving statistics stay as they are
    # (cuDNN's backward never updates them).
    trained = evaluate(case.with_(is_train=True), "reference", reduction="gpu")
    quantities: list[str] = [q for q in ("dx", "dgamma") if q in ctx.expected and q in trained.expected]
    values = {q: trained.expected[q] for q in quantities}
    tolerance = {q: trained.bound[q] for q in quantities}
    channels = ctx.finite_channels & ~trained.undetermined
    return predict_over(ctx, quantities, channels, values, tolerance, certain=True)


CUDNN_INFERENCE_BACKWARD_BATCH_STATISTICS = KnownDeviation(
    id="cudnn-inference-backward-batch-statistics",
    releases=GPU_SOURCE_SCOPE,
    summary=f"cuDNN: a backward after an inference forward uses the batch statistics ({FROM_SOURCE})",
    upstream="apache/mxnet#18209 (open: gluon BatchNorm backward with train_mode=False gives other gradients on "
    "mx.gpu() than on mx.cpu(), MXNet 1.6.0 mxnet-cu101mkl)",
    quantities=frozenset({"dx", "dgamma"}),
    conditions="cudnn backend; a backward with is_train=False (autograd.record(train_mode=False)); "
    "use_global_stats=False; finite data",
    model="dx and dgamma as the training oracle gives them (the batch's mean and invstd), within its GPU bound; "
    "y, dbeta and the moving statistics as in inference",
    predict=cudnn_inference_backward_batch_statistics,
    evidence=f"{FROM_SOURCE}. cudnn_batch_norm-inl.h (1.9.1) 196 and 251-252: global_stats = !is_train passes NULL "
    "savedMean/savedInvVariance to cudnnBatchNormalizationBackward, which then recomputes the batch's mean and "
    "inverse variance from x (cuDNN's documentation; it has no inference-mode backward). The CUDA kernel "
    "(batch_norm.cu 334-337, 378-381) uses the moving statistics there, as the CPU kernels do.",
    reproducer=lambda: minimal([1.0, 2.0, 4.0], "float32", is_train=False),
    entries=frozenset({"nd", "gluon", "gluon-hybrid", "npx"}),
    needs_backend="cudnn",
)

DEVIATIONS = (CUDNN_INFERENCE_BACKWARD_BATCH_STATISTICS,)

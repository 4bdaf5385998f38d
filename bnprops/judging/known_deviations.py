"""Where MXNet 1.9.1's BatchNorm is known to disagree with the oracle: one entry per deviation.

Each entry says what MXNet returns under it (``model``, in words; ``predict``, element by element:
judging.deviation_models), under exactly which conditions, why we believe MXNet rather than the
oracle is at fault (evidence), and a minimal case that shows it (``reproducer``).  The judgement
(judging.judgement) consults this list:

* inside a deviation's region, MXNet must return the oracle's values or the model's; an element
  that matches neither "deviates, but not as recorded" and is a finding;
* where a deviation is *certain* and its model differs from the oracle, MXNet must match the
  model somewhere, or the run reports the entry as stale (MXNet was fixed, or the model is wrong);
* outside every region, the oracle alone judges;
* the tests (test_known_deviations) run every reproducer, which must match its model, and plants a
  fault inside each region, which must be caught.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from bnprops.judging import deviation_models as models
from bnprops.judging.deviation_models import Context, Prediction
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, Case, param_dtype
from bnprops.mx import mxversion
from bnprops.mx.contract import CHANNELS as CONTRACT_CHANNELS
from bnprops.mx.producers import Chain, step


@dataclasses.dataclass(frozen=True)
class KnownDeviation:
    id: str
    summary: str
    #: Every quantity this deviation can make fail.
    quantities: frozenset[str]
    #: Human-readable conditions; ``predict`` is their exact form.
    conditions: str
    #: What MXNet returns under it, in words; ``predict`` is its exact form.
    model: str
    predict: Callable[[Context], list[Prediction]]
    evidence: str
    reproducer: Callable[[], Case]
    #: Entry points it shows on (None: all).
    entries: frozenset[str] | None = None
    upstream: str = "none found"
    #: The MXNet releases it holds in (probed by ``bnprops versions``); elsewhere it is absent, not stale.
    releases: mxversion.Releases = mxversion.EVERY_RELEASE

    def holds_in(self, version: str) -> bool:
        return self.releases.holds(version)

    def predictions(self, ctx: Context, *, entry: str, scoped: bool = True) -> list[Prediction]:
        """What it predicts for the case on this entry point (nothing where it does not apply).

        ``scoped``: only in the releases it holds in (the running MXNet's); ``bnprops versions`` probes
        a reproducer with scoped=False to see whether the deviation is present in a release.
        """
        if self.entries is not None and entry not in self.entries:
            return []
        if scoped and not self.releases.holds(mxversion.running()):
            return []
        # A gradient requested with 'null' is not produced, so it cannot show the deviation.
        absent = {GRADIENT_OF[t] for t in GRAD_TARGETS if ctx.case.request(t) == "null"}
        found = [p for p in self.predict(ctx) if p.quantity not in absent and p.where.any()]
        stray = {p.quantity for p in found} - self.quantities
        assert not stray, f"{self.id} predicts {sorted(stray)}, which it does not declare"
        return found


def _minimal(values: list[float], dtype: str, **params: object) -> Case:
    """A one-channel case (x of shape (M, 1)) with a ramp for dy, for reproducers."""
    x = np.asarray(values, dtype=dtype).reshape(-1, 1)
    pdt = param_dtype(dtype)
    return Case(
        x=x,
        dy=np.linspace(-1, 1, x.size).astype(dtype).reshape(x.shape),
        gamma=np.full(1, 1.5, pdt),
        beta=np.full(1, 0.25, pdt),
        moving_mean=np.zeros(1, pdt),
        moving_var=np.ones(1, pdt),
        fix_gamma=False,
        regime="reproducer",
        **params,  # type: ignore[arg-type]
    )


def empty_batch(dtype: str, *, channels: int = 2, **params: object) -> Case:
    """A case whose batch is empty (shape (0, channels)): the reproducer here, and test_bad_input's."""
    pdt = param_dtype(dtype)
    x = np.zeros((0, channels), dtype=dtype)
    return Case(
        x=x,
        dy=x.copy(),
        gamma=np.full(channels, 1.5, pdt),
        beta=np.full(channels, 0.25, pdt),
        moving_mean=np.zeros(channels, pdt),
        moving_var=np.ones(channels, pdt),
        regime="reproducer",
        **params,  # type: ignore[arg-type]
    )


def _add_request_ignored(ctx: Context) -> list[Prediction]:
    """MXNet before 1.7 (#18499): a gradient requested with 'add' is neither accumulated nor written."""
    case = ctx.case
    found: list[Prediction] = []
    for target in GRAD_TARGETS:
        prior = case.prior(target)
        quantity = GRADIENT_OF[target]
        if case.request(target) != "add" or prior is None or quantity not in ctx.expected:
            continue
        kept = np.asarray(prior, dtype=np.float64)
        where = np.ones(kept.shape, dtype=bool)
        # The buffer is left as it was, bit for bit: visible wherever this call's gradient is not 0.
        found.append(models.Prediction(quantity, where, kept, np.zeros(kept.shape), certain=True))
    return found


#: What `bnprops versions` measured (reproducers, 90 s campaigns) for the deviations that hold in every release
#: that can express them: 1.3.1 to 1.9.1; oneDNN's only where the wheel has oneDNN (1.7+; before 1.8 on 4-D
#: input with axis=1 only: runners.kernel_for); npx's from 1.6.
_PROBED_IN_EVERY_RELEASE = mxversion.Releases(
    probed=tuple((v, True) for v in ("1.3.1", "1.4.1", "1.5.1", "1.6.0", "1.7.0", "1.8.0", "1.9.1"))
)
_PROBED_WITH_ONEDNN = mxversion.Releases(
    probed=(("1.7.0", True), ("1.8.0", True), ("1.9.1", True)),
    why="needs oneDNN (the 1.3-1.6 'mxnet' wheels have none); reaches 2-D input from 1.8 (apache/mxnet#18504, "
    "v1.x backport #18890)",
)
_PROBED_WITH_NPX = mxversion.Releases(
    probed=(("1.6.0", True), ("1.7.0", True), ("1.8.0", True), ("1.9.1", True)), why="needs npx (1.6+)"
)


KNOWN_DEVIATIONS: tuple[KnownDeviation, ...] = (
    KnownDeviation(
        id="native-zero-variance-eps0",
        summary="Native kernel, eps=0 and a zero-variance channel: moving_var becomes inf",
        quantities=frozenset({"moving_var"}),
        conditions="native kernel (float16, float64, or float32 with MXNET_MKLDNN_ENABLED=0); batch statistics; "
        "eps == 0; a channel whose values are all equal (certain when M = 1)",
        model=(
            "moving_var = m old + (1 - m)(1/0^2 - 0) = inf (NaN for momentum 1) in each zero-variance channel: "
            "the kernel form (deviation_models.kernel_form) with the guard's invstd = 0"
        ),
        predict=models.native_zero_variance_eps0,
        evidence="batch_norm.cc guards `if (sum == 0 && param_.eps == 0.0) invstd = 0;` (y, dx and dgamma are 0/0 "
        "there, which bnprops does not judge); the backward then recovers the variance as 1/invstd^2 - eps = inf "
        "and writes an infinite moving_var although the batch variance is exactly 0 (its invstd output is 0, "
        "which bnprops does not judge either). oneDNN (float32) keeps moving_var finite.",
        reproducer=lambda: _minimal([1.0], "float64", eps=0.0),
        releases=_PROBED_IN_EVERY_RELEASE,
    ),
    KnownDeviation(
        id="float16-normaliser-out-of-range",
        summary="float16 data: var + eps is rounded to float16, so it overflows above 65504 and vanishes below 2^-25",
        quantities=frozenset({"y", "dx", "dgamma", "invstd", "moving_var"}),
        conditions="float16 data (native kernel); not both var == 0 and eps == 0; var + eps (batch or moving "
        "statistics) >= 65520 (rounds to inf: invstd=0, y=beta, dx=dgamma=0, moving_var=inf) or < 2^-25 ~ 2.98e-8 "
        "(rounds to 0: invstd=inf, NaNs)",
        model=(
            "the kernel form with invstd = 1/sqrt(half(var + half(eps))): var + eps rounded to inf gives "
            "invstd=0, y=beta, dx=dgamma=0 and moving_var=inf; rounded to 0 gives invstd=inf, NaN/inf in y, dx "
            "and dgamma, and moving_var = m old - (1 - m) eps"
        ),
        predict=models.float16_normaliser_out_of_range,
        evidence="Probes with one channel: x=[-255.875, 255.875]*2 (var 65472) passes with eps=40 and fails with "
        "eps=100 (var+eps=65572); a single value passes with eps=2.99e-8 and fails with eps=2.9e-8; "
        "invstd=4096 for eps in [3e-8, 6e-8] (1/sqrt(float16(eps))). gamma, beta and the statistics are float32 "
        "for float16 data precisely so that such values are representable.",
        reproducer=lambda: _minimal([-256.0, 256.0, -256.0, 256.0], "float16"),
        releases=_PROBED_IN_EVERY_RELEASE,
    ),
    KnownDeviation(
        id="float16-normaliser-subnormal",
        summary="float16 data: var + eps below 2^-14 is rounded to a float16 subnormal, up to 50% off",
        quantities=frozenset({"y", "dx", "dgamma", "invstd", "moving_var"}),
        conditions="float16 data (native kernel); 2^-25 <= var + eps < 2^-14 and float16 rounding moves it by more "
        "than half an ulp of a normal number (may fail: depends on where in the ulp it falls)",
        model=(
            "the kernel form with invstd = 1/sqrt(half(var + half(eps))), the float16 subnormal var + eps: y, dx, "
            "dgamma, invstd and moving_var follow that invstd, within the error model's bounds around them"
        ),
        predict=models.float16_normaliser_subnormal,
        evidence="use_global_stats with moving_var=1e-7, eps=0: invstd=2896.3 (1/sqrt(float16(1e-7)) = "
        "1/sqrt(1.19e-7)) against 3162.3; the error in y, dx and dgamma follows.",
        reproducer=lambda: _minimal([1.0, 2.0, 3.0, 4.0], "float16", eps=0.0, use_global_stats=True).with_(
            moving_var=np.array([1e-7], dtype=np.float32)
        ),
        releases=_PROBED_IN_EVERY_RELEASE,
    ),
    KnownDeviation(
        id="float16-gradient-product-overflow",
        summary="float16 data: the products (x - mean) * dy of the gradient sums are formed in float16 and overflow",
        quantities=frozenset({"dgamma", "dx"}),
        conditions="float16 data (native kernel); some element with |float16(x - mean) * dy| >= 65520, i.e. the "
        "product rounds to inf in float16, although dgamma is a float32 output and the sum may be finite; "
        "dgamma becomes NaN or inf, and with batch statistics dx becomes NaN",
        model=(
            "the kernel form with dotp = the sum of the float16 products, +-inf (NaN where both signs overflow): "
            "dgamma = dotp invstd and dx = (dy - dbeta/M - (x - mean) dotp invstd^2/M) invstd g, NaN or +-inf"
        ),
        predict=models.float16_gradient_product_overflow,
        evidence="use_global_stats, mean 0, x=[a,-a,a,-a], dy=[b,b,-b,-b]: a=200, b=320 (product 64000) matches "
        "the oracle (dgamma 0); a=200, b=330 (66000) gives dgamma=NaN, and with batch statistics dx=NaN too. "
        "The oracle's dgamma there is finite (0), and float32 holds every term.",
        reproducer=lambda: _minimal([200.0, -200.0, 200.0, -200.0], "float16").with_(
            dy=np.array([[330.0], [330.0], [-330.0], [-330.0]], dtype=np.float16)
        ),
        releases=_PROBED_IN_EVERY_RELEASE,
    ),
    KnownDeviation(
        id="float16-dx-projection-overflow",
        summary="float16 data: the training formula for dx forms (x - mean) * dotp invstd^2 / M and dy - mean(dy) "
        "in float16, which overflow although dx is small",
        quantities=frozenset({"dx"}),
        conditions="float16 data (native kernel); the training formula for dx (batch statistics, or the "
        "executor's backward after an inference forward: sym-inference-backward-trains); some element where "
        "half(half(x - mean) * k) with k = dotp invstd^2 / M, half(dy - mean(dy)) or their difference is inf, "
        "i.e. |xhat * mean(dy xhat)| or |dy - mean(dy)| reaches 65520; dx there is +-inf or NaN",
        model="dx emulated in float16 as batch_norm.cc forms it (deviation_models.float16_projection): "
        "t = half(half(x - mean) k), dx = half(half(half(dy - mean(dy)) - t) invstd g), exactly, where one of "
        "those overflows; every other element is the oracle's",
        predict=models.float16_dx_projection_overflow,
        evidence="Found by the deviation models of issue 9 (pytest -m property): sym, float16[1], inference "
        "forward then backward, x=265, moving_mean 0.807, moving_var 0.26, gamma 0.0144: dx=-inf where the "
        "training formula gives -7502.7 (|t| = 264.2 * 1011.6 = 267,000). With batch statistics: "
        "x=[0]*8+[1], dy=[-40000]*8+[40000], gamma 1e-3: dx = [-0.304]*8 + [nan] against the oracle's "
        "[-0.282]*8 + [2.257] (half(40000 - (-26667)) and t = 71,000 are both inf). mshadow's half_t "
        "operators round every intermediate to float16; the kernel's accumulators are float32 but these "
        "per-element terms are not.",
        reproducer=lambda: _minimal([0.0] * 8 + [1.0], "float16").with_(
            dy=np.array([[-40000.0]] * 8 + [[40000.0]], dtype=np.float16), gamma=np.array([1e-3], dtype=np.float32)
        ),
        releases=_PROBED_IN_EVERY_RELEASE,
    ),
    KnownDeviation(
        id="onednn-subnormal-eps-flushed",
        summary="oneDNN float32: a subnormal eps is flushed to zero, so a zero-variance channel gets NaN gradients",
        quantities=frozenset({"dx", "dgamma"}),
        conditions="float32 through oneDNN; batch statistics; 0 < eps < 2^-126 (float32 subnormal); a channel with "
        "a single value (M = 1), whose variance is exactly 0",
        model=("the kernel form with the backward's invstd = 1/sqrt(var + 0) = inf: dx and dgamma NaN (M = 1)"),
        predict=models.onednn_subnormal_eps_flushed,
        evidence="x=[1.0] (M=1): eps=1e-39 and 1.4e-45 give dx=dgamma=NaN while y=beta; eps=1.2e-38 (normal) "
        "gives the finite oracle values; float64 with the same eps matches the oracle. The backward computes "
        "1/sqrt(0 + eps) with eps flushed to 0.",
        reproducer=lambda: _minimal([1.0], "float32", eps=1e-39),
        releases=_PROBED_WITH_ONEDNN,
    ),
    KnownDeviation(
        id="float16-normalised-value-overflow",
        summary="float16 data: xhat = (x - mean) * invstd is rounded to float16 and overflows, though y fits",
        quantities=frozenset({"y"}),
        conditions="float16 data (native kernel); some element with |(x - mean) * invstd| >= 65520, or its "
        "product with gamma, so that the float16 intermediate is inf: y = g * xhat + beta comes out +-inf even "
        "where |y| < 65504 (a small gamma, or a beta that brings it back); reached with a small moving_var "
        "(use_global_stats) or eps = 0. The backward never forms xhat (batch_norm.cc: dotp * invstd), so the "
        "gradients are right",
        model=(
            "y = half(half(half(half(x - mean) invstd) g) + beta) emulated in float16, +-inf (NaN where g = 0) "
            "where half(x - mean) invstd or its product with g overflows; every other element is the oracle's"
        ),
        predict=models.float16_normalised_value_overflow,
        evidence="Found by `bnprops fuzz --time 600` on gluon-hybrid and npx: y = 15792.0 expected, inf returned. "
        "Probe (sym, nd, npx alike): use_global_stats, eps=0, moving_var=1e-4, gamma=0.1, x=[1000, -1000, 500, "
        "-500]: y = [inf, -inf, 5000, -5000] where the oracle has [10000.25, -9999.75, 5000.1, -4999.9] (xhat of "
        "1e5 overflows; 5e4 does not). The product with gamma too: moving_var=1e-4, x=300, gamma=4, "
        "beta=-100000: y = inf where the exact y is 20000 (xhat = 30000 fits, 4 xhat does not).",
        reproducer=lambda: _minimal([1000.0, -1000.0, 500.0, -500.0], "float16", use_global_stats=True, eps=0.0).with_(
            moving_var=np.array([1e-4], dtype=np.float32), gamma=np.array([0.1], dtype=np.float32)
        ),
        releases=_PROBED_IN_EVERY_RELEASE,
    ),
    KnownDeviation(
        id="sequential-sum-drift",
        summary="The CPU kernels sum each channel element after element in AccReal: on offset or constant "
        "channels at large M the roundings lean one way and the mean drifts beyond what random rounding allows",
        quantities=frozenset({"y", "dx", "dgamma", "dbeta", "mean", "invstd", "moving_mean", "moving_var"}),
        conditions="both CPU kernels (on float32 the oneDNN backend's mean is bit for bit the sequential float "
        "sum too); a channel whose sequential AccReal sum of x or (x - mean)^2 (batch statistics), of dy or of "
        "(x - mean) dy is off the exact sum by more than lambda u sqrt(sum_k S_k^2) (the probabilistic bound), "
        "and the quantities downstream of that sum; only accuracy findings (beyond the probabilistic bound, "
        "within the deterministic one)",
        model=(
            "no value model: which way and how far a sequential sum drifts depends on every rounding, and "
            "predicting it means emulating the kernel's order, which the oneDNN backend does not promise. The "
            "model is the oracle within the deterministic bound, in the channels whose sums drift and the "
            "quantities downstream of those sums (accuracy findings there, never value mismatches)"
        ),
        predict=models.sequential_sum_drift,
        evidence="Found by test_reductions_the_size_of_real_layers_match_the_oracle: float16[100000, 1], a "
        "constant channel (regime constant): y -0.152099609375 where the oracle has -0.15432801842689514, "
        "|error| 2.2e-3 beyond the probabilistic bound 5.5e-4, within the deterministic 2.1e-2; dgamma -1041.7 "
        "against 0. The sequential float32 sum of 10^5 copies of one float16 value rounds the same way within "
        "each binade (np.cumsum, which is sequential, reproduces it). The same class of bug was fixed in "
        "PyTorch (PR #13431) and TensorFlow XLA (PR #25115) by pairwise/Welford accumulation. float32[10000, 2] "
        "and [100, 8, 10, 10] constant 1.1597745547961047: moving_mean (momentum 0) is 1.1598319 on both "
        "backends, exactly np.cumsum(x, dtype=float32)[-1] / M. bnprops tightness: ordinary float32 data at "
        "M ~ 10^6 (e.g. float32[24890, 1, 8, 8]): moving_var, y and dx 1.1-2x beyond the probabilistic bound; "
        "the variance MXNet recovers from invstd is the sequential float32 sum of (x - mean)^2, 1.04e-3 too "
        "low (a pairwise float32 sum is right): the small squares are lost whole once the partial sum is large.",
        reproducer=lambda: _minimal([0.3] * 100_000, "float16", eps=1e-3),
        upstream="none found for MXNet; PyTorch PR #13431, TensorFlow XLA PR #25115 fixed the same class",
        releases=_PROBED_IN_EVERY_RELEASE,
    ),
    KnownDeviation(
        id="recovered-variance-negative",
        summary="A zero-variance channel's moving variance can come out negative: the backward recovers the "
        "batch variance as 1/invstd^2 - eps, which rounds to a few ulps of eps either side of 0",
        quantities=frozenset({"moving_var"}),
        conditions="batch statistics; a channel whose variance is within the rounding of 1/invstd^2 - eps of 0 "
        "(one value per channel, a constant channel); momentum * old moving_var no larger than that rounding "
        "(momentum 0, or a prior of 0), or below eps's rounding to the data type (float16: DType(eps) in the "
        "forward, the double eps subtracted in the backward); every dtype, entry point and CPU kernel; only "
        "the invariant (the value stays within the error bound)",
        model=(
            "the oracle's moving_var within its deterministic bound, which may be below 0 in the channels it "
            "names: the invariant 'never negative' is what it breaks there, and only there"
        ),
        predict=models.recovered_variance_negative,
        evidence="Found by the moving-variance invariant (bnprops/judging/invariants.py) in pytest -m property: "
        "float64 "
        "x=[0.65...] (M=1), eps=1e-3, momentum=0: moving_var -2.168404344971009e-19 (= 1/(invstd*invstd) - 1e-3 "
        "in double); float32 and float16 with eps=1.4e-45: -1.401298464324817e-45. A channel that stays "
        "constant (a dead ReLU) drifts to such a value under any momentum. float16[7, 1], tiny spread, "
        "eps=3.1622776601683795, momentum 0: -1.68e-4 = half(eps) - eps. batch_norm.cc: "
        "INVSTD_TO_VARIANCE(invstd, eps) = 1.0/(invstd*invstd) - eps, no clamp at 0.",
        reproducer=lambda: _minimal([0.6508470327725044], "float64", eps=1e-3, momentum=0.0),
        releases=_PROBED_IN_EVERY_RELEASE,
    ),
    KnownDeviation(
        id="onednn-fix-gamma-add-wipes-dgamma",
        summary="oneDNN, fix_gamma and grad_req='add' for gamma: the accumulated gamma gradient is overwritten with 0",
        quantities=frozenset({"dgamma"}),
        conditions="float32 through oneDNN; fix_gamma=True; gamma's grad_req is 'add'; some channel's gradient "
        "buffer holds a non-zero value before the call (training or inference alike). gluon cannot reach it: "
        "with scale=False gamma takes no gradient.",
        model=("dgamma = 0 exactly in every channel, whatever the prior held"),
        predict=models.onednn_fix_gamma_add_wipes_dgamma,
        evidence="sym, x (4, 3) float32, gamma buffer pre-filled with 7: oneDNN returns dgamma=[0, 0, 0], the native "
        "kernel (MXNET_MKLDNN_ENABLED=0) and float64 return [7, 7, 7], which is prior + 0 as 'add' requires. "
        "mkldnn_batch_norm-inl.h writes zeros into the gamma gradient under fix_gamma without looking at req.",
        reproducer=lambda: _minimal([1.0, 2.0, 4.0], "float32").with_(
            fix_gamma=True, grad_req=("write", "add", "write"), prior_dgamma=np.array([7.0], dtype=np.float32)
        ),
        upstream="the MKLDNN fix_gamma/grad_req='add' problem noted in MXNet's sources and issues",
        releases=_PROBED_WITH_ONEDNN,
    ),
    KnownDeviation(
        id="sym-inference-backward-trains",
        summary="Executor backward after forward(is_train=False) runs the training formula for dx",
        quantities=frozenset({"dx", "moving_mean", "moving_var"}),
        conditions="mx.sym executor; forward(is_train=False) then backward(); use_global_stats=False; any kernel "
        "and dtype. dx comes out as g invstd (dy - mean(dy) - xhat mean(dy xhat)) with the moving statistics "
        "(see sym_inference_dx) instead of g invstd dy: certain where data takes a gradient and that formula "
        "differs from the oracle beyond the bound (or in its NaN pattern). The backward also blends the moving "
        "statistics with themselves, m s + (1 - m) s, which may move them by a few ulps (may fail). y, dgamma "
        "and dbeta are right.",
        model=(
            "dx = sym_inference_dx, the training formula on the moving statistics (plus the prior), within the "
            "training formula's error bound; moving_mean and moving_var = their old values within a few ulps "
            "(recovery_reach)"
        ),
        predict=models.sym_inference_backward_trains,
        evidence="x (5, 3), moving_mean [.5, -.5, 1], moving_var [2, .5, 1.5]: dx is 1.27 off the oracle in float32 "
        "(oneDNN and native), float64 and float16, and within 2e-7 (float64: 1e-16) of sym_inference_dx; "
        "a float64 moving_var 0.18624842644487116 came back as 0.18624842644487113. "
        "The executor's Backward always runs with is_train=True; the operator's backward then takes the training "
        "branch with the saved (moving) statistics. Executor.forward documents is_train=False as evaluation "
        "'without a backward call following', but nothing stops or warns the caller. nd/npx/gluon with "
        "backward(train_mode=False) get it right; with backward() (train_mode=True) they do the same (#9580).",
        reproducer=lambda: _minimal([1.0, 2.0, 4.0, -3.0], "float64", is_train=False),
        entries=frozenset({"sym"}),
        upstream="apache/incubator-mxnet#9580 (the autograd form of the same mix-up)",
        releases=_PROBED_IN_EVERY_RELEASE,
    ),
    KnownDeviation(
        id="empty-batch-nan",
        summary="An empty batch (numpy shape semantics) gives dgamma = NaN instead of the empty sum 0, and turns "
        "the moving statistics into NaN instead of leaving them alone",
        quantities=frozenset({"dgamma", "moving_mean", "moving_var"}),
        conditions="x with no elements (a zero-length axis other than the channel axis), which only the numpy "
        "interface's shape semantics accept (npx; sym/nd/gluon reject it: in legacy shapes 0 means unknown); "
        "batch statistics; dgamma where gamma is learnable and takes a gradient; either kernel, every dtype.",
        model=("dgamma (learnable gamma), moving_mean and moving_var all NaN"),
        predict=models.empty_batch_nan,
        evidence="npx.batch_norm on x of shape (0, 3) under np_shape: y and dx are empty, dbeta = [0 0 0] (the "
        "empty sum), dgamma = [nan nan nan] on oneDNN and native, float16/32/64; with fix_gamma dgamma is 0. "
        "dgamma = sum(dy * xhat) over no elements is 0 whatever xhat is. The moving statistics become NaN (the "
        "update formula with a batch mean of 0/0); bnprops's contract (bnprops/judging/invariants.py) is that an "
        "empty batch leaves them as they were, or the call is rejected.",
        reproducer=lambda: empty_batch("float32", fix_gamma=False),
        entries=frozenset({"npx"}),
        releases=_PROBED_WITH_NPX,
    ),
    KnownDeviation(
        id="add-request-ignored",
        summary="Before MXNet 1.7, a gradient requested with grad_req='add' is not accumulated: the buffer keeps "
        "its prior and this call's gradient is lost (dx, dgamma and dbeta alike)",
        quantities=frozenset({"dx", "dgamma", "dbeta"}),
        conditions="MXNet < 1.7.0 (probed: 1.5.1, 1.6.0); grad_req 'add' for data, gamma or beta; every entry point "
        "and dtype on the native kernel (the 1.5/1.6 'mxnet' wheels have no oneDNN); training or inference",
        model="each gradient requested with 'add' = its prior, bit for bit (the backward neither adds to the "
        "buffer nor writes it); the gradients requested with 'write' are right",
        predict=_add_request_ignored,
        evidence="mxnet 1.6.0 and 1.5.1, nd under autograd, x=[1, 2, 4, -3] float32, dy=linspace(-1, 1)+0.5, "
        "priors 5 (dx) and 7 (dgamma, dbeta): with beta 'add', dbeta = [7] where 7 + sum(dy) = 9 is right; "
        "gamma 'add': dgamma = [7]; data 'add': dx = [5, 5, 5, 5]; float16/32/64 alike. 1.7.0 and later give "
        "9, 5.69 and 5 + dx. Not 'dbeta = the write value': the buffer is not touched at all. Upstream: "
        "issue #18499 says the same ('the gradient of gamma and beta are not assigned to any value').",
        # dy's ramp sums to 0: shifted, so that this call's dbeta (sum(dy) = 2) shows beside the prior.
        reproducer=lambda: _minimal([1.0, 2.0, 4.0, -3.0], "float32").with_(
            dy=np.array([[-0.5], [0.1666667], [0.8333333], [1.5]], dtype=np.float32),
            grad_req=("write", "write", "add"),
            prior_dbeta=np.array([7.0], dtype=np.float32),
        ),
        upstream="apache/mxnet#18499 (the bug), fixed by apache/mxnet#18500 on master and its backports "
        "#18517 (v1.7.x, in 1.7.0), #18518 (v1.x) and #18714 (v1.6.x, after 1.6.0: no release on PyPI has it)",
        releases=mxversion.Releases(
            fixed="1.7.0",
            probed=(("1.5.1", True), ("1.6.0", True), ("1.7.0", False), ("1.8.0", False), ("1.9.1", False)),
            why="apache/mxnet#18499, fixed by #18500 (backport #18517 in 1.7.0)",
        ),
    ),
)


@dataclasses.dataclass(frozen=True)
class InputDeviation:
    """A way MXNet departs from its documented contract on input a Case cannot describe (bnprops.mx.contract)."""

    id: str
    summary: str
    conditions: str
    #: Does it explain this observation (an Observation from bnprops.mx.contract)?
    applies: Callable[[str, str, str, int], bool]
    #: What MXNet does under it, in words; ``outcomes`` is its checked form.
    model: str
    #: The outcomes (bnprops.mx.contract.Observation.outcome) it predicts for a parameter length.
    outcomes: Callable[[int], frozenset[str]]
    evidence: str
    #: A standalone script that shows it (run it in a throwaway process: it may corrupt its heap).
    reproducer: str


INPUT_DEVIATIONS: tuple[InputDeviation, ...] = (
    InputDeviation(
        id="wrong-length-parameters-accepted",
        summary="gamma, beta and the moving statistics of the wrong length are accepted without an error",
        conditions="every entry point (sym via bind() with the user's arrays, nd, npx, gluon via in_channels) on "
        "both CPU kernels; any of the four per-channel arrays longer or shorter than the channel count. Longer: "
        "the first C elements are used; shorter: elements past the end are read (and, for the moving "
        "statistics, written): undefined behaviour that can corrupt the heap.",
        applies=lambda entry, backend, parameter, length: length != CONTRACT_CHANNELS,
        model="the call is accepted, no error raised. No value model: a shorter array is read (and the moving "
        "statistics written) past its end, undefined behaviour that may also crash the process; a longer one is "
        "read in part, which the probes do not pin down either",
        outcomes=lambda length: frozenset({"accepted"} if length > CONTRACT_CHANNELS else {"accepted", "crashed"}),
        evidence="bnprops.mx.contract probes, x (4, 3) float32: all 5 entry points x 2 backends accept length 5 "
        "for each "
        "of the four arrays and length 2 for gamma (gluon: in_channels 5 and 2); with beta of length 2, y in the "
        "third channel was 7.49e+31 (memory past the array). The documentation says gamma and beta have shape "
        "(k,) for k channels, and FInferShape is where MXNet enforces shapes; it does not reject these.",
        reproducer="import mxnet as mx, numpy as np\n"
        "x = mx.nd.array(np.random.default_rng(0).standard_normal((4, 3)))\n"
        "gamma, beta = mx.nd.ones(5), mx.nd.zeros(5)  # 3 channels, length 5: no error\n"
        "print(mx.nd.BatchNorm(x, gamma, beta, mx.nd.zeros(3), mx.nd.ones(3), fix_gamma=False))",
    ),
)


@dataclasses.dataclass(frozen=True)
class NetworkDeviation:
    """A way MXNet fails with BatchNorm inside a network (judging.in_network): the chains it applies to,
    and what it does there (its model: a finding of ``kind`` whose message holds ``signature``)."""

    id: str
    summary: str
    kind: str  # one of bnprops.judging.in_network.FINDING_KINDS
    #: A substring of the finding's message that identifies it (MXNet's own words).
    signature: str
    conditions: str
    applies: Callable[[Chain, str], bool]
    evidence: str
    #: The shortest chain that shows it (bnprops.mx.producers.Chain; its snippet() is the standalone script).
    reproducer: Callable[[], Chain]
    upstream: str = "none found"
    #: The MXNet releases it holds in (probed by ``bnprops versions``).
    releases: mxversion.Releases = mxversion.EVERY_RELEASE

    def explains(self, *, kind: str, message: str, chain: Chain, backend: str, scoped: bool = True) -> bool:
        if scoped and not self.releases.holds(mxversion.running()):
            return False
        return kind == self.kind and self.signature in message and self.applies(chain, backend)

    def holds_in(self, version: str) -> bool:
        return self.releases.holds(version)


def _blocked_input_to_native_bn(chain: Chain, backend: str) -> bool:
    """A convolution whose channel count oneDNN blocks (a multiple of 8) feeds a BatchNorm that oneDNN does
    not run (only 4-D input with axis written as 1 takes its path), on the oneDNN backend, float32."""
    if backend != "onednn" or chain.dtype != "float32":
        return False
    blocked = any(dict(s)["op"] == "conv" and dict(s)["channels"] % 8 == 0 for s in chain.steps)
    onednn_bn = len(chain.bn_input_shape) == 4 and chain.axis == 1
    return blocked and not onednn_bn


def _op_after_reshaped_conv(chain: Chain, backend: str) -> bool:
    """gluon-hybrid on oneDNN, float32: a step (pooling, transpose, ...) after a reshape of a convolution's output."""
    if chain.api != "gluon-hybrid" or backend != "onednn" or chain.dtype != "float32":
        return False
    ops = [dict(s)["op"] for s in chain.steps]
    if "conv" not in ops:
        return False
    after_conv = ops[ops.index("conv") + 1 :]
    return "reshape" in after_conv and len(after_conv[after_conv.index("reshape") + 1 :]) > 0


NETWORK_DEVIATIONS: tuple[NetworkDeviation, ...] = (
    NetworkDeviation(
        id="onednn-blocked-input-native-batchnorm-backward-raises",
        summary="oneDNN: a convolution with 8k output channels feeding a BatchNorm that the native kernel runs "
        "cannot be trained: backward raises 'Check failed: !is_view'",
        kind="raises",
        signature="Check failed: !is_view",
        conditions="oneDNN, float32: a convolution with 8k output channels (a blocked layout) feeds BatchNorm whose "
        "input is not 4-D or whose axis is not written as 1 (so the native kernel runs it): backward raises; "
        "forward works",
        applies=_blocked_input_to_native_bn,
        evidence="Found by tests/test_networks.py's chains (issue 15): nd float32[2,1,3] -> conv1d(8, k1) -> "
        "BatchNorm(axis=1) raises MXNetError 'Check failed: !is_view' (src/ndarray/ndarray.cc:649) in backward, in "
        "nd, gluon, gluon-hybrid and sym alike; with 3 or 5 channels, with Conv2D(8) + BatchNorm(axis=1) (oneDNN's "
        "own BatchNorm) and with MXNET_MKLDNN_ENABLED=0 it trains. In gluon: nn.Conv1D(8, 3, in_channels=2) then "
        "nn.BatchNorm() raises on y.backward(). The native BatchNorm backward gets the convolution's blocked "
        "(oneDNN-layout) array as a view it cannot reorder in place.",
        reproducer=lambda: Chain(
            api="nd", input_shape=(2, 1, 3), steps=(step("conv", dims=1, channels=8, kernel=1, pad=0),), seed=0
        ),
        upstream="apache/mxnet#20858 (v1.8.x: MKLDNN BatchNorm with an even number of channels, backward raises "
        "'Check failed: !is_view'; #19150 was the forward's, on the v1.7.x branch after 1.7.0)",
        releases=mxversion.Releases(
            since="1.8.0",
            probed=(("1.7.0", False), ("1.8.0", True), ("1.9.1", True)),
            why="absent in 1.7.0 (DNNL v1.3.0), present from 1.8.0 (oneDNN v1.7.0): apache/mxnet#19150 reports the "
            "forward's form on the v1.7.x branch after the oneDNN upgrade, apache/mxnet#20858 the backward's in 1.8",
        ),
    ),
    NetworkDeviation(
        id="monitor-all-batchnorm-backward-raises",
        summary="Before MXNet 1.7, a sym executor monitored with monitor_all=True cannot run BatchNorm's backward: "
        "'Check failed: opnode.exec->in_array.size() == input_names.size() (8 vs. 1)'",
        kind="raises",
        signature="in_array.size() == input_names.size()",
        conditions="MXNet < 1.7.0 (probed: 1.5.1 and 1.6.0; 1.3/1.4 have no monitor_all); an Executor with "
        "set_monitor_callback(..., monitor_all=True), as bnprops's sym chains watch BatchNorm's backward node; "
        "any chain, even BatchNorm alone; every dtype; forward works, backward raises",
        applies=lambda chain, backend: chain.api == "sym",
        evidence="Found by `bnprops versions` (the fuzz job's sym chains) on 1.5.1 and 1.6.0: sym float16[2, 8, 1, 1] "
        "-> BatchNorm raises in Executor.backward at graph_executor.cc:1346 (1.5.1) / :1406 (1.6.0); standalone: "
        "simple_bind BatchNorm, set_monitor_callback(cb, monitor_all=True), forward(is_train=True), backward(ones) "
        "raises on 1.5.1 and 1.6.0, and monitors 33 arrays on 1.7.0. The backward node has 8 inputs, but "
        "_backward_BatchNorm registered no set_num_inputs (default 1) before 1.7; from 1.7 batch_norm.cc declares "
        "set_num_inputs(8).",
        reproducer=lambda: Chain(api="sym", input_shape=(2, 8, 1, 1), steps=(), seed=0),
        upstream="apache/mxnet#17049 ('Fix operators lying about their number of inputs': backward operators that "
        "advertise the wrong number of inputs break Monitor; it added the missing set_num_inputs), in 1.7.0",
        releases=mxversion.Releases(
            since="1.5.0",
            fixed="1.7.0",
            probed=(("1.5.1", True), ("1.6.0", True), ("1.7.0", False), ("1.8.0", False), ("1.9.1", False)),
            why="apache/mxnet#17049 (set_num_inputs for backward operators), first released in 1.7.0",
        ),
    ),
    NetworkDeviation(
        id="onednn-hybrid-pool-after-reshaped-conv-raises",
        summary="oneDNN, hybridized: pooling a reshaped convolution output raises 'dimensions are invalid' (the "
        "producer fails; BatchNorm is not involved)",
        kind="raises",
        signature="dimensions are invalid",
        conditions="gluon-hybrid (static_alloc, static_shape) on oneDNN, float32: a convolution, then a reshape of "
        "its output, then a pooling layer; the network raises in its forward with or without the BatchNorm after "
        "it; the same network imperatively (gluon, nd) trains",
        applies=_op_after_reshaped_conv,
        evidence="Found by tests/test_networks.py's chains (a fresh Hypothesis database): gluon-hybrid float32"
        "[2, 1, 3, 3, 3] -> conv3d(8, k1, pad 0) -> reshape((2, 8, 27)) -> maxpool(2) -> BatchNorm raises MXNetError "
        "'dimensions are invalid'; the same HybridSequential without the BatchNorm raises too, and without "
        "hybridize() both train. A producer's failure, recorded so that it is not reported as BatchNorm's.",
        reproducer=lambda: Chain(
            api="gluon-hybrid",
            input_shape=(2, 1, 3, 3, 3),
            steps=(
                step("conv", dims=3, channels=8, kernel=1, pad=0),
                step("reshape", shape=(2, 8, 27)),
                step("pool", kind="max", kernel=2),
            ),
            seed=0,
        ),
    ),
    NetworkDeviation(
        id="onednn-hybrid-reorder-after-reshaped-conv-raises",
        summary="oneDNN, hybridized: another op on a reshaped convolution output raises 'could not create a primitive "
        "descriptor for a reorder primitive' (the producer fails; BatchNorm is not involved)",
        kind="raises",
        signature="could not create a primitive descriptor for a reorder primitive",
        conditions="gluon-hybrid (static_alloc, static_shape) on oneDNN, float32: a convolution, then a reshape of "
        "its output, then another step (a transpose); the network raises in its forward with or without the "
        "BatchNorm after it; the same network imperatively (gluon, nd) trains",
        applies=_op_after_reshaped_conv,
        evidence="Found by tests/test_networks.py's chains (a fresh Hypothesis database): gluon-hybrid float32"
        "[2, 1, 3, 3, 3] -> conv3d(8, k1, pad 0) -> reshape((2, 8, 27)) -> transpose((0, 1, 2)) -> BatchNorm raises "
        "MXNetError 'could not create a primitive descriptor for a reorder primitive'; the same HybridSequential "
        "without the BatchNorm raises too, and without "
        "hybridize() both train. A producer's failure, recorded so that it is not reported as BatchNorm's.",
        reproducer=lambda: Chain(
            api="gluon-hybrid",
            input_shape=(2, 1, 3, 3, 3),
            steps=(
                step("conv", dims=3, channels=8, kernel=1, pad=0),
                step("reshape", shape=(2, 8, 27)),
                step("transpose", axes=(0, 1, 2)),
            ),
            seed=0,
        ),
    ),
)


@dataclasses.dataclass(frozen=True)
class SequenceDeviation:
    """MXNet departing from a contract over a sequence of calls (judging.state_model checks it)."""

    id: str
    summary: str
    conditions: str
    model: str
    evidence: str
    #: The shortest sequence of rules that shows it (judging.state_model prints it as a replay script).
    sequence: tuple[str, ...]
    #: What departs from the contract (a fuzz signature's quantity names it).
    affects: str = "moving statistics"
    upstream: str = "none found"


RETAINED_GRAPH_UPDATES_AGAIN = SequenceDeviation(
    id="retained-graph-backward-updates-again",
    summary="A second backward through the same recorded graph updates the moving statistics a second time",
    conditions="batch statistics (training, use_global_stats=False); a second backward of one forward: "
    "autograd backward(retain_graph=True) again (nd, npx, gluon, gluon-hybrid) or a second Executor.backward() "
    "(sym); both CPU kernels (oneDNN float32, native float16/32/64), with bnprops's NaiveEngine",
    model="moving = m * moving + (1 - m) * batch statistic of the recorded forward, once more per backward: "
    "the single-call oracle's update applied to the state before the second backward",
    evidence="x float32 (4, 2) (np.random.seed(0) randn), momentum 0.9, moving (0, 1): after the first backward "
    "moving_mean = [0.139, 0.0378], after the second [0.264, 0.0718] = 0.9 * 0.139 + 0.1 * [1.390, 0.378] "
    "(the batch mean); dgamma stays [0.164, 2.010] (written again). The operator's backward updates the "
    "moving statistics (batch_norm.cc), and each backward of a retained graph runs it again. Found by "
    "tests/test_training.py's state machines (issue 10) on nd, npx, gluon, gluon-hybrid and sym.",
    sequence=("train_step", "backward_again"),
)

FROZEN_LAYER_KEEPS_MOVING_STATS = SequenceDeviation(
    id="frozen-layer-keeps-moving-statistics",
    summary="A frozen BatchNorm (no gradient for data, gamma or beta) never updates its moving statistics in training",
    conditions="a training step (batch statistics, use_global_stats=False) of a layer whose data, gamma and beta all "
    "have grad_req 'null' (a first layer with frozen parameters; gluon BatchNorm(scale=False, center=False) on "
    "data that needs no gradient), under a learnable layer that makes the backward run; every entry point, both "
    "CPU kernels, every dtype",
    model="moving_mean and moving_var keep every bit of their values before the step (MXNet updates them in "
    "BatchNorm's backward, which autograd and the executor skip when no input of BatchNorm needs a gradient); "
    "y and the gradients of the layers around it are as the single-call oracle says",
    evidence="x float32 [[1, 2], [3, -1], [0.5, 0.25]], moving (0, 1), momentum 0.9, fix_gamma=False, every "
    "BatchNorm input 'null', the output multiplied by a learnable w = 1 and w's gradient taken: moving_mean stays "
    "[0, 0] and moving_var [1, 1] on nd, gluon and sym, oneDNN and native, float32 and float64 (the contract, "
    "one update per training step, gives [0.15, 0.0417] and [1.08, 0.946]); without the learnable layer nd and "
    "gluon raise 'There are no inputs in computation graph that require gradient' and the sym executor's "
    "backward does nothing. PyTorch updates running statistics in the forward, whatever requires_grad says, so "
    "a frozen layer there tracks its statistics. Found by the state machines of tests/test_training.py (issue 10).",
    sequence=("train_step",),  # on a layer frozen from the start (or after set_grad_req to 'null' three times)
    upstream="apache/mxnet#18673 (closed, label Bug: a BatchNorm-like layer with scale=False and center=False does "
    "not update its running statistics); 1.9.1 still shows it",
)

FROZEN_SYM_KEEPS_GAMMA = SequenceDeviation(
    id="frozen-sym-executor-keeps-gamma",
    summary="A sym executor with no gradient for BatchNorm's inputs does not write 1.0 into gamma under fix_gamma",
    conditions="mx.sym executor; fix_gamma=True; grad_req 'null' for data, gamma and beta (a frozen layer, or any "
    "executor bound with grad_req='null', as inference executors are); any forward (training or inference); both "
    "CPU kernels. nd, npx and gluon write the 1.0 in the same situation",
    model="gamma keeps every bit of its value (the forward does not write 1.0 into it); y, the moving statistics "
    "and the gradients around the layer are as the single-call oracle says (they use gamma = 1)",
    evidence="x float32 [[1], [3]], gamma 0.5, fix_gamma=True: bound with grad_req 'null' for data, gamma and beta "
    "(with or without a learnable layer after it), forward(is_train=True or False) leaves gamma 0.5 and gives "
    "y = [-0.9995, 0.9995] (training), the gamma = 1 result; bound with any one of them 'write', the same forward "
    "writes 1.0 into gamma (the spec's 'the forward also writes 1.0 into the gamma array'), as mx.nd.BatchNorm "
    "does with or without autograd.record. Found by the state machines of tests/test_training.py (issue 10): "
    "shortest sequence inference_step on a frozen sym layer.",
    sequence=("inference_step",),
    affects="gamma",
)

THREADED_ENGINE_STALE_MOVING_STATS = SequenceDeviation(
    id="threaded-engine-stale-moving-statistics",
    summary="Under MXNet's threaded engine, the moving statistics read right after a sym executor's backward can "
    "still hold their values from before the update",
    conditions="MXNET_ENGINE_TYPE a threaded engine (MXNet's default, ThreadedEnginePerDevice; bnprops runs "
    "NaiveEngine unless the user sets another, so its checks cannot see this); mx.sym executor; a training step "
    "(batch statistics); the moving statistics read (asnumpy) right after Executor.backward(); both CPU kernels. "
    "nd and gluon under autograd did not show it in the same probe",
    model="each read of the moving statistics returns either their values before the step (bit for bit) or the "
    "single-call oracle's update; after mx.nd.waitall() always the update. BatchNorm's backward writes the "
    "auxiliary states, but the engine does not count it as a write to those arrays, so asnumpy() does not "
    "wait for it",
    evidence="300 sym training steps (random shapes (1-5, 1-4, 3), momentum 0.9, moving (0, 1)), moving_mean read "
    "right after backward: 6 to 41 of 300 read [0, ...] (not updated) on oneDNN, 7 of 300 on the native kernel; "
    "with mx.nd.waitall() before the read, 0 of 300; under NaiveEngine 0 of 300. Probe: tests/test_training.py "
    "(test_the_threaded_engine_can_show_moving_statistics_before_their_update).",
    sequence=("train_step",),
    upstream="apache/mxnet#18610 (BatchNorm running variables not properly synchronized on CPU; closed as fixed "
    "for gluon); 1.9.1's sym executor still shows it",
)

SEQUENCE_DEVIATIONS = (
    RETAINED_GRAPH_UPDATES_AGAIN,
    FROZEN_LAYER_KEEPS_MOVING_STATS,
    FROZEN_SYM_KEEPS_GAMMA,
    THREADED_ENGINE_STALE_MOVING_STATS,
)

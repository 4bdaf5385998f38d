"""The semantics users mix up about MXNet's BatchNorm, as variants of an assumption that can be evaluated.

An ``Assumption`` is the set of semantics a user's numbers were computed under: which gamma, which eps,
which variance, which statistics, how the moving statistics update, what the head gradient is.  The
call's own semantics (what the oracle models) is ``base(call)``; each ``Variant`` changes one of them
the way users get it wrong (the forum thread bnprops grew from needs two: fix_gamma's default and
eps's).  ``evaluate`` computes every quantity under an assumption in float64, so that bnprops.commands.explanation
can search for the combination that reproduces a user's numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from bnprops.model.case import Case, Outputs

#: Head gradients of MXNet's regression outputs, per element: (prediction, label) -> d loss / d prediction,
#: before the division by the number of outputs per sample (LinearRegressionOutput's grad_scale / num_output).
LOSSES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "l2": lambda y, t: y - t,  # LinearRegressionOutput, and gluon's L2Loss (0.5 (y - t)^2, mean per sample)
    "l1": lambda y, t: np.where(y - t > 0, 1.0, -1.0),  # MAERegressionOutput (ties give -1, as MXNet's do)
    "logistic": lambda y, t: 1.0 / (1.0 + np.exp(-y)) - t,  # LogisticRegressionOutput
}
LOSS_NAMES = {
    "l2": "LinearRegressionOutput (dy = (y - target) / outputs per sample)",
    "l1": "MAERegressionOutput (dy = sign(y - target) / outputs per sample)",
    "logistic": "LogisticRegressionOutput (dy = (sigmoid(y) - target) / outputs per sample)",
}
GLUON = ("gluon", "gluon-hybrid")
#: The BatchNorm family members a call can be made through: plain BatchNorm (on ``devices`` devices, each
#: normalising its own slice), SyncBatchNorm (statistics of the global batch), BatchNormWithReLU, a graph
#: folded by optimize_for (inference on the moving statistics) and the ONNX export (fix_gamma dropped).
MEMBERS = ("batchnorm", "sync", "relu", "folded", "onnx")


def loss_gradient(loss: str, y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The head gradient MXNet's regression output hands BatchNorm: per element, over the outputs per sample."""
    per_sample = max(1, y.size // max(1, y.shape[0])) if y.ndim else 1
    with np.errstate(over="ignore", invalid="ignore"):
        result: np.ndarray = LOSSES[loss](y, target) / per_sample
    return result


@dataclasses.dataclass(frozen=True, eq=False)
class Call:
    """The call as the user made it: MXNet's case (gamma as initialised), entry point, head and what they read."""

    case: Case
    entry: str
    target: np.ndarray | None = None
    loss: str | None = None
    gamma_read_back: bool = False
    #: The family member the call went through (MEMBERS).
    member: str = "batchnorm"
    #: Data-parallel devices: the batch split along axis 0 into this many equal slices, one per device.
    devices: int = 1

    @property
    def batch(self) -> int:
        return int(self.case.x.shape[0]) if self.case.x.ndim else 1


@dataclasses.dataclass(frozen=True)
class Assumption:
    """The semantics a set of numbers was computed under (hashable: equal assumptions give equal numbers)."""

    fix_gamma: bool
    gamma: tuple[float, ...]  # the gamma the formula multiplies by when gamma is learnable
    gamma_after: str  # what the gamma array holds after the call: "one" (fix_gamma's write) or "initial"
    eps: float
    variance: str = "biased"  # the variance that normalises: "biased" (MXNet) or "unbiased"
    moving_variance: str = "biased"  # the batch variance the moving average takes
    batch_stats: bool = True  # normalise with the batch's statistics (training) or the moving ones
    dx_train: bool = True  # the backward differentiates through the statistics (its own train flag)
    momentum: str = "mxnet"  # "mxnet": m*moving + (1-m)*batch; "flipped": (1-m)*moving + m*batch
    update: str = "backward"  # when the moving statistics change: in the "backward" (MXNet) or the "forward"
    third_output: str = "invstd"  # output_mean_var's third output: "invstd" (MXNet) or "var"
    beta_used: bool = True
    head: float = 1.0  # the head gradient as a multiple of MXNet's
    devices: int = 1  # the statistics are each device's slice's (equal slices along axis 0); 1: the global batch's
    relu: bool = False  # y = relu(BatchNorm(x)), the head masked where BatchNorm's output is not > 0


def base(call: Call) -> Assumption:
    """The call's own semantics: what MXNet (and the oracle) compute, with the gamma the user sees."""
    case = call.case
    seen = np.ones(case.channels) if case.fix_gamma and call.gamma_read_back else case.gamma
    a = Assumption(
        fix_gamma=case.fix_gamma,
        gamma=tuple(float(g) for g in seen),
        gamma_after="one" if case.fix_gamma else "initial",
        eps=float(case.eps),
        batch_stats=case.uses_batch_stats,
        dx_train=case.uses_batch_stats,
    )
    if call.member == "batchnorm" and call.devices > 1:
        a = dataclasses.replace(a, devices=call.devices)  # each device's BatchNorm sees its own slice
    if call.member == "relu":
        a = dataclasses.replace(a, relu=True)
    if call.member in ("folded", "onnx"):
        a = dataclasses.replace(a, batch_stats=False, dx_train=False)  # inference graphs: the moving statistics
    if call.member == "onnx":
        # convert_batchnorm drops fix_gamma: the exported node multiplies by gamma as stored.
        a = dataclasses.replace(a, fix_gamma=False, gamma=_initial(call), gamma_after="initial")
    return a


def _bshape(case: Case, values: np.ndarray) -> np.ndarray:
    shape = [1] * case.x.ndim
    shape[case.channel_axis] = case.channels
    return np.asarray(values, dtype=np.float64).reshape(shape)


def device_slices(case: Case, devices: int) -> list[tuple[slice, ...]]:
    """The index of each device's slice of x: equal, consecutive slices along axis 0 (split_and_load's)."""
    n = int(case.x.shape[0]) if case.x.ndim else 0
    step = n // max(devices, 1) if devices > 1 else n
    return [(slice(d * step, (d + 1) * step),) for d in range(max(devices, 1))] if devices > 1 else [(slice(None),)]


def evaluate(call: Call, a: Assumption) -> Outputs:
    """Every quantity of the call computed in float64 under assumption ``a``.

    With ``a.devices`` > 1 each device's slice is normalised with its own statistics; dgamma and dbeta are the
    sum of the devices' partial gradients (what a Trainer applies), the rest of the per-channel quantities
    (moving statistics, mean, invstd) the first device's."""
    case = call.case
    x = case.x.astype(np.float64)
    red = case.reduce_axes
    gamma = np.asarray(a.gamma, dtype=np.float64)
    g = np.ones(case.channels) if a.fix_gamma else gamma
    beta = case.beta.astype(np.float64) if a.beta_used else np.zeros(case.channels)
    old_mean, old_var = case.moving_mean.astype(np.float64), case.moving_var.astype(np.float64)
    slices = device_slices(case, a.devices)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        xhat = np.empty_like(x)
        per_device = []
        for s in slices:
            xs = x[s]
            m = xs.size // max(case.channels, 1)
            batch_mean = xs.mean(axis=red) if m else np.full(case.channels, np.nan)
            centred = xs - _bshape(case, batch_mean)
            sq = (centred * centred).sum(axis=red)
            biased, unbiased = sq / m, sq / (m - 1)
            if a.batch_stats:
                mean, var = batch_mean, (unbiased if a.variance == "unbiased" else biased)
            else:
                mean, var = old_mean, old_var
            invstd = 1.0 / np.sqrt(var + a.eps)
            xhat[s] = (xs - _bshape(case, mean)) * _bshape(case, invstd)
            per_device.append((m, batch_mean, biased, unbiased, mean, var, invstd))
        pre = _bshape(case, g) * xhat + _bshape(case, beta)
        y = np.maximum(pre, 0.0) if a.relu else pre
        if call.target is not None and call.loss is not None:
            dy = a.head * loss_gradient(call.loss, y, call.target)
        else:
            dy = a.head * case.dy.astype(np.float64)
        if a.relu:
            dy = np.where(pre > 0, dy, 0.0)  # the ReLU's mask: 0 at the kink
        dbeta = dy.sum(axis=red)
        dot = (dy * xhat).sum(axis=red)
        dx = np.empty_like(x)
        for s, (m, *_, invstd) in zip(slices, per_device, strict=True):
            scale = _bshape(case, g * invstd)
            dys, xh = dy[s], xhat[s]
            # The training backward differentiates through the batch statistics; otherwise they are constants.
            if a.dx_train:
                means = _bshape(case, dys.sum(axis=red) / m), _bshape(case, (dys * xh).sum(axis=red) / m)
                dx[s] = scale * (dys - means[0] - xh * means[1])
            else:
                dx[s] = scale * dys
        m, batch_mean, biased, unbiased, mean, var, invstd = per_device[0]
        moving_mean, moving_var = old_mean, old_var
        if a.batch_stats and m > 0:
            mom = float(case.momentum)
            keep, take = (1.0 - mom, mom) if a.momentum == "flipped" else (mom, 1.0 - mom)
            batch_var = unbiased if a.moving_variance == "unbiased" else biased
            moving_mean, moving_var = keep * old_mean + take * batch_mean, keep * old_var + take * batch_var
    forward = a.update == "forward"
    out: Outputs = {
        "y": y,
        "dx": dx,
        "dgamma": np.zeros(case.channels) if a.fix_gamma else dot,
        "dbeta": dbeta,
        "moving_mean": moving_mean,
        "moving_var": moving_var,
        "gamma": np.ones(case.channels) if a.gamma_after == "one" else case.gamma.astype(np.float64),
        "forward_moving_mean": moving_mean if forward else old_mean,
        "forward_moving_var": moving_var if forward else old_var,
        "mean": np.asarray(mean, dtype=np.float64),
        "invstd": var if a.third_output == "var" else invstd,
    }
    return out


Apply = Callable[[Call, Assumption], Assumption | None]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One semantic difference: how a user's assumption departs from MXNet's, and the fix.

    ``apply`` returns the assumption with this difference, or None where it does not apply (or
    changes nothing).  Variants of one ``group`` exclude each other.  ``description`` and ``fix`` are
    format strings; ``text`` fills them in from the call and the final assumption.
    """

    name: str
    group: str
    description: str
    fix: str
    apply: Apply
    #: The fix for gluon's entry points, where it differs (gluon maps fix_gamma = not scale).
    gluon_fix: str | None = None

    def text(self, call: Call, a: Assumption) -> tuple[str, str]:
        """(description, fix) for this call, under the final assumption ``a`` of the combination."""
        case = call.case
        fields = {
            "call_eps": f"{case.eps:g}",
            "eps": f"{a.eps:g}",
            "gamma": _values(a.gamma),
            "initial": _values(case.gamma),
            "head": f"{a.head:g}",
            "batch": call.batch,
            "read": (
                ", the value MXNet's forward wrote into the gamma array, which you read back"
                if case.fix_gamma and call.gamma_read_back and a.gamma == (1.0,) * case.channels
                else ""
            ),
            "initial_beta": _values(case.beta),
            "devices": call.devices,
            "slice": call.batch // max(call.devices, 1),
            "moving": f"moving_mean = {_values(case.moving_mean)}, moving_var = {_values(case.moving_var)}",
            "dx_rule": (
                "differentiates through the batch statistics (the training formula)"
                if a.dx_train
                else "treats the statistics as constants (dx = gamma * invstd * dy)"
            ),
        }
        fix = self.gluon_fix if call.entry in GLUON and self.gluon_fix else self.fix
        return self.description.format(**fields), fix.format(**fields)


def _values(values: tuple[float, ...] | np.ndarray) -> str:
    items = [f"{float(v):g}" for v in values]
    return items[0] if len(items) == 1 else "[" + ", ".join(items) + "]"


def _when(test: Callable[[Call, Assumption], bool], change: Callable[[Call, Assumption], Assumption]) -> Apply:
    """An ``apply`` that changes the assumption where ``test`` holds and the change is a change."""

    def apply(call: Call, a: Assumption) -> Assumption | None:
        if not test(call, a):
            return None
        changed = change(call, a)
        return None if changed == a else changed

    return apply


def _set(**changes: object) -> Callable[[Call, Assumption], Assumption]:
    return lambda call, a: dataclasses.replace(a, **changes)  # type: ignore[arg-type]


def _eps(value: float, label: str) -> Variant:
    return Variant(
        f"eps-{value:g}",
        "eps",
        f"your formula uses eps = {{eps}} ({label}); this call's eps is {{call_eps}}",
        "use eps = {call_eps} in your formula (np.sqrt(var + {call_eps})), or pass eps={eps} to BatchNorm",
        _when(lambda c, a: a.eps != value, _set(eps=value)),
        gluon_fix="use eps = {call_eps} in your formula, or construct nn.BatchNorm(epsilon={eps})",
    )


def _head(name: str, factor: Callable[[Call], float], what: str) -> Variant:
    return Variant(
        name,
        "head",
        f"your head gradient is {{head}} times MXNet's ({what})",
        "compute your gradient from the head MXNet uses (LinearRegressionOutput: dy = y - target per element, "
        "not averaged over the batch), or scale your loss to match",
        # Only a head that came from a loss can be scaled differently: a dy the user gave is theirs as it is.
        _when(
            lambda c, a: c.target is not None and factor(c) != 1.0, lambda c, a: dataclasses.replace(a, head=factor(c))
        ),
    )


def _ones(call: Call) -> tuple[float, ...]:
    return (1.0,) * call.case.channels


def _initial(call: Call) -> tuple[float, ...]:
    return tuple(float(g) for g in call.case.gamma)


#: The family's mix-ups: statistics per device or of the global batch, the fused ReLU's mask, a folded graph's
#: moving statistics, the ONNX export's gamma.
FAMILY_VARIANTS: tuple[Variant, ...] = (
    Variant(
        "global-statistics",
        "devices",
        "your numbers normalise with the statistics of the whole batch of {batch}; plain BatchNorm on {devices} "
        "devices (data-parallel training) normalises each device's slice of {slice} with that slice's own "
        "statistics, and the trainer sums the devices' dgamma and dbeta",
        "use SyncBatchNorm (mx.gluon.contrib.nn.SyncBatchNorm(num_devices={devices})) to normalise with the "
        "global batch, or compute your statistics per device slice of {slice}",
        _when(lambda c, a: c.member == "batchnorm" and a.devices > 1, _set(devices=1)),
    ),
    Variant(
        "per-device-statistics",
        "devices",
        "your numbers normalise each device's slice of {slice} with its own statistics (one device's batch); "
        "SyncBatchNorm over {devices} devices normalises every slice with the statistics of the global batch "
        "of {batch}",
        "compute the mean and variance over every device's slice together (the global batch), as SyncBatchNorm does",
        _when(
            lambda c, a: c.member == "sync" and c.devices > 1 and a.batch_stats and a.devices == 1,
            lambda c, a: dataclasses.replace(a, devices=c.devices),
        ),
    ),
    Variant(
        "relu-mask-dropped",
        "relu",
        "your numbers are BatchNorm's without the ReLU; BatchNormWithReLU outputs relu(BatchNorm(x)) and its "
        "gradients take the head only where y > 0 (the ReLU's mask, 0 at the kink)",
        "mask your head gradient with (y > 0) before BatchNorm's backward formula and clip y at 0, or compare "
        "with BatchNorm followed by a separate relu",
        _when(lambda c, a: a.relu, _set(relu=False)),
    ),
    Variant(
        "relu-mask-applied",
        "relu",
        "your numbers are BatchNormWithReLU's (y clipped at 0, the head masked where y <= 0); this call is plain "
        "BatchNorm, with no ReLU",
        "drop the ReLU and its mask from your formula, or call BatchNormWithReLU (mx.nd.contrib.BatchNormWithReLU, "
        "gluon.nn.BatchNormReLU) if that is what you meant",
        _when(lambda c, a: c.member == "batchnorm" and not a.relu, _set(relu=True)),
    ),
    Variant(
        "batch-statistics-after-fold",
        "statistics",
        "your numbers normalise with the batch's statistics; optimize_for folded this BatchNorm into the "
        "preceding convolution's weights with its moving statistics ({moving}): the folded graph is inference",
        "compare the folded graph with the unfolded one in inference (is_train=False, or outside "
        "autograd.record), which uses the moving statistics too; do not fold a graph you train",
        _when(lambda c, a: c.member == "folded" and not a.batch_stats, _set(batch_stats=True, dx_train=True)),
    ),
    Variant(
        "onnx-fix-gamma-kept",
        "gamma",
        "your numbers hold gamma at 1, as MXNet's fix_gamma=True does; the ONNX export drops fix_gamma, and the "
        "exported BatchNormalization multiplies by gamma as stored ({initial}): known deviation onnx-fix-gamma-dropped",
        "set the stored gamma to 1 before exporting (what fix_gamma=True computes with), or take gamma = {initial}",
        _when(
            lambda c, a: c.member == "onnx" and c.case.fix_gamma and not a.fix_gamma,
            lambda c, a: dataclasses.replace(a, fix_gamma=True, gamma=_ones(c), gamma_after="one"),
        ),
    ),
)

#: The catalogue, in the order variants are applied (fix_gamma before the gamma value it uses).
VARIANTS: tuple[Variant, ...] = (
    Variant(
        "fix-gamma-default",
        "fix_gamma",
        "fix_gamma defaults to True: MXNet holds gamma at 1, its gradient is exactly 0 (and the forward writes 1.0 "
        "into the gamma array); your number treats gamma as learnable (fix_gamma=False) at gamma = {gamma}{read}",
        "pass fix_gamma=False to BatchNorm to learn gamma (then nothing overwrites gamma: initialise it yourself), "
        "or take dgamma = 0 and y = xhat + beta in your formula",
        _when(lambda c, a: c.case.fix_gamma, _set(fix_gamma=False)),
        gluon_fix="construct nn.BatchNorm(scale=True) (gluon's fix_gamma = not scale), or take dgamma = 0",
    ),
    Variant(
        "gamma-treated-as-fixed",
        "fix_gamma",
        "your number treats gamma as fixed at 1 (fix_gamma=True); this call learns gamma (fix_gamma=False), "
        "gamma = {initial}",
        "use y = gamma * xhat + beta and dgamma = sum(dy * xhat) with gamma = {initial}, or pass fix_gamma=True",
        _when(lambda c, a: not c.case.fix_gamma, _set(fix_gamma=True)),
        gluon_fix="use y = gamma * xhat + beta with gamma = {initial} (scale=True learns it), or pass scale=False",
    ),
    Variant(
        "gamma-written-by-forward",
        "gamma",
        "your formula uses gamma = 1, the value a fix_gamma=True forward writes into the gamma array; in this "
        "call gamma is {initial} (simple_bind zero-initialises it, and with fix_gamma=False nothing overwrites it)",
        "initialise gamma to 1 (e.g. exe.arg_dict['..._gamma'][:] = 1, or mx.init.One()), or use gamma = "
        "{initial} in your formula",
        # (an ONNX model's gamma is read from the file, written by no forward: onnx-fix-gamma-kept says it)
        _when(lambda c, a: not a.fix_gamma and c.member != "onnx", lambda c, a: dataclasses.replace(a, gamma=_ones(c))),
    ),
    Variant(
        "gamma-as-initialised",
        "gamma",
        "your numbers use gamma as initialised ({initial}); under fix_gamma=True MXNet uses 1 and writes 1.0 into "
        "the gamma array during the forward",
        "take gamma = 1 (what the forward writes), or pass fix_gamma=False so that gamma keeps its value",
        _when(
            lambda c, a: c.case.fix_gamma,
            lambda c, a: dataclasses.replace(a, gamma=_initial(c), gamma_after="initial"),
        ),
    ),
    _eps(1e-3, "the operator's default"),
    _eps(1e-5, "gluon's default, and PyTorch's"),
    _eps(0.0, "none at all"),
    Variant(
        "unbiased-variance",
        "variance",
        "your variance is the unbiased one (divided by M - 1); MXNet normalises with the biased one (divided by M)",
        "use np.var(x, ddof=0) (numpy's default), not ddof=1 / torch.var's default",
        _when(lambda c, a: a.batch_stats, _set(variance="unbiased", moving_variance="unbiased")),
    ),
    Variant(
        "unbiased-moving-variance",
        "variance",
        "your moving variance averages the unbiased batch variance (PyTorch's convention); MXNet averages the "
        "biased one",
        "update moving_var with the biased batch variance: m * moving_var + (1 - m) * np.var(x)",
        _when(lambda c, a: a.batch_stats, _set(moving_variance="unbiased")),
    ),
    Variant(
        "training-statistics",
        "statistics",
        "your numbers normalise with the batch's statistics; this call normalises with the moving ones "
        "(inference, or use_global_stats=True)",
        "use moving_mean and moving_var in your formula (dx = gamma * dy / sqrt(moving_var + eps)), or run the "
        "forward in training mode without use_global_stats",
        # (a folded graph's moving statistics are the fold's own story: batch-statistics-after-fold)
        _when(lambda c, a: not a.batch_stats and c.member != "folded", _set(batch_stats=True, dx_train=True)),
    ),
    Variant(
        "inference-statistics",
        "statistics",
        "your numbers normalise with the moving statistics; this call trains and normalises with the batch's "
        "(and updates the moving ones)",
        "use the batch mean and biased variance in your formula, or call in inference mode (is_train=False / "
        "outside autograd.record) or with use_global_stats=True",
        _when(lambda c, a: a.batch_stats, _set(batch_stats=False, dx_train=False)),
    ),
    Variant(
        "backward-train-flag",
        "backward",
        "your dx {dx_rule}; the backward's own train flag decides this, apart from the forward's statistics",
        "differentiate as the backward is told to: backward(train_mode=...) / the executor's forward(is_train=...)",
        lambda c, a: dataclasses.replace(a, dx_train=not a.dx_train),
    ),
    Variant(
        "momentum-flipped",
        "momentum",
        "your moving average weights the batch by momentum (PyTorch's convention); MXNet's is "
        "moving = momentum * moving + (1 - momentum) * batch",
        "use moving = momentum * moving + (1 - momentum) * batch, or pass momentum = 1 - yours",
        _when(lambda c, a: a.batch_stats and c.case.momentum != 0.5, _set(momentum="flipped")),
    ),
    Variant(
        "update-in-forward",
        "update",
        "you expect the moving statistics to change in the forward; MXNet updates them in the backward",
        "read the moving statistics after backward(); a forward alone (or in inference) leaves them as they were",
        _when(lambda c, a: a.batch_stats, _set(update="forward")),
    ),
    Variant(
        "third-output-variance",
        "third",
        "you read output_mean_var's third output as the variance; it is the inverse standard deviation "
        "1/sqrt(var + eps)",
        "take var = 1 / invstd**2 - eps from the third output",
        _when(lambda c, a: c.case.output_mean_var, _set(third_output="var")),
    ),
    Variant(
        "beta-ignored",
        "beta",
        "your numbers leave beta out; MXNet adds beta = {initial_beta} (gluon's center=False stops beta learning, "
        "not its use)",
        "add beta to y in your formula (y = gamma * xhat + beta)",
        _when(lambda c, a: bool(np.any(c.case.beta != 0)), _set(beta_used=False)),
    ),
    *FAMILY_VARIANTS,
    _head("head-doubled", lambda c: 2.0, "the gradient of sum((y - t)^2) rather than LinearRegressionOutput's"),
    _head("head-halved", lambda c: 0.5, "half of it: a loss with a factor 0.5 too many"),
    _head("head-over-batch", lambda c: 1.0 / c.batch, "averaged over the batch of {batch}"),
    _head("head-doubled-over-batch", lambda c: 2.0 / c.batch, "the gradient of mean((y - t)^2) over {batch}"),
)

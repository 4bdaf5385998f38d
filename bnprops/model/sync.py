"""SyncBatchNorm's model: the batch split over devices, its float64 oracle and the one-pass error model's terms.

MXNet's SyncBatchNorm splits a batch along axis 0 over ndev devices; each sums x and x^2 over its own slice in
float32, the merge averages the devices' E_d[x] and E_d[x^2], and var = E[x^2] - E[x]^2 (one pass). The oracle
is plain BatchNorm on the whole batch, each device's dgamma and dbeta the sums of its terms over the device's
slice. The error model is the plain one with the mean's and the variance's errors of that one-pass merge
(``sync_propagated``); ``kernel_outputs`` is MXNet's formula in float64 from any statistics (the unequal-batch
deviation's model). The derivation, term by term, is on the SyncBatchNorm page of the documentation.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.model import error_model, oracle
from bnprops.model.case import Case, Outputs
from bnprops.model.error_model import SAFETY, Exactness, Propagated, sum_factor, unit_roundoff
from bnprops.model.evaluation import Evaluation
from bnprops.model.exactness import rows
from bnprops.model.params import parsed

#: The per-device gradient buffers a runner returns beside the Outputs' quantities: shape (ndev, C).
PARTIALS = {"dgamma": "dgamma_partials", "dbeta": "dbeta_partials"}
U32 = unit_roundoff("float32")


def device_split(case: Case) -> tuple[int, ...]:
    """The rows of x (axis 0) each device gets, in rank order: the case's own split, else two equal halves (one
    device for an odd batch)."""
    if case.devices:
        return case.devices
    n = case.shape[0]
    return (n // 2, n // 2) if n >= 2 and n % 2 == 0 else (n,)


def with_split(case: Case, split: tuple[int, ...]) -> Case:
    """``case`` split over devices as ``split`` (replacing any split it had); the rows must add up to x's batch."""
    return case.with_(devices=tuple(split))


def equal_split(split: tuple[int, ...]) -> bool:
    return len(set(split)) == 1


def offsets(split: tuple[int, ...]) -> list[slice]:
    """Each device's rows of axis 0."""
    ends = np.cumsum((0, *tuple(split)))
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(ends)]


def applied(case: Case) -> Case:
    """The case with eps as SyncBatchNormParam holds it: a C++ float (BatchNorm's is a double), so that the oracle
    and MXNet use one value."""
    eps = parsed(case.eps, "float32")
    return case if eps == case.eps else case.with_(eps=eps)


def _slice_sums(case: Case, split: tuple[int, ...], values: np.ndarray) -> np.ndarray:
    """Per device (rows) and channel (columns): the sum of ``values`` (x's shape) over the device's slice."""
    red = case.reduce_axes
    return np.stack([values[s].sum(axis=red) for s in offsets(split)]) if values.size else np.zeros((0, case.channels))


def partials(case: Case, stats: tuple[np.ndarray, np.ndarray]) -> Outputs:
    """Each device's dgamma and dbeta: the sums over its slice of dy xhat and dy (``stats`` normalise xhat);
    fix_gamma: 0. Shape (ndev, C)."""
    split = device_split(case)
    mean, var = stats
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    with ignoring("invalid", "divide", "over"):
        inv = 1.0 / np.sqrt(var + oracle.eps_as_applied(case))
        xhat = (x - oracle.per_channel(case, mean)) * oracle.per_channel(case, inv)
        dgamma = _slice_sums(case, split, dy * xhat)
    if case.fix_gamma:
        dgamma = np.zeros_like(dgamma)
    return {"dgamma_partials": dgamma, "dbeta_partials": _slice_sums(case, split, dy)}


def merged_statistics(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """What MXNet's merge computes, exactly: the mean over devices of E_d[x], and of E_d[x^2] minus its square.
    The global batch's mean and biased variance for equal slices, not for unequal ones."""
    x = case.x.astype(np.float64)
    mean = _device_means(case, x).mean(axis=0)
    square = _device_means(case, x * x).mean(axis=0)
    return mean, square - mean * mean


def kernel_outputs(case: Case, stats: tuple[np.ndarray, np.ndarray]) -> Outputs:
    """SyncBatchNorm's formulas (sync_batch_norm-inl.h, Forward and Backward) in float64 from ``stats``: dx of a
    device from the averages over devices of sum dy and sum dy (x - mean), divided by its own row count; the
    gradients summed over devices as a trainer's allreduce does; each device's partials beside them."""
    split = device_split(case)
    mean, var = stats
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    g = np.ones(case.channels) if case.fix_gamma else case.gamma.astype(np.float64)
    pc = functools.partial(oracle.per_channel, case)
    with ignoring("invalid", "divide", "over"):
        s = np.sqrt(var + oracle.eps_as_applied(case))
        centred = x - pc(mean)
        y = pc(g) * centred / pc(s) + pc(case.beta.astype(np.float64))
        sum_grad = _slice_sums(case, split, dy).mean(axis=0)
        sum_prod = _slice_sums(case, split, dy * centred).mean(axis=0)
        gvar, gmean = -sum_prod * g / s**3, -sum_grad * g / s
        per_row = case.reduction_length / case.shape[0]
        dx = np.empty_like(x)
        for rows_, sl in zip(split, offsets(split), strict=True):
            local = rows_ * per_row
            dx[sl] = dy[sl] * pc(g / s) + pc(gvar) * centred[sl] / local + pc(gmean) / local
        parts = partials(case, stats)
    mom, rest = oracle.momentum_as_applied(case)
    out: Outputs = {
        "y": y,
        "dx": dx,
        "dgamma": parts["dgamma_partials"].sum(axis=0),
        "dbeta": parts["dbeta_partials"].sum(axis=0),
        "moving_mean": mom * case.moving_mean.astype(np.float64) + rest * mean,
        "moving_var": mom * case.moving_var.astype(np.float64) + rest * var,
        **parts,
    }
    return out


def _device_means(case: Case, values: np.ndarray) -> np.ndarray:
    """Per device and channel, the mean of ``values`` over the device's slice."""
    split = device_split(case)
    per_row = case.reduction_length / case.shape[0]
    return np.asarray(_slice_sums(case, split, values) / (np.array(split, dtype=np.float64)[:, None] * per_row))


def sync_propagated(
    case: Case, model: str, *, stats: tuple[np.ndarray, np.ndarray], factors: dict[str, np.ndarray] | None
) -> Propagated:
    """The statistics' errors of SyncBatchNorm's one-pass merge, in the plain model's form (error_model.Propagated).

    Per device d with m_d of the M values: E_d = fl(fl(C/size) S_d), S_d a float32 sum (gamma_{m_d-1} of
    sum|terms|, or the probabilistic factor), two roundings more; the merge sums ndev values (gamma_{ndev-1})
    and divides (u). So e_mean = avg_d (G_d + G_n + 2u) mean_d|x| + u|mean|, e_E2 likewise with mean_d x^2 and
    3u (the squares' rounding); var = fl(E2 - fl(mean^2)): e_var = e_E2 + 2|mean| e_mean + e_mean^2 + u mean^2
    + u|var|. The error is u E[x^2] where the plain model's is u var: it grows as mean^2/var.
    """
    r = 1.0 if model == "deterministic" else SAFETY
    u = r * U32
    split = device_split(case)
    mean, var = stats
    x = case.x.astype(np.float64)
    with ignoring("invalid", "over"):
        finite = np.where(np.isfinite(x), x, 0.0)
        abs_means = _device_means(case, np.abs(finite))
        square_means = _device_means(case, finite * finite)
    per_row = case.reduction_length // max(case.shape[0], 1)
    merge = sum_factor(len(split) - 1, "float32", model="deterministic")
    if model == "deterministic":
        device = np.array([[sum_factor(max(n * per_row - 1, 0), "float32", model=model)] for n in split])
        factor_x = factor_x2 = np.broadcast_to(device, abs_means.shape)
    else:
        if factors is None:
            raise ValueError("the probabilistic model needs the sums' partial-sum factors")
        factor_x, factor_x2 = factors["x"][None, :], factors["x2"][None, :]
    with ignoring("invalid", "over"):
        fm, fv = np.where(np.isfinite(mean), mean, 0.0), np.where(np.isfinite(var), var, 0.0)
        e_mean = ((factor_x + merge + 2 * u) * abs_means).mean(axis=0) + u * np.abs(fm)
        square = square_means.mean(axis=0)
        e_square = ((factor_x2 + merge + 3 * u) * square_means).mean(axis=0) + u * square
        e_var = e_square + 2 * np.abs(fm) * e_mean + e_mean * e_mean + u * fm * fm + u * np.abs(fv)
    plain = error_model.propagated_statistics(
        case, model, stats=stats, exact=nothing_exact(case), mean_abs=abs_means.mean(axis=0), factors=factors
    )
    with ignoring("invalid", "over"):
        rel_data = error_model.invstd_data_error(plain.s2, e_var + plain.e_eps + u * np.abs(plain.s2))
    return dataclasses.replace(plain, e_mean=e_mean, e_var=e_var, rel_inv=rel_data + plain.rel_round)


def nothing_exact(case: Case) -> Exactness:
    """No sum or rounding claimed exact: the merge's scale C/size and its 1/ndev round whatever the data."""
    no = np.zeros(case.channels, dtype=bool)
    return Exactness(no, no, no, no, no, no, no)


class SyncEvaluation(Evaluation):
    """A case's oracle and bounds as SyncBatchNorm computes it: the plain evaluation with the one-pass merge's
    statistics errors, no exact sums, and each device's partial gradients with their own bounds."""

    @functools.cached_property
    def exactness(self) -> Exactness:
        return nothing_exact(self.case)

    @functools.cached_property
    def partial_sum_factors(self) -> dict[str, np.ndarray]:
        factors = error_model.partial_sum_factors(self.case, self.statistics[0])
        x = rows(self.case.x.astype(np.float64), self.case.channel_axis)
        factors["x2"] = error_model.sequential_sum_factor(x * x, "float32", channels=self.case.channels)
        return factors

    def propagated(self, model: str) -> Propagated:
        if model not in self._propagated:
            factors = self.partial_sum_factors if model == "probabilistic" else None
            self._propagated[model] = sync_propagated(self.case, model, stats=self.statistics, factors=factors)
        return self._propagated[model]

    def bounds_around(self, values: Outputs, stats: tuple[np.ndarray, np.ndarray]) -> Outputs:
        """The deterministic bounds of ``values`` computed from other statistics ``stats`` (a deviation's model
        normalising with its own), the error model propagated around those statistics."""
        st = sync_propagated(self.case, "deterministic", stats=stats, factors=None)
        return error_model.bounds(self.case, values, st=st, exact=self.exactness, fresh=values)

    def partial_bounds_around(self, values: Outputs, stats: tuple[np.ndarray, np.ndarray]) -> Outputs:
        """partial_bounds of ``values`` with the error model propagated around ``stats``."""
        return partial_bounds(self.case, sync_propagated(self.case, "deterministic", stats=stats, factors=None), values)

    @functools.cached_property
    def partials(self) -> Outputs:
        """The oracle's per-device dgamma and dbeta."""
        return partials(self.case, self.statistics)

    def partial_bounds(self, values: Outputs) -> Outputs:
        """The deterministic bounds of per-device dgamma and dbeta ``values`` (shape (ndev, C)): per device the
        plain model's gradient-sum terms over its own slice, with 4 u per product (x - mean, times dy, sqrt and
        the division each round once) and gamma_{m_d-1} for its sum."""
        return partial_bounds(self.case, self.propagated("deterministic"), values)


def partial_bounds(case: Case, st: Propagated, values: Outputs) -> Outputs:
    """See SyncEvaluation.partial_bounds; ``st``: the deterministic propagated statistics."""
    split = device_split(case)
    per_row = case.reduction_length // max(case.shape[0], 1)
    x, dy = case.x.astype(np.float64), case.dy.astype(np.float64)
    with ignoring("invalid", "over", "divide"):
        inv = error_model.bound_inv(st)
        shift = error_model.xhat_shift(st, inv)
        xhat = (x - oracle.per_channel(case, st.mean)) * oracle.per_channel(case, inv)
        sum_ady = _slice_sums(case, split, np.abs(dy))
        sum_adx = _slice_sums(case, split, np.abs(dy * xhat))
        dbeta, dgamma = values["dbeta_partials"], values["dgamma_partials"]
        dgamma_free = _slice_sums(case, split, dy * xhat)  # the gradient even where fix_gamma reports 0
        device = np.array([[sum_factor(max(n * per_row - 1, 0), "float32", model="deterministic")] for n in split])
        tiny = error_model.subnormal_step("float32")
        e_dbeta = device * sum_ady + U32 * np.abs(dbeta) + tiny
        e_dgamma = (
            shift * np.abs(dbeta)
            + st.rel_inv * np.abs(dgamma_free)
            + (4 * U32 + device) * sum_adx
            + U32 * np.abs(dgamma)
            + tiny * (1 + np.array(split)[:, None] * per_row * np.maximum(1.0, inv))
        )
    if case.fix_gamma:
        e_dgamma = np.zeros_like(e_dgamma)
    return {"dbeta_partials": SAFETY * e_dbeta, "dgamma_partials": SAFETY * e_dgamma}

"""Correct float implementations of BatchNorm, with the arithmetic done the way real kernels do it.

``emulate(case, summation=..., variance=...)`` returns the same quantities, with the same semantics,
as ``tests.planted.numpy_batchnorm`` without a fault (fix_gamma, use_global_stats, inference,
output_mean_var, grad_req 'null'/'add', the moving statistics updated in the backward), but each
value is formed as MXNet's native CPU kernel forms it (src/operator/nn/batch_norm.cc):

* forward: ``mean = sum(x) / M``; ``var = sum((x - mean) * (x - mean)) / M``;
  ``invstd = 1.0 / sqrt(var + DType(eps))``; ``y = ((x - mean) * invstd) * gamma + beta``
  (``((x - mean) * invstd) + beta`` under fix_gamma);
* backward: ``dotp = sum((x - mean) * dy)``; ``dgamma = dotp * invstd``; ``dbeta = sum(dy)``;
  ``k = dotp * invstd * invstd / M``; ``dx = (dy - sum(dy) / M - (x - mean) * k) * (invstd * gamma)``
  (``dy * (invstd * gamma)`` with the moving statistics);
* the moving statistics: ``moving * momentum + batch * (1 - momentum)``, momentum a C++ float, the
  batch variance recovered from invstd as ``1.0 / (invstd * invstd) - eps``.

How the per-channel sums are formed is a choice (``summation``):

* ``sequential``: left to right, one accumulator (``np.add.accumulate`` is sequential; numpy's own
  ``sum`` is not, it sums pairwise in blocks);
* ``pairwise``: a balanced tree of halvings (rows padded with zeros to a power of two);
* ``blocked16``: 16 interleaved sequential lanes (element i goes to lane i % 16), the lanes then
  summed left to right, as a vectorised kernel does;

and so is how the variance is formed (``variance``): ``two-pass`` (the mean, then the centred sum
of squares, as MXNet does) or ``welford`` (Welford's running updates of the mean and of M2, in
blocks of at most WELFORD_BLOCK elements merged by Chan's formula; the mean then comes from the
updates too). Everything else is the same for both.

Precision, as MXNet's types make it: float64 and float32 data are computed in their own type.
float16 data are accumulated in float32 (MXNet's AccReal), and every operation that mixes a half_t
with another number rounds its result to float16, as mshadow's half_t operators do: x - mean, xhat,
y's product and sum, (x - mean) * dy, (x - mean) * k, dx's differences and product, and
var + eps (eps itself is converted to float16 first). The sum of squares is formed in float32
(the kernel converts x to AccReal first). gamma's and beta's gradients, the statistics and the
moving statistics are float32. Every result is rounded to the dtype MXNet returns.

These are *correct* kernels, so where MXNet's rounding is a known deviation
(bnprops/judging/known_deviations.py) they keep the value unrounded instead: a float16 intermediate that
would overflow float16 stays in float32, var + eps is rounded to float16 only within float16's
normal range, and the recovered variance does not overflow invstd * invstd. The float16
subnormal range is otherwise kept: a real float16 kernel rounds tiny intermediates there.

Elsewhere, the sequential two-pass kernel *is* MXNet 1.9.1's native CPU kernel, bit for bit, for
float16, float32 and float64 (tests/test_error_model_soundness.py checks it against MXNet).
"""

from __future__ import annotations

import itertools

import numpy as np

from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, Case, Outputs
from bnprops.model.oracle import eps_as_applied, momentum_as_applied, output_dtypes

SUMMATIONS = ("sequential", "pairwise", "blocked16")
VARIANCES = ("two-pass", "welford")
#: The GPU kernels' orders: "warp-tree" sums as MXNet's CUDA kernel does (thread-strided chains, a butterfly
#: of xor shuffles within each warp of 32, the warps' sums in shared memory, a butterfly over them);
#: "welford-strided" runs Welford's updates in thread-strided chains merged by Chan's formula in a tree.
GPU_SUMMATIONS = (*SUMMATIONS, "warp-tree")
GPU_VARIANCES = (*VARIANCES, "welford-strided")
WARP = 32
#: The CUDA kernel's block widths (getNumThreads): the smallest that holds M, at most 512.
THREADS = (32, 64, 128, 256, 512)
#: Every (summation, variance) pair: the kernels emulate() offers.
VARIANTS = tuple(itertools.product(SUMMATIONS, VARIANCES))
LANES = 16
#: Welford runs sequentially over blocks of at most this many elements, vectorised over channels and
#: blocks; the blocks are then merged pairwise with Chan's formula (a correct parallel kernel).
WELFORD_BLOCK = 256

_F16_TINY = float(np.finfo(np.float16).tiny)  # the smallest normal float16, 2^-14


def emulate(case: Case, *, summation: str, variance: str, gpu: bool = False) -> Outputs:
    """Every quantity of ``case`` (as bnprops.model.oracle.reference names them), computed by the chosen kernel.

    ``gpu``: as MXNet's CUDA kernel forms what follows the sums (batch_norm.cu): the mean, the variance, dbeta/M
    and dotp/M by the count's rounded reciprocal ``1 / M``, and the saved mean (the backward's, the moving
    mean's, the mean output) stored in the data type; y keeps the unrounded mean."""
    if summation not in (GPU_SUMMATIONS if gpu else SUMMATIONS):
        raise ValueError(f"unknown summation {summation!r}; choose from {SUMMATIONS} (GPU: {GPU_SUMMATIONS})")
    if variance not in (GPU_VARIANCES if gpu else VARIANCES):
        raise ValueError(f"unknown variance {variance!r}; choose from {VARIANCES} (GPU: {GPU_VARIANCES})")
    half = case.dtype == "float16"
    acc = np.float64 if case.dtype == "float64" else np.float32  # MXNet's AccReal
    rnd = _to_float16 if half else _same
    m = acc(case.reduction_length)
    eps = eps_as_applied(case)
    with np.errstate(all="ignore"):
        norm = acc(1) / m if gpu else None  # the CUDA kernel's AccReal(1) / N

    def per_element(sum_: np.ndarray) -> np.ndarray:
        return sum_ / m if norm is None else sum_ * norm

    def total(values: np.ndarray) -> np.ndarray:
        return channel_sums(values, summation)

    x = rows(case, case.x).astype(acc)  # exact: float16 widens to float32 without rounding
    dy = rows(case, case.dy).astype(acc)
    g = np.ones(case.channels, acc) if case.fix_gamma else case.gamma.astype(acc)
    beta = case.beta.astype(acc)

    with np.errstate(all="ignore"):
        if case.uses_batch_stats:
            if variance == "two-pass":
                mean = per_element(total(x))
                centred = x - mean[:, None]  # AccReal - AccReal: not rounded to float16
                var = per_element(total(centred * centred))
            else:
                mean, m2 = welford(x) if variance == "welford" else welford(*strided(x))
                var = per_element(m2)
            invstd = _invstd(var, eps, acc, half)
        else:
            mean = case.moving_mean.astype(acc)
            invstd = _invstd(case.moving_var.astype(acc), eps, acc, half)

        # The forward's output.
        c = rnd(x - mean[:, None])  # half_t - AccReal: a half_t
        xhat = rnd(c * invstd[:, None])
        y = rnd(xhat + beta[:, None]) if case.fix_gamma else rnd(rnd(xhat * g[:, None]) + beta[:, None])
        if gpu and half and case.uses_batch_stats:
            # The CUDA kernel's saved mean is ScalarConvert<AccReal, DType>: float16, for all that follows.
            mean = _to_float16(mean)
            c = rnd(x - mean[:, None])

        # The backward.
        sum_dy = total(dy)
        dotp = total(rnd(c * dy))  # half_t * half_t, accumulated in AccReal
        iw = invstd * g
        if case.uses_batch_stats:
            k = per_element(dotp * invstd * invstd) if norm is None else dotp * norm * invstd * invstd
            projection = rnd(c * k[:, None])  # stored in dx's own (DType) buffer
            dx = rnd(rnd(rnd(dy - per_element(sum_dy)[:, None]) - projection) * iw[:, None])
        else:
            dx = rnd(dy * iw[:, None])
        dgamma = np.zeros(case.channels, acc) if case.fix_gamma else dotp * invstd
        dbeta = sum_dy

        # The moving statistics: updated in the backward, from the batch statistics.
        momentum, _ = momentum_as_applied(case)
        mom = acc(momentum)
        rest = acc(1) - mom
        old_mean, old_var = case.moving_mean.astype(acc), case.moving_var.astype(acc)
        if case.uses_batch_stats:
            moving_mean = old_mean * mom + mean * rest
            moving_var = old_var * mom + recovered_variance(invstd, eps, acc) * rest
        else:
            moving_mean, moving_var = old_mean, old_var

    gradients = {"data": unrows(case, dx), "gamma": dgamma, "beta": dbeta}
    out: Outputs = {
        "y": unrows(case, y),
        "moving_mean": moving_mean,
        "moving_var": moving_var,
        "gamma": np.ones(case.channels) if case.fix_gamma else case.gamma,
        "forward_moving_mean": case.moving_mean,
        "forward_moving_var": case.moving_var,
    }
    if case.output_mean_var:
        out["mean"] = mean
        out["invstd"] = invstd
    dtypes = output_dtypes(case)
    with np.errstate(all="ignore"):
        result = {q: np.asarray(v).astype(dtypes[q]) for q, v in out.items()}
        for target in GRAD_TARGETS:
            quantity = GRADIENT_OF[target]
            if case.request(target) == "null":
                continue
            gradient = np.asarray(gradients[target]).astype(dtypes[quantity])
            prior = case.prior(target)
            # 'add': the buffer's old contents plus the gradient, one more rounding in the output dtype.
            result[quantity] = gradient if prior is None else (prior + gradient).astype(dtypes[quantity])
    return result


def rows(case: Case, values: np.ndarray) -> np.ndarray:
    """``values`` (shaped like x) as one row per channel, shape (C, M), elements in C order."""
    return np.moveaxis(values, case.channel_axis, 0).reshape(case.channels, -1)


def unrows(case: Case, values: np.ndarray) -> np.ndarray:
    """The inverse of rows()."""
    moved = [case.shape[case.channel_axis], *(d for i, d in enumerate(case.shape) if i != case.channel_axis)]
    return np.moveaxis(values.reshape(moved), 0, case.channel_axis)


def channel_sums(values: np.ndarray, summation: str) -> np.ndarray:
    """The sum of each row of ``values`` (C, M), in their dtype, in the chosen order."""
    channels, m = values.shape
    if m == 0:
        return np.zeros(channels, values.dtype)
    if summation == "sequential":
        # accumulate forms every prefix, so each is the previous one plus one element: left to right.
        return np.add.accumulate(values, axis=1)[:, -1]
    if summation == "pairwise":
        width = 1 << (m - 1).bit_length()
        level = _padded(values, width)
        while level.shape[1] > 1:
            level = level[:, 0::2] + level[:, 1::2]
        return level[:, 0]
    if summation == "warp-tree":
        threads = next((t for t in THREADS if m <= t), THREADS[-1])
        chains = _padded(values, -(-m // threads) * threads).reshape(channels, -1, threads)
        lanes = np.add.accumulate(chains, axis=1)[:, -1, :]  # each thread's strided chain, in order
        warps = _butterfly(lanes.reshape(channels, -1, WARP))  # (C, warps): each warp's lane 0
        return _butterfly(_padded(warps, WARP).reshape(channels, 1, WARP))[:, 0]
    if summation == "blocked16":
        lanes = _padded(values, -(-m // LANES) * LANES).reshape(channels, -1, LANES)
        lane_sums = np.add.accumulate(lanes, axis=1)[:, -1, :]
        result = lane_sums[:, 0]
        for lane in range(1, LANES):
            result = result + lane_sums[:, lane]
        return result
    raise ValueError(f"unknown summation {summation!r}; choose from {SUMMATIONS}")


def _butterfly(lanes: np.ndarray) -> np.ndarray:
    """warpSum's xor shuffles on (C, warps, 32) lanes: five rounds of val += val[lane ^ 2^i]; lane 0's sums."""
    index = np.arange(WARP)
    for i in range(5):
        lanes = lanes + lanes[..., index ^ (1 << i)]
    return lanes[..., 0]


def strided(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The rows of ``values`` (C, M) reordered so that each GPU thread's strided chain (element i to thread
    i % threads) is contiguous, in order, and the chains' length: welford's blocks of that length then run
    them (up to the last few, which straddle two chains), merged in a tree."""
    m = values.shape[1]
    threads = next((t for t in THREADS if m <= t), THREADS[-1])
    return values[:, np.argsort(np.arange(m) % threads, kind="stable")], max(1, -(-m // threads))


def welford(values: np.ndarray, block: int = WELFORD_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Welford's mean and M2 (the centred sum of squares) of each row of ``values`` (C, M), in their dtype.

    Rows longer than ``block`` run as blocks, each sequential, merged pairwise with Chan's formula.
    """
    dt = values.dtype.type
    channels, m = values.shape
    if m == 0:
        return np.full(channels, np.nan, dt), np.zeros(channels, dt)
    block = max(1, min(m, block))
    blocks = -(-m // block)
    data = _padded(values, blocks * block).reshape(channels, blocks, block)
    counts = np.full(blocks, block)
    counts[-1] = m - (blocks - 1) * block
    n = np.zeros(blocks, dt)
    mean = np.zeros((channels, blocks), dt)
    m2 = np.zeros((channels, blocks), dt)
    with np.errstate(all="ignore"):
        for i in range(block):
            live = i < counts  # only the last block can be short
            n = np.where(live, n + dt(1), n)
            xi = data[:, :, i]
            delta = xi - mean
            new_mean = mean + delta / n
            new_m2 = m2 + delta * (xi - new_mean)
            mean = np.where(live, new_mean, mean)
            m2 = np.where(live, new_m2, m2)
        while mean.shape[1] > 1:
            if mean.shape[1] % 2:
                n = np.append(n, dt(0))
                mean = np.concatenate([mean, np.zeros((channels, 1), dt)], axis=1)
                m2 = np.concatenate([m2, np.zeros((channels, 1), dt)], axis=1)
            na, nb = n[0::2], n[1::2]
            ma, mb = mean[:, 0::2], mean[:, 1::2]
            total = na + nb
            delta = mb - ma
            merged_mean = ma + delta * (nb / total)
            merged_m2 = m2[:, 0::2] + m2[:, 1::2] + delta * delta * (na * nb / total)
            empty = nb == 0
            mean = np.where(empty, ma, merged_mean)
            m2 = np.where(empty, m2[:, 0::2], merged_m2)
            n = total
    return mean[:, 0], m2[:, 0]


def _invstd(var: np.ndarray, eps: float, acc: type, half: bool) -> np.ndarray:
    """``1.0 / sqrt(var + DType(eps))``, stored as AccReal (VARIANCE_TO_INVSTD in batch_norm.cc)."""
    normaliser = var + acc(eps)
    if half:
        # float + half_t is a half_t: eps goes to float16, and so does the sum, where it is a normal float16.
        rounded = (var + _to_float16(np.asarray(eps, np.float32))).astype(np.float16).astype(np.float32)
        normal = (np.abs(rounded) >= _F16_TINY) & np.isfinite(rounded)
        normaliser = np.where(normal, rounded, normaliser)
    root = np.sqrt(normaliser)
    return (1.0 / root.astype(np.float64)).astype(acc)  # 1.0 is a double literal


def recovered_variance(invstd: np.ndarray, eps: float, acc: type) -> np.ndarray:
    """``1.0 / (invstd * invstd) - eps`` (INVSTD_TO_VARIANCE): the square in AccReal, the rest in double.

    Where invstd * invstd overflows AccReal (var + eps below the square of its smallest normal), MXNet's
    recovered variance comes out as -eps (for float64 a known deviation); this kernel squares 1 / invstd.
    """
    square = invstd * invstd
    recovered = 1.0 / square.astype(np.float64) - eps
    overflowed = np.isinf(square) & np.isfinite(invstd)
    if overflowed.any():
        root = 1.0 / invstd.astype(np.float64)
        recovered = np.where(overflowed, root * root - eps, recovered)
    return recovered.astype(acc)


def _to_float16(values: np.ndarray) -> np.ndarray:
    """Round to float16 (kept as float32 values), as a half_t result is; except where float16 would overflow."""
    values = np.asarray(values, np.float32)
    rounded = values.astype(np.float16).astype(np.float32)
    return np.where(np.isinf(rounded) & np.isfinite(values), values, rounded)


def _same(values: np.ndarray) -> np.ndarray:
    return values


def _padded(values: np.ndarray, width: int) -> np.ndarray:
    """Rows padded on the right with zeros (adding 0 is exact) to ``width`` columns."""
    extra = width - values.shape[1]
    if extra == 0:
        return values
    return np.concatenate([values, np.zeros((values.shape[0], extra), values.dtype)], axis=1)


#: BatchNorm_v1's sums in mshadow's order (sumall_except_dim<1>): each sample's plane (H x W) summed, then the
#: planes in order; with the other orders, the summations emulate_v1 offers.
V1_SUMMATIONS = (*SUMMATIONS, "planes")


def v1_sums(case: Case, values: np.ndarray, summation: str) -> np.ndarray:
    """The per-channel sums of ``values`` (C, M) in the chosen order (V1_SUMMATIONS)."""
    if summation != "planes":
        return channel_sums(values, summation)
    plane = int(np.prod(case.shape[2:])) if case.x.ndim > 2 else 1
    if values.shape[1] == 0:
        return np.zeros(values.shape[0], values.dtype)
    per_plane = np.add.accumulate(values.reshape(values.shape[0], -1, plane), axis=2)[:, :, -1]
    return np.add.accumulate(per_plane, axis=1)[:, -1]


def emulate_v1(case: Case, *, summation: str) -> Outputs:
    """BatchNorm_v1's training branch as batch_norm_v1-inl.h (1.9.1) forms it, in float32, its sums in the chosen
    order: ``scale = float(C) / float(size)``, ``mean = scale * sum(x)``, ``var = scale * sum((x - mean)^2)``,
    ``y = gamma (x - mean) / sqrt(var + eps) + beta``; ``gvar = sum(dy gamma (x - mean) (-0.5) pow(var + eps,
    -1.5))``, ``gmean = sum(dy gamma) (-1 / sqrt(var + eps)) + scale sum(-2 (x - mean)) gvar``, ``dx = dy gamma
    (1 / sqrt(var + eps)) + gvar scale 2 (x - mean) + gmean scale``, ``dgamma = sum(dy (x - mean) / sqrt(var +
    eps))``, ``dbeta = sum(dy)``; every operation in the expression's order, each rounded to float32.
    For training calls with batch statistics and 'write' requests (what test_batchnorm_v1's soundness search
    draws)."""
    if not case.uses_batch_stats or case.accumulates:
        raise ValueError("emulate_v1 forms the training branch with 'write' requests only")
    f = np.float32
    x, dy = rows(case, case.x.astype(f)), rows(case, case.dy.astype(f))
    g = np.ones(case.channels, f) if case.fix_gamma else case.gamma.astype(f)
    beta = case.beta.astype(f)
    eps = f(case.eps)  # a float parameter
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scale = f(f(case.channels) / f(case.x.size))
        mean = (scale * v1_sums(case, x, summation)).astype(f)
        c = (x - mean[:, None]).astype(f)
        var = (scale * v1_sums(case, (c * c).astype(f), summation)).astype(f)
        s2 = (var + eps).astype(f)
        root = np.sqrt(s2).astype(f)
        y = ((g[:, None] * c).astype(f) / root[:, None]).astype(f) + beta[:, None]
        dyg = (dy * g[:, None]).astype(f)
        power = np.power(s2, f(-1.5)).astype(f)
        gvar_terms = ((((dyg * c).astype(f)) * f(-0.5)).astype(f) * power[:, None]).astype(f)
        gvar = v1_sums(case, gvar_terms, summation)
        inv = (f(1.0) / root).astype(f)
        gmean = (v1_sums(case, dyg, summation) * (f(-1.0) / root).astype(f)).astype(f)
        tmp = (scale * v1_sums(case, (f(-2.0) * c).astype(f), summation)).astype(f)
        gmean = (gmean + (tmp * gvar).astype(f)).astype(f)
        t1 = (dyg * inv[:, None]).astype(f)
        t3 = ((((gvar * scale).astype(f)) * f(2.0)).astype(f)[:, None] * c).astype(f)
        dx = ((t1 + t3).astype(f) + (gmean * scale).astype(f)[:, None]).astype(f)
        dgamma_terms = ((dy * c).astype(f) / root[:, None]).astype(f)
        dgamma = v1_sums(case, dgamma_terms, summation)
        mom = f(case.momentum)
        moving_mean = (case.moving_mean.astype(f) * mom + mean * (f(1) - mom)).astype(f)
        moving_var = (case.moving_var.astype(f) * mom + var * (f(1) - mom)).astype(f)
    out: Outputs = {
        "y": unrows(case, y.astype(f)),
        "dx": unrows(case, dx),
        "dgamma": np.zeros(case.channels, f) if case.fix_gamma else dgamma.astype(f),
        "dbeta": v1_sums(case, dy, summation).astype(f),
        # (not an output: the magnitude of dgamma's terms, which says when their sum cancels)
        "dgamma_magnitude": np.abs(dgamma_terms).astype(np.float64).sum(axis=1),
        "moving_mean": moving_mean,
        "moving_var": moving_var,
    }
    if case.request("data") == "null":
        del out["dx"]
    for target, q in (("gamma", "dgamma"), ("beta", "dbeta")):
        if case.request(target) == "null":
            del out[q]
    return out


def welford_case() -> Case:
    """Three float32 values near 1000: a Welford kernel is beyond the CPU bound there, within the GPU one."""
    x = np.array([[1000.2620239257812], [999.695068359375], [999.8883056640625]], np.float32)
    return Case(
        x=x,
        dy=np.ones_like(x),
        gamma=np.ones(1, np.float32),
        beta=np.zeros(1, np.float32),
        moving_mean=np.zeros(1, np.float32),
        moving_var=np.ones(1, np.float32),
        eps=1e-5,
        fix_gamma=False,
        output_mean_var=True,
    )

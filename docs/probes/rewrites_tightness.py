"""Probe: how sharp the oneDNN rewrites' bounds are on real MXNet, per decade of M (elements per channel).

Run: PYTHONPATH=. python docs/probes/rewrites_tightness.py   (mxnet 1.9.1 with oneDNN). For each member and
decade, random inference cases (ordinary and offset data, fix_gamma False, eps 1e-3 so no int8 deviation
shows), the error/bound ratio of every element of y: its median and maximum over the decade's cases.
"""

import warnings

import numpy as np

from bnprops.judging.folding import ConvFoldEvaluation, FoldEvaluation
from bnprops.judging.int8 import Int8Evaluation
from bnprops.model.case import Case
from bnprops.mx.folding import run_fold_conv, run_fold_sym
from bnprops.mx.int8 import run_int8_gluon

warnings.filterwarnings("ignore")
rng = np.random.default_rng(23)


def draw(m: int, regime: str) -> Case:
    c, n = 3, 2
    side = max(1, round((m / n) ** 0.5))
    shape = (n, c, side, max(1, m // (n * side)))
    spread = 10 ** rng.uniform(-1, 1, c)
    offset = (
        rng.uniform(-1, 1, c) if regime == "ordinary" else rng.choice([-1, 1], c) * spread * 10 ** rng.uniform(1, 3, c)
    )
    x = (offset.reshape(1, -1, 1, 1) + spread.reshape(1, -1, 1, 1) * rng.standard_normal(shape)).astype(np.float32)
    mm = (offset + spread * rng.standard_normal(c) * 0.1).astype(np.float32)
    mv = (spread**2 * 10 ** rng.uniform(-1, 1, c)).astype(np.float32)
    return Case(
        x=x,
        dy=np.ones_like(x),
        gamma=rng.uniform(0.5, 2, c).astype(np.float32),
        beta=rng.uniform(-1, 1, c).astype(np.float32),
        moving_mean=mm,
        moving_var=mv,
        fix_gamma=False,
        is_train=False,
        eps=1e-3,
    )


for name, run, evaluation in (
    ("fold-sym", run_fold_sym, FoldEvaluation),
    ("int8-gluon", run_int8_gluon, Int8Evaluation),
):
    for decade in range(1, 6):
        ratios = []
        for regime in ("ordinary", "offset") * 4:
            case = draw(10**decade, regime)
            ev = evaluation(case)
            y = run(case)["y"].astype(np.float64)
            ratios.append(np.abs(y - ev.expected["y"]) / ev.bound["y"])
        r = np.concatenate([a.ravel() for a in ratios])
        print(f"{name:10s} M ~ 1e{decade}: median {np.median(r):.3f}  max {r.max():.3f}  ({r.size} elements)")

# A drawn convolution (K = C = 8 filters, 1x1 and 3x3) in front: the bound's dot-product term grows with the
# convolution's length (8 and 72 products), the errors of a float32 dot product with it.
for k in (1, 3):
    for decade in range(1, 6):
        ratios = []
        for regime in ("ordinary", "offset") * 2:
            base = draw(10**decade, regime)
            c = 8
            x = np.repeat(base.x[:, :1], c, axis=1) + rng.standard_normal((base.x.shape[0], c, *base.x.shape[2:]))
            case = base.with_(
                x=x.astype(np.float32),
                dy=np.ones(x.shape, np.float32),
                gamma=rng.uniform(0.5, 2, c).astype(np.float32),
                beta=rng.uniform(-1, 1, c).astype(np.float32),
                moving_mean=rng.standard_normal(c).astype(np.float32),
                moving_var=rng.uniform(0.1, 3, c).astype(np.float32),
            )
            weight = rng.standard_normal((c, c, k, k)).astype(np.float32)
            ev = ConvFoldEvaluation(case, weight)
            y = run_fold_conv(case, weight)["y"].astype(np.float64)
            ratios.append(np.abs(y - ev.expected["y"]) / ev.bound["y"])
        r = np.concatenate([a.ravel() for a in ratios])
        print(f"fold-conv {k}x{k} M ~ 1e{decade}: median {np.median(r):.4f}  max {r.max():.4f}  ({r.size} elements)")

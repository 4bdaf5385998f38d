"""Tightness of SyncBatchNorm's one-pass error model on real MXNet, per decade of M (bnprops needed).

Run: PYTHONPATH=. python docs/probes/sync_tightness.py [CASES_PER_DECADE]

For M = 10 .. 10^5 elements per channel, ordinary data (per-channel offset U(-1, 1), spread 10^U(-1, 1), random
dy), 2 to 4 devices with equal slices: mx.nd.contrib.SyncBatchNorm in the sync worker, each quantity's worst
error / deterministic bound (and / probabilistic bound) per case; the median and the max over the cases of a
decade. Then whether a 0.5% error planted in dx (everywhere) or in device 0's dgamma is caught.
"""

import sys

import numpy as np

from bnprops.judging.sync import judge
from bnprops.model.case import Case
from bnprops.model.sync import SyncEvaluation, with_split
from bnprops.mx import sync

QUANTITIES = ("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var")


def make(rng, m, channels=2):
    devices = int(rng.integers(2, 5))
    rows = devices * max(1, round(m**0.5 / devices))
    spatial = max(1, m // rows)
    shape = (rows, channels, spatial)
    offset = rng.uniform(-1, 1, channels).reshape(1, -1, 1)
    spread = (10 ** rng.uniform(-1, 1, channels)).reshape(1, -1, 1)
    x = (offset + spread * rng.standard_normal(shape)).astype(np.float32)
    case = Case(
        x=x,
        dy=rng.standard_normal(shape).astype(np.float32),
        gamma=rng.uniform(0.5, 2, channels).astype(np.float32),
        beta=rng.uniform(-1, 1, channels).astype(np.float32),
        moving_mean=np.zeros(channels, np.float32),
        moving_var=np.ones(channels, np.float32),
        fix_gamma=False,
        regime="ordinary",
    )
    return sync.adapt("sync-nd", with_split(case, (rows // devices,) * devices))


def worst(actual, expected, bound):
    err = np.abs(np.asarray(actual, np.float64) - expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.max(np.where(bound > 0, err / bound, 0.0)))


def main(per_decade):
    rng = np.random.default_rng(2026)
    print("| M | cases | " + " | ".join(QUANTITIES) + " | dx, dgamma / probabilistic | 0.5% caught: dx, dgamma |")
    print("|---|---|" + "---|" * len(QUANTITIES) + "---|---|")
    for e in range(1, 6):
        ratios = {q: [] for q in QUANTITIES}
        sharp = {"dx": [], "dgamma": []}
        caught = {"dx": 0, "dgamma": 0}
        n = per_decade if e < 5 else max(3, per_decade // 4)
        for _ in range(n):
            case = make(rng, 10**e)
            out = sync.RUNNERS["sync-nd"](case)
            ev = SyncEvaluation(case)
            for q in QUANTITIES:
                ratios[q].append(worst(out[q], ev.expected[q], ev.bound[q]))
            for q in sharp:
                sharp[q].append(worst(out[q], ev.expected[q], ev.sharp[q]))
            planted = dict(out, dx=out["dx"] * np.float32(1.005))
            caught["dx"] += not judge(case, planted, entry="sync-nd", kernel="onednn").ok
            parts = out["dgamma_partials"].copy()
            parts[0] *= np.float32(1.005)
            planted = dict(out, dgamma_partials=parts, dgamma=parts.astype(np.float64).sum(axis=0))
            caught["dgamma"] += not judge(case, planted, entry="sync-nd", kernel="onednn").ok
        cells = [f"{np.median(r):.2g} / {max(r):.2g}" for r in ratios.values()]
        probabilistic = ", ".join(f"{np.median(sharp[q]):.2g} / {max(sharp[q]):.2g}" for q in sharp)
        print(
            f"| 10^{e} | {n} | "
            + " | ".join(cells)
            + f" | {probabilistic} | {caught['dx']}/{n}, {caught['dgamma']}/{n} |"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)

"""The report's pictures: errors against conditioning (errors.png) and the run history (history.png).

The error plot draws a 2-D histogram per panel (a fixed grid of bins, so its cost hardly depends on
how many points were sampled: a scatter of 50,000 points took about 13 s) with the failing points,
which are few, on top.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from bnprops.model.case import DTYPES, QUANTITIES

if TYPE_CHECKING:
    from bnprops.fuzzing.causes import Run
    from bnprops.fuzzing.tallies import Points

_X_RANGE = (-3.0, 12.0)  # log10 offset/spread
_Y_RANGE = (-8.5, 8.5)  # log10 error/bound
_BINS = (60, 68)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, handle: IO[bytes], plt: Any, *, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    handle.write(buffer.getvalue())


def plot(points: Points, handle: IO[bytes]) -> None:
    """error/bound against offset/spread, one panel per dtype (row) and quantity (column), as PNG."""
    plt = _pyplot()
    dtypes = [i for i, _ in enumerate(DTYPES) if (points.dtype == i).any()] or [0]
    quantities = [j for j in range(len(QUANTITIES)) if np.isfinite(points.ratio[:, j]).any()] or [0]
    # Shared axes with fixed ticks and a fixed layout: with 30-odd panels, matplotlib's tick and tight-layout
    # passes, not the data, were most of the time.
    fig, axes = plt.subplots(
        len(dtypes),
        len(quantities),
        figsize=(2.4 * len(quantities), 2.2 * len(dtypes)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.9, wspace=0.08, hspace=0.3)
    x_all = np.log10(np.clip(points.cond, 10 ** _X_RANGE[0], 10 ** _X_RANGE[1]))
    for r, di in enumerate(dtypes):
        for c, qj in enumerate(quantities):
            ax = axes[r][c]
            rows = points.dtype == di
            ratio = points.ratio[rows, qj]
            x = x_all[rows]
            keep = ~np.isnan(ratio)
            y = np.log10(np.clip(ratio[keep], 1e-8, 1e8))
            counts, xe, ye = np.histogram2d(x[keep], y, bins=_BINS, range=(_X_RANGE, _Y_RANGE))
            shown = np.where(counts.T > 0, np.log10(np.maximum(counts.T, 1)), np.nan)  # empty bins stay blank
            ax.pcolormesh(xe, ye, shown, cmap="Blues", vmin=-0.5, shading="flat", rasterized=True)
            bad = ratio[keep] > 1
            ax.scatter(x[keep][bad], y[bad], s=6, color="tab:red", rasterized=True)
            ax.axhline(0, color="red", linewidth=0.8)
            ax.set_xlim(*_X_RANGE)
            ax.set_ylim(*_Y_RANGE)
            ax.set_xticks([0, 5, 10])
            ax.set_yticks([-8, -4, 0, 4, 8])
            ax.set_title(f"{DTYPES[di]} {QUANTITIES[qj]}", fontsize=8)
            ax.tick_params(labelsize=6)
            if c == 0:
                ax.set_ylabel("log10 error/bound", fontsize=7)
            if r == len(dtypes) - 1:
                ax.set_xlabel("log10 offset/spread", fontsize=7)
    if not len(points.cond):
        fig.suptitle("no cases were judged")
    _save(fig, handle, plt, tight=False)


def plot_history(runs: Sequence[Run], handle: IO[bytes]) -> None:
    """Cases per second, and new and known causes, per run in the history (oldest left)."""
    plt = _pyplot()
    fig, (rate, found) = plt.subplots(1, 2, figsize=(8, 2.6))
    index = np.arange(len(runs))
    rate.plot(index, [r.cases_per_s for r in runs], marker="o", markersize=3)
    rate.set_title("cases per second", fontsize=9)
    found.plot(index, [len(r.new) for r in runs], marker="o", markersize=3, color="tab:red", label="new causes")
    found.plot(index, [len(r.known) for r in runs], marker="o", markersize=3, color="tab:blue", label="known causes")
    found.set_title("causes", fontsize=9)
    found.legend(fontsize=7)
    for ax in (rate, found):
        ax.set_xlabel("run (oldest left)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
    if not runs:
        fig.suptitle("no runs recorded yet")
    _save(fig, handle, plt)

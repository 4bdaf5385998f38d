"""The report's pictures: errors against conditioning (errors.png) and the run history (history.png).

The error plot answers "anything new?" first: its title says whether there is a new finding, and in each
panel the passes are a grey 2-D histogram (a fixed grid of bins, so its cost hardly depends on how many
points were sampled: a scatter of 50,000 points took about 13 s), the departures a recorded deviation
explains muted circles, and new findings red dots on top. A known deviation exceeds the bound just like
a new one, so drawing both red cried wolf. One panel per quantity with data, every dtype together
(error/bound is already relative to each dtype's bound).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from bnprops.fuzzing.tallies import KNOWN, NEW, PASSED
from bnprops.model.case import QUANTITIES

if TYPE_CHECKING:
    from bnprops.fuzzing.history import Run
    from bnprops.fuzzing.tallies import Points

_X_RANGE = (-3.0, 12.0)  # log10 offset/spread
_Y_RANGE = (-8.5, 8.5)  # log10 error/bound
_BINS = (45, 51)  # a third of a decade
_EDGES = (np.linspace(*_X_RANGE, _BINS[0] + 1), np.linspace(*_Y_RANGE, _BINS[1] + 1))
_KNOWN_COLOUR = "#3b6ea5"
_NEW_COLOUR = "#d62728"


@dataclasses.dataclass
class Panel:
    """One quantity's points, split by class, in the plot's coordinates (log10 offset/spread, log10 error/bound)."""

    quantity: str
    passed: np.ndarray  # (n, 2)
    known: np.ndarray
    new: np.ndarray


@dataclasses.dataclass
class SampleCounts:
    """The sampled cases by their worst class (a case with a new finding in any quantity is new)."""

    sampled: int
    new: int
    known: int
    passed: int  # judged on their own
    stacked: int  # passed inside a stacked call, judged as a group: no ratio of their own, not drawn


def panels(points: Points) -> list[Panel]:
    """The panels to draw: one per quantity some sampled case has a ratio (or a new finding) in."""
    x = np.log10(np.clip(points.cond, 10 ** _X_RANGE[0], 10 ** _X_RANGE[1]))
    result = []
    for j, quantity in enumerate(QUANTITIES):
        kind = points.kind[:, j]
        # A new finding without a ratio (none should lack one) goes at the top rather than out of sight.
        ratio = np.where(np.isnan(points.ratio[:, j]) & (kind == NEW), np.inf, points.ratio[:, j])
        has = ~np.isnan(ratio)
        if not has.any():
            continue
        xy = np.column_stack([x, np.log10(np.clip(ratio, 10.0**-8, 10.0**8))])
        passed, known, new = (xy[has & (kind == k)] for k in (PASSED, KNOWN, NEW))
        result.append(Panel(quantity, passed, known, new))
    return result


def cases(points: Points) -> SampleCounts:
    """How many sampled cases are drawn, and as what."""
    new = (points.kind == NEW).any(axis=1)
    known = (points.kind == KNOWN).any(axis=1) & ~new
    drawn = (~np.isnan(points.ratio)).any(axis=1) | new
    passed = drawn & ~new & ~known
    return SampleCounts(len(points.cond), int(new.sum()), int(known.sum()), int(passed.sum()), int((~drawn).sum()))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, handle: IO[bytes], plt: Any, *, tight: bool = True, dpi: int = 90) -> None:
    if tight:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    handle.write(buffer.getvalue())


def _columns(n: int) -> int:
    """At most four columns (the report shows the picture about 1,000 pixels wide), rows as full as they can be."""
    return n if n <= 4 else 3 if n in (5, 6, 9) else 4


def headline(c: SampleCounts) -> tuple[str, str]:
    """The picture's title and its colour: whether anything is new, before anything else."""
    if c.new:
        return f"New findings in {c.new:,} sampled case(s) (red)", _NEW_COLOUR
    if c.sampled == c.stacked:
        return "No new finding (and no sampled case with an error/bound to draw)", "black"
    return "No new finding", "black"


def _header(fig: Any, c: SampleCounts, height: float, legend_at: float) -> None:
    """The verdict first, then the counts behind it, then the legend."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    text, colour = headline(c)
    fig.text(0.5, 1 - 0.12 / height, text, ha="center", va="top", fontsize=15, weight="bold", color=colour)
    counts = f"{c.sampled:,} sampled cases: {c.new:,} new, {c.known:,} known deviation(s), {c.passed:,} passed"
    if c.stacked:
        counts += f";\n{c.stacked:,} more passed inside stacked calls, judged as a group: no error/bound of their own"
    fig.text(0.5, 1 - 0.45 / height, counts, ha="center", va="top", fontsize=10, linespacing=1.4)
    handles = [
        Line2D([], [], ls="", marker="o", color=_NEW_COLOUR, mec="black", label="new finding"),
        Line2D([], [], ls="", marker="o", mfc="none", mec=_KNOWN_COLOUR, label="known deviation"),
        Patch(color="0.5", label="passed (darker: more)"),
        Line2D([], [], color="black", ls="--", lw=0.8, label="bound"),
    ]
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - legend_at / height),
        ncol=4,
        fontsize=10,
        frameon=False,
    )


def _draw(ax: Any, panel: Panel, count: np.ndarray, darkest: float) -> None:
    """One panel: passes as grey bins (one case in a bin is already visible), known deviations as open circles,
    new findings as red dots on top."""
    logs = np.where(count.T > 0, np.log10(np.maximum(count.T, 1)), np.nan)  # empty bins stay blank
    # One case per bin at 30% of the grey scale, the fullest bin of the figure at 75%: the markers stand out.
    span = darkest / 0.45
    ax.pcolormesh(*_EDGES, logs, cmap="Greys", vmin=-0.3 * span, vmax=0.7 * span, shading="flat", rasterized=True)
    ax.axhline(0, color="black", ls="--", lw=0.8)
    ax.scatter(*panel.known.T, s=18, facecolors="none", edgecolors=_KNOWN_COLOUR, linewidths=0.9, rasterized=True)
    ax.scatter(*panel.new.T, s=32, color=_NEW_COLOUR, edgecolors="black", linewidths=0.5, zorder=5)
    ax.set_xlim(*_X_RANGE)
    ax.set_ylim(*_Y_RANGE)
    ax.set_xticks([0, 5, 10], ["1", "1e5", "1e10"])
    ax.set_yticks([-8, -4, 0, 4, 8], ["≤1e-8", "1e-4", "1", "1e4", "≥1e8"])  # (ratios beyond are drawn at the edge)
    ax.tick_params(labelsize=9)
    found = [f"{len(a):,} {name}" for a, name in ((panel.new, "new"), (panel.known, "known")) if len(a)]
    ax.set_title(panel.quantity, fontsize=11, loc="left")
    ax.set_title(" · ".join(found), fontsize=9, loc="right", color=_NEW_COLOUR if len(panel.new) else _KNOWN_COLOUR)


def plot(points: Points, handle: IO[bytes]) -> None:
    """error/bound against offset/spread, one panel per quantity with data, as PNG."""
    plt = _pyplot()
    shown = panels(points)
    columns = _columns(max(len(shown), 1))
    rows = max(1, math.ceil(len(shown) / columns))
    # Margins fixed in inches, so the header keeps its room however many rows there are; wide enough for it.
    c = cases(points)
    legend_at = 0.9 if c.stacked else 0.68  # (below a second line of counts)
    width, height = max(0.95 + 2.75 * columns, 8.8), 2.4 * rows + 1.35 + legend_at
    fig = plt.figure(figsize=(width, height))
    fig.subplots_adjust(
        left=0.85 / width,
        right=1 - 0.15 / width,
        bottom=0.6 / height,
        top=1 - (legend_at + 0.65) / height,
        wspace=0.1,
        hspace=0.35,
    )
    _header(fig, c, height, legend_at)
    counts = [np.histogram2d(p.passed[:, 0], p.passed[:, 1], bins=_BINS, range=(_X_RANGE, _Y_RANGE))[0] for p in shown]
    darkest = max([1.0] + [math.log10(k.max()) for k in counts if k.any()])
    # The same fixed limits and ticks on every panel (comparable at a glance) and a fixed layout: matplotlib's tick
    # and tight-layout passes, not the data, were most of the drawing time.
    for i, (panel, count) in enumerate(zip(shown, counts, strict=True)):
        ax = fig.add_subplot(rows, columns, i + 1)
        _draw(ax, panel, count, darkest)
        if i % columns == 0:
            ax.set_ylabel("error / bound", fontsize=10)
        else:
            ax.tick_params(labelleft=False)
        if i + columns >= len(shown):  # nothing below it
            ax.set_xlabel("offset / spread", fontsize=10)
        else:
            ax.tick_params(labelbottom=False)
    _save(fig, handle, plt, tight=False, dpi=100)


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

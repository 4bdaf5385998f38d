"""The first two layers of report.md: what a maintainer reads in a minute, then the new deviations by cause.

Layer one (also ``summary.md``, which the nightly workflow puts in the GitHub step summary) fits on
one screen: the verdict, cases and rate, what changed since the baseline, and one row per cause
(fuzzing.causes) with where it showed, its smallest example and its reproducer.  Layer two gives
each new cause its smallest example's detail.  Everything per signature is the appendix
(the report package's markdown module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bnprops.fuzzing.causes import Cause, Changes
from bnprops.fuzzing.history import Run

#: How many values of a field a table cell lists before it says "N of them".
_LISTED = 4


def _some(values: Sequence[str]) -> str:
    if len(values) <= _LISTED:
        return ", ".join(values)
    return ", ".join(values[:_LISTED]) + f" (+{len(values) - _LISTED})"


def verdict(found: Sequence[Cause]) -> str:
    new = [c for c in found if c.new]
    if new:
        return f"**{len(new)} new deviation cause(s)** — they need a person (below)."
    return "**No new deviations.** Every departure from the oracle matches a recorded deviation's model."


def first_layer(
    *,
    started: str,
    cases: int,
    elapsed_s: float,
    cases_per_s: float,
    stop_reason: str,
    found: Sequence[Cause],
    change: Changes | None,
    history: Sequence[Run],
    link: Callable[[Cause], str],
    members: Sequence[str] = (),
    lifecycle: Sequence[str] = (),
    time_shares: Sequence[str] = (),
) -> list[str]:
    """The one-screen summary; ``link`` gives a cause's reproducer as markdown (or a reason there is none);
    ``members``: the line on the BatchNorm family's members that ran, if any; ``lifecycle``: the line on the
    life-cycle scenarios that ran, if any; ``time_shares``: where the
    workers' time went."""
    lines = [
        "# bnprops fuzz report",
        "",
        verdict(found),
        "",
        f"{cases:,} cases in {elapsed_s:.0f} s (**{cases_per_s:.1f} cases/s**), started {started}, stopped by "
        f"{stop_reason}.",
    ]
    if change is not None:
        lines += ["", *change.lines()]
    elif len(history) < 2:
        lines += ["", "No baseline: the first report in this folder (or pass --baseline)."]
    if len(history) >= 2:
        runs = history[-8:]
        trend = ", ".join(f"{r.cases_per_s:.0f}" for r in runs)
        news = ", ".join(str(len(r.new)) for r in runs)
        lines += ["", f"Last {len(runs)} runs: cases/s {trend}; new causes {news} (history.png)."]
    lines += [
        "",
        "| cause | cases | entry points | backends | dtypes | smallest example | reproducer |",
        "|---|---:|---|---|---|---|---|",
    ]
    for c in found:
        mark = "**NEW** " if c.new else ""
        example = c.smallest.case.describe().split(" regime=")[0] if c.smallest.network is None else "a chain"
        if c.smallest.sequence is not None:
            example = "a sequence"
        if c.smallest.lifecycle is not None:
            example = "a life-cycle scenario"
        lines.append(
            f"| {mark}{c.title()} | {c.count:,} | {_some(c.where('entry'))} | {_some(c.where('backend'))} | "
            f"{_some(c.where('dtype'))} | `{example}` | {link(c)} |"
        )
    if not found:
        lines.append("| (none: every case matched the oracle) | | | | | | |")
    if members:
        lines += ["", *members]
    if lifecycle:
        lines += ["", *lifecycle]
    if time_shares:
        lines += ["", *time_shares]
    return lines


def second_layer(found: Sequence[Cause], link: Callable[[Cause], str]) -> list[str]:
    """Each new cause: where it showed and its smallest example's detail."""
    new = [c for c in found if c.new]
    lines = ["", f"## New deviations by cause ({len(new)})", ""]
    if not new:
        return [*lines, "None."]
    for c in new:
        e = c.smallest
        lines += [
            f"### {c.title()}",
            "",
            f"- {c.count:,} case(s) under {len(c.entries)} signature(s): entry points {', '.join(c.where('entry'))}; "
            f"backends {', '.join(c.where('backend'))}; dtypes {', '.join(c.where('dtype'))}; value regimes "
            f"{', '.join(c.where('regime'))}",
            f"- smallest example ({e.reduction}): `{e.case.describe()}`; reproducer {link(c)}",
        ]
        if e.detail:
            lines += ["", "```", e.detail, "```"]
        lines.append("")
    return lines


def per_target_table(heading: str, blurb: str, counts: dict[str, dict[str, int]], results: Sequence[str]) -> list[str]:
    """A report section counting the checks run while exploring, per target: each result, and ms per check."""
    lines = [heading, "", blurb, ""]
    if not counts:
        return [*lines, "None ran."]
    lines += [
        "| target | checks | " + " | ".join(results) + " | ms per check |",
        "|---|---:|" + "---:|" * (len(results) + 1),
    ]
    for name in sorted(counts):
        cell = counts[name]
        per = cell.get("ms", 0) / max(cell.get("checks", 0), 1)
        lines.append(
            f"| {name} | {cell.get('checks', 0)} | "
            + " | ".join(str(cell.get(r, 0)) for r in results)
            + f" | {per:.0f} |"
        )
    return lines

"""A campaign's report: report.json for machines, report.md and errors.png for people, one file per finding.

The output folder holds, all written atomically:

* ``report.json``: run parameters, counts per entry point, backend, kernel and dtype, the catalogue
  (new deviations and known ones apart), the database replays, the worst errors;
* ``report.md``: the same for people, with the error plot ``errors.png``;
* ``findings/ID.json`` (the signature and the minimal case; ``bnprops repro`` takes it) and
  ``findings/ID.py`` (a standalone reproducer: mxnet and numpy only) for every catalogue entry;
* ``plot-data.npz``: the sampled points behind the plot, so ``bnprops merge`` can redraw it.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from bnprops import atomic, network_findings, relation_findings, relation_reproducer, sequence_findings
from bnprops.case import DTYPES, QUANTITIES
from bnprops.catalogue import KNOWN, RELATION, VERDICTS, Catalogue, Entry
from bnprops.fuzz import Config, Points, WorkerResult
from bnprops.reproducer import finding_json, script

REPORT_FORMAT = "bnprops.report/1"
RESULTS = ("passed", "known", "failed", "error")
FINDINGS = "findings"


@dataclasses.dataclass
class Report:
    """Everything a campaign (or a merge of campaigns) ran and found."""

    parameters: dict[str, Any]
    started: str
    elapsed_s: float
    cases: int
    shrink_calls: int
    stop_reason: str
    counts: dict[tuple[str, str, str, str], dict[str, int]]
    catalogue: Catalogue
    replays: list[dict[str, Any]]
    worst: dict[tuple[str, str], dict[str, Any]]
    skipped: list[dict[str, str]]
    points: Points
    notes: list[str] = dataclasses.field(default_factory=list)
    shards: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Cases drawn again by a worker that had judged them already (skipped).
    repeats: int = 0
    #: Exact relation checks run while exploring: relation -> {result: count} (relation_findings.RESULTS).
    relation_checks: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: Producer chains run while exploring: "entry/backend" -> {"checks"|network_findings.RESULTS: count}.
    network_checks: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: Training sequences run while exploring: "entry/backend" -> {"checks"|sequence_findings.RESULTS: count}.
    sequence_checks: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def crashed(self) -> bool:
        return "crashed" in self.stop_reason

    @property
    def new(self) -> list[Entry]:
        return self.catalogue.new()

    @property
    def known(self) -> list[Entry]:
        return self.catalogue.known()

    def totals(self) -> dict[str, int]:
        return {r: sum(c.get(r, 0) for c in self.counts.values()) for r in RESULTS}

    def summary(self) -> str:
        """The few lines a person reads first (the CLI prints them at the end of a run)."""
        t = self.totals()
        lines = [
            f"{self.cases} cases in {self.elapsed_s:.1f} s ({self.cases_per_s:.1f} cases/s; "
            f"{self.shrink_calls} more while shrinking); stopped by {self.stop_reason}",
            f"passed {t['passed']}, known deviations {t['known']}, new deviations {t['failed']}, "
            f"runner errors {t['error']}",
            f"catalogue: {len(self.new)} new signature(s), {len(self.known)} known signature(s)",
            f"exact relations: {sum(sum(c.values()) for c in self.relation_checks.values())} checks, "
            f"{sum(c.get('broken', 0) for c in self.relation_checks.values())} broken",
            f"networks: {sum(c.get('checks', 0) for c in self.network_checks.values())} chains, "
            f"{sum(c.get('known', 0) for c in self.network_checks.values())} with a known deviation, "
            f"{sum(c.get('checks', 0) - c.get('passed', 0) - c.get('known', 0) for c in self.network_checks.values())}"
            " with a new finding or more",
            f"training sequences: {sum(c.get('checks', 0) for c in self.sequence_checks.values())} run, "
            f"{sum(c.get('known', 0) for c in self.sequence_checks.values())} with a known deviation, "
            f"{sum(c.get('checks', 0) - c.get('passed', 0) - c.get('known', 0) for c in self.sequence_checks.values())}"
            " with a new finding",
        ]
        for title, entries in (("NEW", self.new), ("known", self.known)):
            for e in entries:
                lines.append(f"  {title:5} x{e.count:<6} {e.signature.describe()}  [{e.reduction}: {e.case.shape}]")
        for r in self.replays:
            lines.append(f"  replayed {r['id']}: {r['status']}")
        return "\n".join(lines)

    # JSON.
    def to_dict(self) -> dict[str, Any]:
        def entry(e: Entry) -> dict[str, Any]:
            if not _has_files(e):
                return {**e.to_dict(), "case_file": None, "reproducer": None}
            return {**e.to_dict(), "case_file": f"{FINDINGS}/{e.signature.ident}.json", "reproducer": _repro(e)}

        return {
            "format": REPORT_FORMAT,
            "parameters": self.parameters,
            "started": self.started,
            "elapsed_s": self.elapsed_s,
            "cases": self.cases,
            "cases_per_s": self.cases_per_s,
            "shrink_calls": self.shrink_calls,
            "repeats_skipped": self.repeats,
            "relation_checks": self.relation_checks,
            "network_checks": self.network_checks,
            "sequence_checks": self.sequence_checks,
            "stop_reason": self.stop_reason,
            "totals": self.totals(),
            "counts": [
                {"entry": k[0], "backend": k[1], "kernel": k[2], "dtype": k[3], "cases": sum(v.values()), **v}
                for k, v in sorted(self.counts.items())
            ],
            "catalogue": {"new": [entry(e) for e in self.new], "known": [entry(e) for e in self.known]},
            "replays": self.replays,
            "worst": sorted(self.worst.values(), key=lambda w: -w["ratio"]),
            "skipped_targets": self.skipped,
            "notes": self.notes,
            "shards": self.shards,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], points: Points) -> Report:
        if data.get("format") != REPORT_FORMAT:
            raise ValueError(f"not a bnprops report (format {data.get('format')!r}, expected {REPORT_FORMAT!r})")
        counts = {
            (c["entry"], c["backend"], c["kernel"], c["dtype"]): {r: int(c[r]) for r in RESULTS if r in c}
            for c in data["counts"]
        }
        catalogue = Catalogue(Entry.from_dict(e) for e in data["catalogue"]["new"] + data["catalogue"]["known"])
        return cls(
            parameters=data["parameters"],
            started=data["started"],
            elapsed_s=float(data["elapsed_s"]),
            cases=int(data["cases"]),
            shrink_calls=int(data["shrink_calls"]),
            stop_reason=data["stop_reason"],
            counts=counts,
            catalogue=catalogue,
            replays=data["replays"],
            worst={(w["dtype"], w["quantity"]): w for w in data["worst"]},
            skipped=data["skipped_targets"],
            points=points,
            notes=data.get("notes", []),
            shards=data.get("shards", []),
            repeats=int(data.get("repeats_skipped", 0)),
            relation_checks=data.get("relation_checks", {}),
            network_checks=data.get("network_checks", {}),
            sequence_checks=data.get("sequence_checks", {}),
        )


#: A known deviation whose smallest example has more elements than this gets no files of its own: its
#: arrays would make reproducers of hundreds of MB, and the deviation's minimal reproducer
#: (bnprops/known_deviations.py) shows it already.  New findings always get theirs (shrunk, they are small).
LARGE_EXAMPLE = 100_000


def _has_files(e: Entry) -> bool:
    if e.network is not None or e.sequence is not None:
        return True
    return not (e.signature.kind == KNOWN and e.case.x.size > LARGE_EXAMPLE)


def _repro(e: Entry) -> str:
    return f"{FINDINGS}/{e.signature.ident}.py"


def from_workers(
    config: Config,
    results: Sequence[WorkerResult],
    *,
    started: datetime.datetime,
    elapsed_s: float,
    skipped: list[dict[str, str]],
    interrupted: bool,
) -> Report:
    """One shard's report from its workers' results."""
    catalogue = Catalogue()
    counts: dict[tuple[str, str, str, str], dict[str, int]] = {}
    worst: dict[tuple[str, str], dict[str, Any]] = {}
    points = Points.empty()
    notes: list[str] = []
    relation_checks: dict[str, dict[str, int]] = {}
    network_checks: dict[str, dict[str, int]] = {}
    sequence_checks: dict[str, dict[str, int]] = {}
    for r in results:
        _add_counts(relation_checks, r.relations)
        _add_counts(network_checks, r.networks)
        _add_counts(sequence_checks, r.sequences)
        catalogue.merge(Catalogue(r.entries))
        _add_counts(counts, r.counts)
        _add_worst(worst, r.worst.values())
        points = points.concat(r.points)
        if r.error:
            notes.append(f"worker {r.worker} stopped on an error (what it ran is reported):\n{r.error}")
    reasons = {r.stop_reason for r in results}
    stop = "interrupted" if interrupted else ("time" if "time" in reasons else ", ".join(sorted(reasons)))
    return Report(
        parameters=config.to_dict(),
        started=started.isoformat(timespec="seconds"),
        elapsed_s=elapsed_s,
        cases=sum(r.cases for r in results),
        shrink_calls=sum(r.shrink_calls for r in results),
        stop_reason=stop,
        counts=counts,
        catalogue=catalogue,
        replays=[row for r in results for row in r.replays],
        worst=worst,
        skipped=skipped,
        points=points,
        notes=notes,
        repeats=sum(r.repeats for r in results),
        relation_checks=relation_checks,
        network_checks=network_checks,
        sequence_checks=sequence_checks,
    )


def _add_counts(into: dict[Any, dict[str, int]], more: dict[Any, dict[str, int]]) -> None:
    """Add per-cell result counts (keys: a target tuple, which JSON gives back as a list, or a name)."""
    for key, cell in more.items():
        target = into.setdefault(tuple(key) if isinstance(key, list | tuple) else key, {})
        for result, n in cell.items():
            target[result] = target.get(result, 0) + n


def _example_line(e: Entry) -> str:
    """The report's line on a finding's example: a case, a chain, or a sequence (the shortest first)."""
    if e.network is not None:
        return f"- {e.count} chain(s) in this run; chain {e.reduction}: `{network_findings.chain_of(e).describe()}`"
    if e.sequence is not None:
        described = sequence_findings.sequence_of(e).describe()
        return f"- {e.count} sequence(s) in this run; sequence {e.reduction}: `{described}`"
    return f"- {e.count} case(s) in this run; example {e.reduction}: `{e.case.describe()}`"


def _add_worst(into: dict[tuple[str, str], dict[str, Any]], rows: Iterable[dict[str, Any]]) -> None:
    for row in rows:
        key = (row["dtype"], row["quantity"])
        if key not in into or row["ratio"] > into[key]["ratio"]:
            into[key] = row


# Writing.
def _finding_files(e: Entry) -> tuple[str, str]:
    """findings/ID.json and ID.py; a broken relation's reproducer runs both calls (bnprops/relation_reproducer.py)."""
    if e.signature.kind == RELATION:
        return relation_findings.finding_json(e, finding_json(e)), relation_reproducer.script(e)
    if e.network is not None:  # a network finding or a recorded network deviation: the chain's own script
        return network_findings.finding_json(e, finding_json(e)), network_findings.script(e)
    if e.sequence is not None:  # a training sequence: its replay script
        return sequence_findings.finding_json(e, finding_json(e)), sequence_findings.script(e)
    return finding_json(e), script(e)


def write(report: Report, out: Path) -> None:
    """Write every file of the report into ``out`` (atomically, one by one; report.json last)."""
    out.mkdir(parents=True, exist_ok=True)
    findings = out / FINDINGS
    findings.mkdir(exist_ok=True)
    keep = set()
    for e in report.catalogue.entries.values():
        if not _has_files(e):
            continue
        case_file, reproducer = _finding_files(e)
        atomic.write_text(findings / f"{e.signature.ident}.json", case_file)
        atomic.write_text(out / _repro(e), reproducer, executable=True)
        keep |= {f"{e.signature.ident}.json", f"{e.signature.ident}.py"}
    for stale in findings.iterdir():
        # Yesterday's findings that did not come back this time (their report is gone too).
        if stale.suffix in (".json", ".py") and stale.name not in keep:
            stale.unlink()
    atomic.write_with(out / "plot-data.npz", lambda f: _save_points(f, report.points))
    atomic.write_with(out / "errors.png", lambda f: plot(report.points, f))
    atomic.write_text(out / "report.md", markdown(report))
    atomic.write_text(out / "report.json", json.dumps(_jsonable(report.to_dict()), indent=1) + "\n")


def _jsonable(value: Any) -> Any:
    """Strict JSON: infinite and NaN ratios become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _float(value: Any) -> float:
    return float(value)


def _save_points(handle: IO[bytes], points: Points) -> None:
    np.savez_compressed(
        handle,
        dtype=points.dtype,
        cond=points.cond,
        ratio=points.ratio,
        seen=np.array(points.seen),
        quantities=QUANTITIES,
    )


def load(out: Path) -> Report:
    """Read a report folder back (for merge)."""
    path = out / "report.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{out} holds no report.json; is it a bnprops fuzz output folder?") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} does not parse: {exc}") from exc
    for row in data.get("worst", []):
        row["ratio"] = _float(row["ratio"])
    points = Points.empty()
    npz = out / "plot-data.npz"
    if npz.exists():
        with np.load(npz) as f:
            points = Points(f["dtype"], f["cond"], f["ratio"], int(f["seen"]))
    return Report.from_dict(data, points)


def merge(reports: Sequence[Report], *, sources: Sequence[str]) -> Report:
    """One report from several shards' reports: counts add up, catalogues merge by signature."""
    if not reports:
        raise ValueError("nothing to merge")
    catalogue = Catalogue()
    counts: dict[tuple[str, str, str, str], dict[str, int]] = {}
    worst: dict[tuple[str, str], dict[str, Any]] = {}
    points = Points.empty()
    notes: list[str] = []
    shards = []
    seen_shards: dict[str, str] = {}
    relation_checks: dict[str, dict[str, int]] = {}
    network_checks: dict[str, dict[str, int]] = {}
    sequence_checks: dict[str, dict[str, int]] = {}
    for src, r in zip(sources, reports, strict=True):
        _add_counts(relation_checks, r.relation_checks)
        _add_counts(network_checks, r.network_checks)
        _add_counts(sequence_checks, r.sequence_checks)
        catalogue.merge(r.catalogue)
        _add_counts(counts, r.counts)
        _add_worst(worst, r.worst.values())
        points = points.concat(r.points)
        notes += [f"{src}: {n}" for n in r.notes]
        for sub in r.shards or [{"source": src, "parameters": r.parameters, "cases": r.cases}]:
            label = f"{sub['parameters'].get('seed')}:{sub['parameters'].get('shard')}"
            if label in seen_shards:
                notes.append(f"{sub['source']} and {seen_shards[label]} are the same shard (seed:shard {label})")
            seen_shards[label] = sub["source"]
            shards.append(sub)
    return Report(
        parameters={"merged": len(reports), "sources": list(sources)},
        started=min(r.started for r in reports),
        # Shards run side by side: the campaign took as long as the slowest; cases/s adds up.
        elapsed_s=max(r.elapsed_s for r in reports),
        cases=sum(r.cases for r in reports),
        shrink_calls=sum(r.shrink_calls for r in reports),
        stop_reason=", ".join(sorted({r.stop_reason for r in reports})),
        counts=counts,
        catalogue=catalogue,
        replays=[{**row, "source": src} for src, r in zip(sources, reports, strict=True) for row in r.replays],
        worst=worst,
        skipped=[s for r in reports for s in r.skipped],
        points=points,
        notes=notes,
        shards=shards,
        repeats=sum(r.repeats for r in reports),
        relation_checks=relation_checks,
        network_checks=network_checks,
        sequence_checks=sequence_checks,
    )


# People.
def markdown(report: Report) -> str:
    t = report.totals()
    p = report.parameters
    lines = [
        "# bnprops fuzz report",
        "",
        f"Started {report.started}; {report.cases} cases in {report.elapsed_s:.1f} s "
        f"(**{report.cases_per_s:.1f} cases/s**, plus {report.shrink_calls} runs while shrinking); "
        f"stopped by {report.stop_reason}.",
        "",
        f"**{len(report.new)} new deviation signature(s)**, {len(report.known)} known deviation signature(s). "
        f"Cases: {t['passed']} passed, {t['known']} known deviations, {t['failed']} new deviations, "
        f"{t['error']} runner errors.",
        "",
        "## Run parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in p.items()),
        "",
        "## Cases per entry point, backend and dtype",
        "",
        "| entry | backend | kernel | dtype | cases | passed | known | failed | error |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for (entry, backend, kernel, dtype), cell in sorted(report.counts.items()):
        lines.append(
            f"| {entry} | {backend} | {kernel} | {dtype} | {sum(cell.values())} | "
            + " | ".join(str(cell.get(r, 0)) for r in RESULTS)
            + " |"
        )
    for title, entries, blurb in (
        (
            "New deviations",
            report.new,
            "Not explained by bnprops/known_deviations.py: these need a person. An `unrecorded` finding lies in a "
            "known deviation's region but matches neither the oracle nor the deviation's model: it deviates, "
            "but not as recorded. A `network` finding is BatchNorm inside a producer chain (its example is the chain); "
            "a `sequence` finding is the state of one BatchNorm after a sequence of training rules (its example is the "
            "shortest sequence found).",
        ),
        (
            "Known deviations",
            report.known,
            "Each matches the recorded deviation: MXNet returned what the deviation's model in "
            "bnprops/known_deviations.py predicts (listed for completeness).",
        ),
    ):
        lines += ["", f"## {title} ({len(entries)})", "", blurb, ""]
        if not entries:
            lines.append("None.")
        for e in entries:
            s = e.signature
            flags = ", ".join(f"{k}={v}" for k, v in s.flags)
            lines += [
                f"### `{s.ident}`",
                "",
                f"- **{s.kind}** in `{s.quantity}`"
                + (f" (known deviation `{s.deviation}`)" if s.deviation else "")
                + (f": {VERDICTS[s.kind]}" if s.kind in VERDICTS else ""),
                f"- entry point `{s.entry}`, backend `{s.backend}`, dtype `{s.dtype}`, {flags}, value regime "
                f"`{s.regime}`",
                _example_line(e),
                f"- case: [{FINDINGS}/{s.ident}.json]({FINDINGS}/{s.ident}.json) "
                f"(`bnprops repro {FINDINGS}/{s.ident}.json`); reproducer: [{_repro(e)}]({_repro(e)}) "
                f"(`python {_repro(e)}`)"
                if _has_files(e)
                else f"- no files: the example has {e.case.x.size:,} elements; the deviation's own reproducer "
                "is in bnprops/known_deviations.py",
            ]
            if e.detail:
                lines += ["", "```", e.detail, "```"]
            lines.append("")
    if report.replays:
        lines += ["", "## Replayed from the example database", "", "| finding | status |", "|---|---|"]
        lines += [f"| `{r['id']}` | {r['status']} |" for r in report.replays]
    if report.skipped:
        lines += ["", "## Skipped targets", ""]
        lines += [f"- {s['entry']}/{s['backend']}: {s['reason']}" for s in report.skipped]
    lines += ["", *relation_findings.summary_lines(report.relation_checks)]
    lines += ["", *network_findings.summary_lines(report.network_checks)]
    lines += ["", *sequence_findings.summary_lines(report.sequence_checks)]
    lines += [
        "",
        "## Worst errors",
        "",
        "The largest error/bound ratio seen per dtype and quantity (above 1 is a failure).",
        "",
        "| dtype | quantity | error/bound | failed | entry/backend | case |",
        "|---|---|---:|---|---|---|",
    ]
    for w in sorted(report.worst.values(), key=lambda w: (-float(w["ratio"]), w["dtype"], w["quantity"])):
        lines.append(
            f"| {w['dtype']} | {w['quantity']} | {float(w['ratio']):.3g} | {'yes' if w['failed'] else ''} | "
            f"{w['entry']}/{w['backend']} | `{w['case']}` |"
        )
    lines += [
        "",
        "## Error against conditioning",
        "",
        f"![error/bound against offset/spread](errors.png) ({len(report.points.cond)} of "
        f"{report.points.seen} cases sampled)",
        "",
        "x: offset/spread = max over channels of |mean| / sqrt(var + eps), how much cancellation the "
        "statistics suffer; y: the largest error/bound ratio in the quantity (the red line is the bound).",
    ]
    if report.shards:
        lines += ["", "## Shards", ""]
        lines += [
            f"- {s['source']}: shard {s['parameters'].get('shard')}, seed {s['parameters'].get('seed')}, "
            f"{s['cases']} cases"
            for s in report.shards
        ]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def plot(points: Points, handle: IO[bytes]) -> None:
    """error/bound against offset/spread, one panel per dtype (row) and quantity (column), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = [i for i, _ in enumerate(DTYPES) if (points.dtype == i).any()] or [0]
    quantities = [j for j in range(len(QUANTITIES)) if np.isfinite(points.ratio[:, j]).any()] or [0]
    fig, axes = plt.subplots(
        len(dtypes), len(quantities), figsize=(2.4 * len(quantities), 2.2 * len(dtypes)), squeeze=False
    )
    x_all = np.log10(np.clip(points.cond, 1e-3, 1e12))
    for r, di in enumerate(dtypes):
        for c, qj in enumerate(quantities):
            ax = axes[r][c]
            rows = points.dtype == di
            ratio = points.ratio[rows, qj]
            x = x_all[rows]
            keep = ~np.isnan(ratio)
            y = np.log10(np.clip(ratio[keep], 1e-8, 1e8))
            bad = ratio[keep] > 1
            ax.scatter(x[keep][~bad], y[~bad], s=2, alpha=0.3, color="tab:blue", rasterized=True)
            ax.scatter(x[keep][bad], y[bad], s=6, color="tab:red", rasterized=True)
            ax.axhline(0, color="red", linewidth=0.8)
            ax.set_ylim(-8.5, 8.5)
            ax.set_title(f"{DTYPES[di]} {QUANTITIES[qj]}", fontsize=8)
            ax.tick_params(labelsize=6)
            if c == 0:
                ax.set_ylabel("log10 error/bound", fontsize=7)
            if r == len(dtypes) - 1:
                ax.set_xlabel("log10 offset/spread", fontsize=7)
    if not len(points.cond):
        fig.suptitle("no cases were judged")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    handle.write(buffer.getvalue())

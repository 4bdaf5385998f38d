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
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from bnprops.base import atomic
from bnprops.fuzzing import network_findings, relation_findings, relation_reproducer, sequence_findings
from bnprops.fuzzing.catalogue import KNOWN, RELATION, VERDICTS, Catalogue, Entry
from bnprops.fuzzing.causes import Cause, Changes, Run, causes, changes, load_history, read_baseline, record, run_of
from bnprops.fuzzing.plan import Config
from bnprops.fuzzing.report.plots import plot, plot_history
from bnprops.fuzzing.report.summary import first_layer, second_layer
from bnprops.fuzzing.reproducer import finding_json, script
from bnprops.fuzzing.tallies import NEW, PASSED, Points, WorkerResult
from bnprops.model.case import QUANTITIES

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
    def causes(self) -> list[Cause]:
        return causes(self.catalogue.entries.values())

    def to_dict(self) -> dict[str, Any]:
        return report_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], points: Points) -> Report:
        return report_from_dict(data, points)


#: A known deviation whose smallest example has more elements than this gets no files of its own: its
#: arrays would make reproducers of hundreds of MB, and the deviation's minimal reproducer (its module of
#: judging.deviations) shows it already.  New findings always get theirs (shrunk, they are small).
LARGE_EXAMPLE = 100_000


def _has_files(e: Entry) -> bool:
    if e.network is not None or e.sequence is not None:
        return True
    return not (e.signature.kind == KNOWN and e.case.x.size > LARGE_EXAMPLE)


def _repro(e: Entry) -> str:
    return f"{FINDINGS}/{e.signature.ident}.py"


def files_of(found: Sequence[Cause]) -> dict[str, str]:
    """Which signature's files stand for each signature: its cause's smallest example of its kind (one reproducer
    per cause and kind, not one per signature); signatures whose stand-in has no files are left out."""
    files: dict[str, str] = {}
    for c in found:
        chosen = {e.signature.kind: e for e in reversed(c.entries)}  # the smallest of each kind wins
        for e in c.entries:
            stand_in = chosen[e.signature.kind]
            if _has_files(stand_in):
                files[e.signature.ident] = stand_in.signature.ident
    return files


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
    """findings/ID.json and ID.py; a broken relation's reproducer runs both calls
    (fuzzing.relation_reproducer)."""
    if e.signature.kind == RELATION:
        return relation_findings.finding_json(e, finding_json(e)), relation_reproducer.script(e)
    if e.network is not None:  # a network finding or a recorded network deviation: the chain's own script
        return network_findings.finding_json(e, finding_json(e)), network_findings.script(e)
    if e.sequence is not None:  # a training sequence: its replay script
        return sequence_findings.finding_json(e, finding_json(e)), sequence_findings.script(e)
    return finding_json(e), script(e)


def write(report: Report, out: Path, *, baseline: Path | None = None) -> None:
    """Write every file of the report into ``out`` (atomically, one by one; report.json last).

    What changed is measured against ``baseline`` (a report.json or its folder), else against the report
    this one replaces in ``out``; the run joins ``out``'s history.  Raises ValueError for an unreadable
    baseline that was asked for.
    """
    out.mkdir(parents=True, exist_ok=True)
    if baseline is not None:
        before = read_baseline(baseline)
        if before is None:
            raise ValueError(f"--baseline {baseline}: no report.json there")
        name = str(baseline)
    else:
        try:
            before, name = read_baseline(out), "the previous report in this folder"
        except ValueError:
            before, name = None, ""  # a damaged previous report: no comparison, and it is replaced below
    found = report.causes()
    change = changes(found, report.cases_per_s, before, name=name)
    history = record(out, run_of(report.started, report.cases, report.cases_per_s, found), load_history(out))
    findings = out / FINDINGS
    findings.mkdir(exist_ok=True)
    keep = set()
    stand_ins = set(files_of(found).values())
    for e in report.catalogue.entries.values():
        if e.signature.ident not in stand_ins:
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
    atomic.write_with(out / "history.png", lambda f: plot_history(history, f))
    first = _first_layer(report, found, change, history)
    atomic.write_text(out / "summary.md", "\n".join(first) + "\n")
    atomic.write_text(out / "report.md", markdown(report, first=first, found=found))
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
        kind=points.kind,
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
            # (a sample saved before the classes were kept: whatever exceeds its bound counts as new, as drawn then)
            kind = f["kind"] if "kind" in f else np.where(f["ratio"] > 1, NEW, PASSED).astype(np.int8)
            points = Points(f["dtype"], f["cond"], f["ratio"], kind, int(f["seen"]))
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
        parameters={
            "merged": len(reports),
            "sources": list(sources),
            # Which MXNet and oneDNN ran (fuzzing.campaign): one value, or every distinct one.
            **{
                key: ", ".join(sorted({str(r.parameters[key]) for r in reports if key in r.parameters}))
                for key in ("mxnet_version", "onednn_version")
                if any(key in r.parameters for r in reports)
            },
        },
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
def _link(c: Cause) -> str:
    stand_in = files_of([c]).get(c.smallest.signature.ident)
    if stand_in is None:
        return "in its module of bnprops/judging/deviations/ (example too large for files)"
    return f"[{FINDINGS}/{stand_in}.py]({FINDINGS}/{stand_in}.py)"


def _first_layer(report: Report, found: Sequence[Cause], change: Changes | None, history: Sequence[Run]) -> list[str]:
    return first_layer(
        started=report.started,
        cases=report.cases,
        elapsed_s=report.elapsed_s,
        cases_per_s=report.cases_per_s,
        stop_reason=report.stop_reason,
        found=found,
        change=change,
        history=history,
        link=_link,
    )


def _software_line(parameters: dict[str, Any]) -> list[str]:
    """Which MXNet and oneDNN ran (fuzzing.campaign records them): the same code deviates in one release
    and not in another."""
    if "mxnet_version" not in parameters:
        return []
    onednn = str(parameters.get("onednn_version", "unknown"))
    onednn = onednn if onednn.split()[0] in ("oneDNN", "DNNL", "MKL-DNN", "Intel") else f"oneDNN {onednn}"
    return ["", f"Software under test: MXNet {parameters['mxnet_version']}, {onednn}."]


def markdown(report: Report, *, first: Sequence[str] | None = None, found: Sequence[Cause] | None = None) -> str:
    """report.md: the one-screen summary, the new deviations by cause, then every signature in a collapsed appendix."""
    found = report.causes() if found is None else found
    if first is None:
        first = _first_layer(report, found, None, ())
    head = [
        *first,
        *_software_line(report.parameters),
        *second_layer(found, _link),
        "",
        "<details><summary>Appendix: every signature, the counts, the "
        "checks run while exploring and the worst errors</summary>",
        "",
    ]
    return "\n".join(head) + "\n" + _appendix(report) + "\n\n</details>\n"


def _appendix(report: Report) -> str:
    t = report.totals()
    p = report.parameters
    files = files_of(report.causes())
    lines = [
        "## Appendix",
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
            "Not explained by a recorded deviation (docs/deviations.md): these need a person. "
            "An `unrecorded` finding lies in a "
            "known deviation's region but matches neither the oracle nor the deviation's model: it deviates, "
            "but not as recorded. A `network` finding is BatchNorm inside a producer chain (its example is the chain); "
            "a `sequence` finding is the state of one BatchNorm after a sequence of training rules (its example is the "
            "shortest sequence found).",
        ),
        (
            "Known deviations",
            report.known,
            "Each matches the recorded deviation: MXNet returned what the deviation's model in "
            "docs/deviations.md predicts (listed for completeness).",
        ),
    ):
        lines += ["", f"## {title} ({len(entries)})", "", blurb, ""]
        lines += _signature_lines(entries, files, detailed=NEW_DETAILED if title.startswith("New") else 0)
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
        "One panel per quantity with data, every dtype together: red dots are new findings, open blue circles "
        "departures a recorded deviation explains (known deviations, above the bound as a new one would be), grey "
        "bins the cases that passed (darker: more); the dashed line is the bound. Cases that passed inside a stacked "
        "call are judged as a group and have no error/bound of their own: counted, not drawn. "
        "x: offset/spread = max over channels of |mean| / sqrt(var + eps), how much cancellation the "
        "statistics suffer; y: the largest error/bound ratio in the quantity.",
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


#: How many signatures the appendix lists (the most frequent first; report.json holds every one), and how many
#: new ones it shows in full: a planted fault shows under a hundred signatures, one cause in the body.
APPENDIX_SIGNATURES = 40
NEW_DETAILED = 8


def _signature_lines(entries: Sequence[Entry], files: dict[str, str], *, detailed: int) -> list[str]:
    """The first ``detailed`` signatures in full (detail, example, files), the next as table rows, the rest counted."""
    if not entries:
        return ["None."]
    lines: list[str] = []
    for e in entries[:detailed]:
        s = e.signature
        flags = ", ".join(f"{k}={v}" for k, v in s.flags)
        lines += [
            f"### `{s.ident}`",
            "",
            f"- **{s.kind}** in `{s.quantity}`"
            + (f" (known deviation `{s.deviation}`)" if s.deviation else "")
            + (f": {VERDICTS[s.kind]}" if s.kind in VERDICTS else ""),
            f"- entry point `{s.entry}`, backend `{s.backend}`, dtype `{s.dtype}`, {flags}, value regime `{s.regime}`",
            _example_line(e),
            _files_line(e, files.get(s.ident)),
        ]
        lines += ["", "```", e.detail, "```", ""] if e.detail else [""]
    rows = entries[detailed:APPENDIX_SIGNATURES]
    if rows:
        lines += [
            "| signature | kind | quantity | where | flags, regime | cases | example |",
            "|---|---|---|---|---|---:|---|",
        ]
        for e in rows:
            s = e.signature
            flags = ", ".join([*(f"{k}={v}" for k, v in s.flags), s.regime])
            example = _example_line(e).split(": ", 1)[-1]
            lines.append(
                f"| `{s.ident}` | {s.kind} | `{s.quantity}` | {s.entry}/{s.backend} {s.dtype} | {flags} | {e.count} "
                f"| {_cell(example)} |"
            )
    rest = len(entries) - min(len(entries), max(detailed, APPENDIX_SIGNATURES))
    if rest > 0:
        lines += ["", f"{rest} more signature(s), the least frequent: report.json lists every one."]
    return lines


def _files_line(e: Entry, stand_in: str | None) -> str:
    if stand_in is None:
        return (
            f"- no files: the example has {e.case.x.size:,} elements; the deviation's own reproducer is in "
            "its module of bnprops/judging/deviations/"
        )
    which = "" if stand_in == e.signature.ident else f" (its cause's smallest example, `{stand_in}`)"
    case, repro = f"{FINDINGS}/{stand_in}.json", f"{FINDINGS}/{stand_in}.py"
    return f"- case: [{case}]({case}) (`bnprops repro {case}`); reproducer: [{repro}]({repro}){which}"


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def report_to_dict(report: Report) -> dict[str, Any]:
    """report.json: every signature pointing at its cause's files, the causes, counts and checks."""
    files = files_of(report.causes())

    def entry(e: Entry) -> dict[str, Any]:
        # A signature's files are its cause's (the smallest example of its kind), if that has any.
        stand_in = files.get(e.signature.ident)
        if stand_in is None:
            return {**e.to_dict(), "case_file": None, "reproducer": None}
        return {
            **e.to_dict(),
            "case_file": f"{FINDINGS}/{stand_in}.json",
            "reproducer": f"{FINDINGS}/{stand_in}.py",
        }

    def cause(c: Cause) -> dict[str, Any]:
        return {
            "key": c.key,
            "new": c.new,
            "title": c.title(),
            "cases": c.count,
            "signatures": [e.signature.ident for e in c.entries],
            "entry_points": list(c.where("entry")),
            "backends": list(c.where("backend")),
            "dtypes": list(c.where("dtype")),
            "regimes": list(c.where("regime")),
            "smallest": c.smallest.signature.ident,
            "reproducer": entry(c.smallest)["reproducer"],
        }

    return {
        "format": REPORT_FORMAT,
        "parameters": report.parameters,
        "started": report.started,
        "elapsed_s": report.elapsed_s,
        "cases": report.cases,
        "cases_per_s": report.cases_per_s,
        "shrink_calls": report.shrink_calls,
        "repeats_skipped": report.repeats,
        "relation_checks": report.relation_checks,
        "network_checks": report.network_checks,
        "sequence_checks": report.sequence_checks,
        "stop_reason": report.stop_reason,
        "totals": report.totals(),
        "counts": [
            {"entry": k[0], "backend": k[1], "kernel": k[2], "dtype": k[3], "cases": sum(v.values()), **v}
            for k, v in sorted(report.counts.items())
        ],
        "causes": [cause(c) for c in report.causes()],
        "catalogue": {"new": [entry(e) for e in report.new], "known": [entry(e) for e in report.known]},
        "replays": report.replays,
        "worst": sorted(report.worst.values(), key=lambda w: -w["ratio"]),
        "skipped_targets": report.skipped,
        "notes": report.notes,
        "shards": report.shards,
    }


def report_from_dict(data: dict[str, Any], points: Points) -> Report:
    if data.get("format") != REPORT_FORMAT:
        raise ValueError(f"not a bnprops report (format {data.get('format')!r}, expected {REPORT_FORMAT!r})")
    counts = {
        (c["entry"], c["backend"], c["kernel"], c["dtype"]): {r: int(c[r]) for r in RESULTS if r in c}
        for c in data["counts"]
    }
    catalogue = Catalogue(Entry.from_dict(e) for e in data["catalogue"]["new"] + data["catalogue"]["known"])
    return Report(
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

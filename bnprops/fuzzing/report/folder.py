"""A campaign's output folder: report.json for machines, report.md and errors.png for people, one file per finding.

The folder holds, all written atomically:

* ``report.json``: run parameters, counts per entry point, backend, kernel and dtype, the catalogue
  (new deviations and known ones apart), the database replays, the worst errors;
* ``report.md`` and ``summary.md``: the same for people, with the error plot ``errors.png``;
* ``findings/ID.json`` (the signature and the minimal case; ``bnprops repro`` takes it) and
  ``findings/ID.py`` (a standalone reproducer: mxnet and numpy only) for each cause's smallest example;
* ``plot-data.npz``: the sampled points behind the plot, so ``bnprops merge`` can redraw it;
* ``history.json`` and ``history.png``: the runs so far.

``load`` reads a folder back, for a merge.
"""

from __future__ import annotations

import json
from pathlib import Path

from bnprops.base import atomic
from bnprops.fuzzing import (
    lifecycle_findings,
    member_findings,
    network_findings,
    relation_findings,
    relation_reproducer,
    sequence_findings,
)
from bnprops.fuzzing.catalogue import RELATION, Entry
from bnprops.fuzzing.causes import changes, read_baseline
from bnprops.fuzzing.history import load_history, record, run_of
from bnprops.fuzzing.report.codec import load_points, report_from_dict, save_points, to_json
from bnprops.fuzzing.report.markdown import first_layer_of, markdown
from bnprops.fuzzing.report.model import FINDINGS, Report, files_of
from bnprops.fuzzing.report.plots import plot, plot_history
from bnprops.fuzzing.reproducer import finding_json, script
from bnprops.fuzzing.tallies import Points


def _repro(e: Entry) -> str:
    return f"{FINDINGS}/{e.signature.ident}.py"


def _finding_files(e: Entry) -> tuple[str, str]:
    """findings/ID.json and ID.py; a broken relation's reproducer runs both calls
    (fuzzing.relation_reproducer)."""
    if e.signature.kind == RELATION:
        return relation_findings.finding_json(e, finding_json(e)), relation_reproducer.script(e)
    if e.network is not None:  # a network finding or a recorded network deviation: the chain's own script
        return network_findings.finding_json(e, finding_json(e)), network_findings.script(e)
    if e.sequence is not None:  # a training sequence: its replay script
        return sequence_findings.finding_json(e, finding_json(e)), sequence_findings.script(e)
    if e.lifecycle is not None:  # a life-cycle scenario: the kernel's source, the scenario and the comparison
        return lifecycle_findings.finding_json(e, finding_json(e)), lifecycle_findings.script(e)
    if member_findings.is_member_entry(e):  # a family member's call: its own call, judged by its judge's view
        return finding_json(e), member_findings.script(e)
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
    atomic.write_with(out / "plot-data.npz", lambda f: save_points(f, report.points))
    atomic.write_with(out / "errors.png", lambda f: plot(report.points, f))
    atomic.write_with(out / "history.png", lambda f: plot_history(history, f))
    first = first_layer_of(report, found, change, history)
    atomic.write_text(out / "summary.md", "\n".join(first) + "\n")
    atomic.write_text(out / "report.md", markdown(report, first=first, found=found))
    atomic.write_text(out / "report.json", to_json(report))


def load(out: Path) -> Report:
    """Read a report folder back (for merge)."""
    path = out / "report.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"{out} holds no report.json; is it a bnprops fuzz output folder?") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} does not parse: {exc}") from exc
    points = Points.empty()
    npz = out / "plot-data.npz"
    if npz.exists():
        with npz.open("rb") as handle:
            points = load_points(handle)
    return report_from_dict(data, points)

"""report.md: the summary's two layers (the report package's summary module), then every signature, the counts,
the checks run while exploring and the worst errors in a collapsed appendix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bnprops.fuzzing import (
    lifecycle_findings,
    member_findings,
    network_findings,
    relation_findings,
    sequence_findings,
    time_shares,
)
from bnprops.fuzzing.catalogue import VERDICTS, Entry
from bnprops.fuzzing.causes import Cause, Changes
from bnprops.fuzzing.history import Run
from bnprops.fuzzing.report.model import FINDINGS, RESULTS, Report, files_of
from bnprops.fuzzing.report.summary import first_layer, second_layer


def _link(c: Cause) -> str:
    stand_in = files_of([c]).get(c.smallest.signature.ident)
    if stand_in is None:
        return "in its module of bnprops/judging/deviations/ (example too large for files)"
    return f"[{FINDINGS}/{stand_in}.py]({FINDINGS}/{stand_in}.py)"


def first_layer_of(report: Report, found: Sequence[Cause], change: Changes | None, history: Sequence[Run]) -> list[str]:
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
        members=member_findings.summary_line(report.member_checks),
        lifecycle=lifecycle_findings.summary_line(report.lifecycle_checks),
        time_shares=time_shares.lines(time_shares.shares([report.time_samples])),
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
        first = first_layer_of(report, found, None, ())
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
    lines += ["", *member_findings.summary_lines(report.member_checks)]
    lines += ["", *lifecycle_findings.summary_lines(report.lifecycle_checks)]
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


def _example_line(e: Entry) -> str:
    """The report's line on a finding's example: a case, a chain, or a sequence (the shortest first)."""
    if e.network is not None:
        return f"- {e.count} chain(s) in this run; chain {e.reduction}: `{network_findings.chain_of(e).describe()}`"
    if e.sequence is not None:
        described = sequence_findings.sequence_of(e).describe()
        return f"- {e.count} sequence(s) in this run; sequence {e.reduction}: `{described}`"
    if e.lifecycle is not None:
        described = lifecycle_findings.describe(lifecycle_findings.scenario_of(e))
        return f"- {e.count} scenario(s) in this run; scenario {e.reduction}: `{described}`"
    return f"- {e.count} case(s) in this run; example {e.reduction}: `{e.case.describe()}`"

"""report.json and plot-data.npz: a report as strict JSON (every signature pointing at its cause's files) and back,
and the plot's sampled points as arrays.
"""

from __future__ import annotations

import json
import math
from typing import IO, Any

import numpy as np

from bnprops.fuzzing.catalogue import Catalogue, Entry
from bnprops.fuzzing.causes import Cause
from bnprops.fuzzing.report.model import FINDINGS, RESULTS, Report, files_of
from bnprops.fuzzing.tallies import NEW, PASSED, Points
from bnprops.fuzzing.time_shares import shares
from bnprops.model.case import QUANTITIES

REPORT_FORMAT = "bnprops.report/1"


def to_json(report: Report) -> str:
    return json.dumps(_jsonable(report_to_dict(report)), indent=1) + "\n"


def _jsonable(value: Any) -> Any:
    """Strict JSON: infinite and NaN ratios become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def save_points(handle: IO[bytes], points: Points) -> None:
    np.savez_compressed(
        handle,
        dtype=points.dtype,
        cond=points.cond,
        ratio=points.ratio,
        kind=points.kind,
        seen=np.array(points.seen),
        quantities=QUANTITIES,
    )


def load_points(handle: IO[bytes]) -> Points:
    with np.load(handle) as f:
        # (a sample saved before the classes were kept: whatever exceeds its bound counts as new, as drawn then)
        kind = f["kind"] if "kind" in f else np.where(f["ratio"] > 1, NEW, PASSED).astype(np.int8)
        return Points(f["dtype"], f["cond"], f["ratio"], kind, int(f["seen"]))


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
        "member_checks": report.member_checks,
        "lifecycle_checks": report.lifecycle_checks,
        "time_samples": report.time_samples,
        "time_shares": shares([report.time_samples]),
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
    for row in data.get("worst", []):
        row["ratio"] = float(row["ratio"])  # strict JSON wrote infinite and NaN ratios as strings
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
        member_checks=data.get("member_checks", {}),
        lifecycle_checks=data.get("lifecycle_checks", {}),
        time_samples=data.get("time_samples", {}),
    )

"""Reports added up: one shard's report from its workers' results, and one report from several shards'."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from typing import Any

from bnprops.fuzzing.catalogue import Catalogue
from bnprops.fuzzing.plan import CampaignConfig
from bnprops.fuzzing.report.model import Report
from bnprops.fuzzing.tallies import Points, WorkerResult


def from_workers(
    config: CampaignConfig,
    results: Sequence[WorkerResult],
    *,
    started: datetime.datetime,
    elapsed_s: float,
    skipped: list[dict[str, str]],
    interrupted: str | None,
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
    member_checks: dict[str, dict[str, int]] = {}
    lifecycle_checks: dict[str, dict[str, int]] = {}
    samples: dict[str, dict[str, int]] = {}
    for r in results:
        _add_counts(samples, {"all": r.time_samples})
        _add_counts(relation_checks, r.relations)
        _add_counts(network_checks, r.networks)
        _add_counts(sequence_checks, r.sequences)
        _add_counts(member_checks, r.members)
        _add_counts(lifecycle_checks, r.lifecycle)
        catalogue.merge(Catalogue(r.entries))
        _add_counts(counts, r.counts)
        _add_worst(worst, r.worst.values())
        points = points.concat(r.points)
        if r.error:
            notes.append(f"worker {r.worker} stopped on an error (what it ran is reported):\n{r.error}")
    reasons = {r.stop_reason for r in results}
    stop = interrupted if interrupted else ("time" if "time" in reasons else ", ".join(sorted(reasons)))
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
        member_checks=member_checks,
        lifecycle_checks=lifecycle_checks,
        time_samples=samples.get("all", {}),
    )


def _add_counts(into: dict[Any, dict[str, int]], more: dict[Any, dict[str, int]]) -> None:
    """Add per-cell result counts (keys: a target tuple, which JSON gives back as a list, or a name)."""
    for key, cell in more.items():
        target = into.setdefault(tuple(key) if isinstance(key, list | tuple) else key, {})
        for result, n in cell.items():
            target[result] = target.get(result, 0) + n


def _add_worst(into: dict[tuple[str, str], dict[str, Any]], rows: Iterable[dict[str, Any]]) -> None:
    for row in rows:
        key = (row["dtype"], row["quantity"])
        if key not in into or row["ratio"] > into[key]["ratio"]:
            into[key] = row


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
    member_checks: dict[str, dict[str, int]] = {}
    lifecycle_checks: dict[str, dict[str, int]] = {}
    samples: dict[str, dict[str, int]] = {}
    for src, r in zip(sources, reports, strict=True):
        _add_counts(relation_checks, r.relation_checks)
        _add_counts(network_checks, r.network_checks)
        _add_counts(sequence_checks, r.sequence_checks)
        _add_counts(member_checks, r.member_checks)
        _add_counts(lifecycle_checks, r.lifecycle_checks)
        _add_counts(samples, {"all": r.time_samples})
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
        member_checks=member_checks,
        lifecycle_checks=lifecycle_checks,
        time_samples=samples.get("all", {}),
    )

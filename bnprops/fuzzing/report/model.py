"""The report's data model: everything a campaign (or a merge of campaigns) ran and found, and which findings get
files of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from bnprops.fuzzing.catalogue import KNOWN, Catalogue, Entry
from bnprops.fuzzing.causes import Cause, causes
from bnprops.fuzzing.tallies import Points

RESULTS = ("passed", "known", "failed", "error")
#: The output folder's subfolder for each finding's case and reproducer.
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
    #: Family members' calls run while exploring: "member entry/backend" -> {"checks"|member_findings.RESULTS: n}.
    member_checks: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: Life-cycle scenarios run while exploring: check -> {"checks"|lifecycle_findings.RESULTS: n}.
    lifecycle_checks: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: "where/part" -> samples of the workers' main threads, added up (fuzzing.time_shares).
    time_samples: dict[str, int] = dataclasses.field(default_factory=dict)

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
            "family members: "
            + (
                ", ".join(
                    f"{target} {c.get('checks', 0)} calls ({c.get('failed', 0) + c.get('error', 0)} with a new finding)"
                    for target, c in sorted(self.member_checks.items())
                )
                or "none ran"
            ),
            "life cycle: "
            + (
                ", ".join(
                    f"{check} {c.get('checks', 0)} run ({c.get('failed', 0)} with a new finding)"
                    for check, c in sorted(self.lifecycle_checks.items())
                )
                or "none ran"
            ),
        ]
        for title, entries in (("NEW", self.new), ("known", self.known)):
            for e in entries:
                lines.append(f"  {title:5} x{e.count:<6} {e.signature.describe()}  [{e.reduction}: {e.case.shape}]")
        for r in self.replays:
            lines.append(f"  replayed {r['id']}: {r['status']}")
        return "\n".join(lines)

    def causes(self) -> list[Cause]:
        return causes(self.catalogue.entries.values())


#: A known deviation whose smallest example has more elements than this gets no files of its own: its
#: arrays would make reproducers of hundreds of MB, and the deviation's minimal reproducer (its module of
#: judging.deviations) shows it already.  New findings always get theirs (shrunk, they are small).
LARGE_EXAMPLE = 100_000


def has_files(e: Entry) -> bool:
    if e.network is not None or e.sequence is not None:
        return True
    return not (e.signature.kind == KNOWN and e.case.x.size > LARGE_EXAMPLE)


def files_of(found: Sequence[Cause]) -> dict[str, str]:
    """Which signature's files stand for each signature: its cause's smallest example of its kind (one reproducer
    per cause and kind, not one per signature); signatures whose stand-in has no files are left out."""
    files: dict[str, str] = {}
    for c in found:
        chosen = {e.signature.kind: e for e in reversed(c.entries)}  # the smallest of each kind wins
        for e in c.entries:
            stand_in = chosen[e.signature.kind]
            if has_files(stand_in):
                files[e.signature.ident] = stand_in.signature.ident
    return files

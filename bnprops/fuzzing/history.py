"""The run history an output folder keeps (history.json): one small record per run, so the report can show the
trend of rates and causes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnprops.base import atomic
from bnprops.fuzzing.causes import Cause

HISTORY_FILE = "history.json"
_HISTORY_FORMAT = "bnprops.history/1"
#: Runs the history keeps (the oldest drop out).
HISTORY_LENGTH = 120


@dataclasses.dataclass(frozen=True)
class Run:
    """One run in the history."""

    started: str
    cases: int
    cases_per_s: float
    new: tuple[str, ...]
    known: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "new": list(self.new)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        return cls(
            started=str(data["started"]),
            cases=int(data["cases"]),
            cases_per_s=float(data["cases_per_s"]),
            new=tuple(data.get("new", ())),
            known={str(k): int(v) for k, v in data.get("known", {}).items()},
        )


def run_of(started: str, cases: int, cases_per_s: float, found: Sequence[Cause]) -> Run:
    return Run(
        started=started,
        cases=cases,
        cases_per_s=cases_per_s,
        new=tuple(c.key for c in found if c.new),
        known={c.key.removeprefix("known:"): c.count for c in found if not c.new},
    )


def load_history(out: Path) -> list[Run]:
    """The runs recorded in ``out`` (none if there is no history yet); an unreadable history starts afresh."""
    path = out / HISTORY_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("format") != _HISTORY_FORMAT:
        return []
    runs = []
    for row in data.get("runs", []):
        try:
            runs.append(Run.from_dict(row))
        except (KeyError, TypeError, ValueError):
            continue  # a damaged row: keep the others
    return runs


def record(out: Path, run: Run, history: Sequence[Run]) -> list[Run]:
    """Append ``run`` (replacing a run with the same start, so a rewrite does not count twice); write atomically."""
    kept = [r for r in history if r.started != run.started][-(HISTORY_LENGTH - 1) :]
    runs = [*kept, run]
    payload = {"format": _HISTORY_FORMAT, "runs": [r.to_dict() for r in runs]}
    atomic.write_text(out / HISTORY_FILE, json.dumps(payload, indent=1) + "\n")
    return runs

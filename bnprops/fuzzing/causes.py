"""Causes: the catalogue's signatures grouped the way a maintainer reads them, tonight against last night.

A signature is a deviation as precisely as the fuzz job can say it (kind, quantity, entry point,
backend, dtype, flags, value regime); one cause is what a person fixes or records once.  A known
deviation is one cause, whatever flags it showed under; a new finding's signatures are one cause when
they share the kind, the deviating quantity and the deviation they concern, and differ only in
flags, entry point, backend, dtype or value regime (a 0.5% error in dgamma is one cause, not one per
flag combination).  Each cause keeps where it showed and its smallest example, whose files are the
cause's reproducer.

``changes`` compares tonight's causes and rate with a baseline report's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bnprops.fuzzing.catalogue import KNOWN, Entry, Signature, rank


def cause_key(sig: Signature) -> str:
    """The cause a signature belongs to, as a short stable string (report.json and the history use it)."""
    if sig.kind == KNOWN:
        return f"known:{sig.deviation}"
    return ":".join(part for part in (sig.kind, sig.quantity, sig.deviation) if part)


@dataclasses.dataclass(frozen=True)
class Cause:
    """Signatures that are one deviation to a person, and where they showed."""

    key: str
    entries: tuple[Entry, ...]  # smallest example first

    @property
    def new(self) -> bool:
        return self.entries[0].signature.is_new

    @property
    def smallest(self) -> Entry:
        return self.entries[0]

    @property
    def count(self) -> int:
        return sum(e.count for e in self.entries)

    def where(self, field: str) -> tuple[str, ...]:
        """The distinct values of a signature field (entry, backend, dtype, regime) it showed under."""
        return tuple(sorted({str(getattr(e.signature, field)) for e in self.entries}))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({e.signature.kind for e in self.entries}))

    def representatives(self) -> tuple[Entry, ...]:
        """The entries that get files: the smallest of each kind (one reproducer per cause, per kind)."""
        chosen: dict[str, Entry] = {}
        for e in self.entries:
            chosen.setdefault(e.signature.kind, e)
        return tuple(chosen.values())

    def title(self) -> str:
        sig = self.smallest.signature
        if sig.kind == KNOWN:
            return (
                f"known deviation `{sig.deviation}` ({', '.join(sorted({e.signature.quantity for e in self.entries}))})"
            )
        about = f" (in the region of `{sig.deviation}`)" if sig.deviation else ""
        return f"{sig.kind} in `{sig.quantity}`{about}"


def causes(entries: Iterable[Entry]) -> list[Cause]:
    """Group entries into causes: new causes first, then by cases, most first."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(cause_key(e.signature), []).append(e)
    found = [Cause(key, tuple(sorted(group, key=rank))) for key, group in groups.items()]
    return sorted(found, key=lambda c: (not c.new, -c.count, c.key))


@dataclasses.dataclass(frozen=True)
class Changes:
    """Tonight against a baseline report: causes that appeared or went, and the rate."""

    baseline: str
    appeared: tuple[str, ...]
    gone: tuple[str, ...]
    rate_before: float
    rate_now: float

    def lines(self) -> list[str]:
        """New causes first (they need a person); known deviations seen or not vary with what a run drew."""

        def listed(keys: Iterable[str]) -> str:
            return ", ".join(f"`{k.removeprefix('known:')}`" for k in keys) or "none"

        new_in = [k for k in self.appeared if not k.startswith("known:")]
        new_out = [k for k in self.gone if not k.startswith("known:")]
        known_in = [k for k in self.appeared if k.startswith("known:")]
        known_out = [k for k in self.gone if k.startswith("known:")]
        lines = [
            f"Against {self.baseline}: new causes appeared: {listed(new_in)}; gone: {listed(new_out)}. "
            f"Rate {self.rate_now:.1f} cases/s (was {self.rate_before:.1f})."
        ]
        if known_in or known_out:
            lines.append(
                f"Known deviations seen this time only: {listed(known_in)}; not seen this time: {listed(known_out)}."
            )
        return lines


def changes(now: Sequence[Cause], rate_now: float, baseline: dict[str, Any] | None, *, name: str) -> Changes | None:
    """Compare with a baseline report.json's causes (None when there is no baseline to compare with)."""
    if baseline is None:
        return None
    before = {c["key"] for c in baseline.get("causes", [])}
    keys = {c.key for c in now}
    return Changes(
        baseline=name,
        appeared=tuple(sorted(keys - before)),
        gone=tuple(sorted(before - keys)),
        rate_before=float(baseline.get("cases_per_s", 0.0)),
        rate_now=rate_now,
    )


def read_baseline(path: Path) -> dict[str, Any] | None:
    """A previous report.json (a file, or the folder holding it); None if there is none. Raises ValueError if
    it is there but unreadable, so that a typo in --baseline is an error, not a silent 'no baseline'."""
    file = path / "report.json" if path.is_dir() else path
    if not file.exists():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file} is not a readable bnprops report ({exc})") from exc
    if not isinstance(data, dict) or "cases_per_s" not in data:
        raise ValueError(f"{file} is not a bnprops report.json")
    return data

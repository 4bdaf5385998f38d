"""A worker's findings: the catalogue, new signatures waiting to be shrunk, and the one being hunted."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from bnprops.fuzzing.catalogue import KNOWN, Catalogue, Entry, Signature
from bnprops.fuzzing.plan import Example
from bnprops.model.case import Case


class Findings:
    def __init__(self) -> None:
        self.catalogue = Catalogue()
        #: New signatures seen but not yet shrunk: their count and smallest example so far.
        self.pending: dict[Signature, Entry] = {}
        #: The signature the current search shrinks (or replays), and its smallest example so far: the case
        #: that shows it with the whole example it came from (a side family's draw is part of it).
        self.hunting: Signature | None = None
        self.best: tuple[Case, Example] | None = None

    def __len__(self) -> int:
        return len(self.catalogue) + len(self.pending)

    def note(self, seen: Entry) -> None:
        """One more example of a signature: a known or catalogued one counts; a new one waits to be shrunk."""
        sig = seen.signature
        if sig.kind == KNOWN or sig in self.catalogue:
            self.catalogue.add(seen)
        else:
            self.pending.setdefault(sig, dataclasses.replace(seen, count=0)).absorb(seen)

    def consider(self, sigs: Iterable[Signature], case: Case, value: Example) -> None:
        """Hunt the first new signature not catalogued yet, unless a hunt is on."""
        if self.hunting is None:
            fresh = [s for s in sigs if s.is_new and s not in self.catalogue]
            if fresh:
                self.hunting, self.best = fresh[0], (case, value)

    def start(self, sig: Signature) -> None:
        """Replay ``sig``'s stored example: it is hunted, with no example yet."""
        self.hunting, self.best = sig, None

    def settle(self, reduction: str, entry_for: Callable[[Signature, Case, Example, int, str], Entry]) -> None:
        """The hunt is over: its signature's entry takes the pending count and the smallest example found."""
        sig, best, self.hunting, self.best = self.hunting, self.best, None, None
        if sig is None or best is None:
            return
        pending = self.pending.pop(sig, None)
        self.catalogue.add(entry_for(sig, *best, pending.count if pending else 0, reduction))

    def close(self, detail: Callable[[Entry], str]) -> list[Entry]:
        """Every entry, the pending ones catalogued as seen (with their detail): the worker's findings."""
        self.hunting = self.best = None
        for entry in self.pending.values():
            entry.detail = detail(entry)
            self.catalogue.add(entry)
        self.pending.clear()
        return list(self.catalogue.entries.values())

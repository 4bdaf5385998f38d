"""What a fuzz worker does with each example Hypothesis draws: judge it, count it, hunt what is new, shrink it; and
what it has found so far (the catalogue, signatures waiting to be shrunk, the one being hunted)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable

from hypothesis import strategies as st

from bnprops.fuzzing.catalogue import (
    KNOWN,
    LIFECYCLE,
    MEMBER,
    NETWORK,
    RELATION,
    SEQUENCE,
    Catalogue,
    Entry,
    Signature,
)
from bnprops.fuzzing.families import Cases, SideFamily, run_timed, side_families
from bnprops.fuzzing.lifecycle_findings import lifecycle_draws
from bnprops.fuzzing.member_findings import member_draws, runnable
from bnprops.fuzzing.network_findings import network_draws
from bnprops.fuzzing.plan import (
    GROUP_SIZE,
    PLOT_SAMPLE,
    SHRINK_GRACE_S,
    CampaignConfig,
    Example,
    ProgressFn,
    RunnerFactory,
    Target,
    chunk_seed,
    kernel_of,
)
from bnprops.fuzzing.relation_findings import relation_draws
from bnprops.fuzzing.search import Stop
from bnprops.fuzzing.sequence_findings import sequence_draws
from bnprops.fuzzing.tallies import Sampler, WorkerResult, tally_case
from bnprops.judging.checks import Outcome
from bnprops.model.case import Case
from bnprops.search.chance import sometimes
from bnprops.search.strategies import case_groups


def examples(
    config: CampaignConfig, targets: list[Target], families: dict[str, SideFamily]
) -> st.SearchStrategy[Example]:
    """What a search draws: a target, a group of same-signature cases, and, by chance, a draw for each side family
    (a family member's call among the member targets that can run here); None for one not drawn.

    The group is judged from one stacked MXNet call (bnprops.mx.batching): most of a case's cost is per
    call, not per channel. One example in LARGE_SHARE is a single case the size of a real layer. A side
    family's coin (search.chance) comes up with the family's chance, and the family runs where it comes up: drawing
    costs what runs. A family this run lacks (no members) has no chance: its coin still takes its one choice, so
    that stored examples decode alike.
    """
    target_draws = st.sampled_from(targets)
    groups = case_groups(dtypes=config.dtypes, max_size=GROUP_SIZE, sizes="all")
    side = {
        RELATION: relation_draws(),
        NETWORK: network_draws(config.dtypes),
        SEQUENCE: sequence_draws(config.dtypes),
        MEMBER: member_draws(runnable(config.members, config.backends) if config.member_every else []),
        LIFECYCLE: lifecycle_draws(config.dtypes),
    }

    @st.composite
    def example(draw: st.DrawFn) -> Example:
        target = draw(target_draws)
        group = draw(groups)
        drawn = [
            sometimes(
                draw, strategy, chance=families[kind].chance(target, group[0]) if kind in families else 0.0, name=kind
            )
            for kind, strategy in side.items()
        ]
        return (target, group, *drawn)  # type: ignore[return-value]

    return example()


class WorkerFindings:
    """A worker's findings: the catalogue, new signatures waiting to be shrunk, and the one being hunted."""

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


class Explorer:
    """One worker's judge: the conditions its searches run (explore, shrink_step), its findings and counts."""

    def __init__(
        self,
        config: CampaignConfig,
        *,
        worker: int,
        targets: list[Target],
        runner_factory: RunnerFactory,
        deadline: float | None,
        stop_requested: Callable[[], bool],
        progress: ProgressFn | None,
    ) -> None:
        self.config, self.deadline, self.stop_requested, self.progress = config, deadline, stop_requested, progress
        runners = {t: runner_factory(*t) for t in targets}
        self.cases = Cases(runners)
        self.families = side_families(config, runners, runner_factory)
        self.budget = config.worker_budget(worker)
        self.result = WorkerResult(worker=worker)
        self.findings = WorkerFindings()
        self.sampler = Sampler(PLOT_SAMPLE, chunk_seed(config.seed, -1 - worker))
        self.failed = self.known = 0
        self.last_progress = 0.0
        self.judged: set[bytes] = set()

    def budget_spent(self) -> bool:
        return self.budget is not None and self.result.cases >= self.budget

    def time_is_up(self, *, grace: float = 0.0) -> bool:
        return self.deadline is not None and time.time() > self.deadline + grace

    def stop_if_due(self, *, shrinking: bool) -> None:
        """End the search (Stop) when asked to, out of time, or (while exploring) out of budget."""
        if self.stop_requested():
            self.result.stop_reason = "interrupted"
        elif self.time_is_up(grace=SHRINK_GRACE_S if shrinking else 0.0):
            self.result.stop_reason = "time"
        elif not shrinking and self.budget_spent():
            self.result.stop_reason = "budget"
        else:
            return
        raise Stop

    def record(self, target: Target, case: Case, outcome: Outcome | None, sigs: tuple[Signature, ...]) -> None:
        verdict = tally_case(self.result, self.sampler, target, case, outcome, kernel=kernel_of(case, target[1]))
        self.failed += verdict in ("failed", "error")
        self.known += verdict == "known"
        for sig in sigs:
            self.findings.note(Entry(sig, 1, case, "smallest seen"))
        self.report_progress()

    def report_progress(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is not None and (force or now - self.last_progress >= 0.25):
            self.last_progress = now
            self.progress(self.result.cases, self.failed, self.known, len(self.findings))

    def explore(self, value: Example) -> bool:
        """The search's condition while exploring: judge the example; True when it shows a new signature."""
        if self.findings.hunting is not None:
            return self.shrink_step(value)
        self.stop_if_due(shrinking=False)
        target, group, *_ = value
        if self.budget is not None:
            group = group[: self.budget - self.result.cases]  # the budget counts cases, not calls
        fingerprint = hashlib.sha1(repr(target).encode() + b"".join(c.fingerprint() for c in group)).digest()
        if fingerprint in self.judged:
            # Its cases were judged; its side draws are new (Hypothesis never runs the same choices twice in a
            # search), and skipping them would run fewer side checks, the more a family's draw adds to an example.
            self.result.repeats += len(group)
        else:
            self.judged.add(fingerprint)
            for case, (outcome, sigs) in zip(group, self.cases.judge_group(target, group), strict=True):
                self.record(target, case, outcome, sigs)
                self.findings.consider(sigs, case, value)
        for family in self.families.values():
            drawn = family.draw(value)
            # A coin comes up now and then where its family has no chance (off, or not on this target): not run.
            if drawn is not None and family.chance(target, group[0]) > 0:
                checked, ms = run_timed(family, target, group[0], drawn)
                family.tally(self.result, checked, ms=ms)
                for sig in checked.signatures:
                    self.findings.note(family.entry(sig, checked, group[0], 1, "smallest seen"))
                self.findings.consider(checked.signatures, group[0], value)
        return self.findings.hunting is not None

    def shrink_step(self, value: Example) -> bool:
        """The search's condition while shrinking: does this example still show the hunted signature?"""
        self.stop_if_due(shrinking=True)
        self.result.shrink_calls += 1
        sig = self.findings.hunting
        assert sig is not None
        target, group, *_ = value
        family = self.families.get(sig.kind)
        if family is None:
            case = self.cases.shows(sig, target, group)
        elif not family.may_show(sig, value):
            return False
        else:
            # A side family's draw runs whatever its chance (so any --relations/--networks/--sequences replays it);
            # nothing else runs.
            case = group[0] if sig in family.check(target, group[0], family.draw(value)).signatures else None
        if case is None:
            return False
        self.findings.best = (case, value)
        return True

    def entry_for(self, sig: Signature, case: Case, value: Example, count: int, reduction: str) -> Entry:
        """The settled entry of ``sig``: its example run once more for the detail."""
        family = self.families.get(sig.kind)
        if family is None:
            return Entry(sig, count, case, reduction, self.cases.describe(sig, case))
        checked = family.check((sig.entry, sig.backend), case, family.draw(value))
        return family.entry(sig, checked, case, count, reduction)

    def settle(self, reduction: str) -> None:
        self.findings.settle(reduction, self.entry_for)

    def detail(self, entry: Entry) -> str:
        """A pending entry's detail: a side family's check wrote its own; a case's is described again."""
        if entry.signature.kind in self.families:
            return entry.detail
        return self.cases.describe(entry.signature, entry.case)

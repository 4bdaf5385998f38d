"""The checks a fuzz example runs, one family each, behind one interface.

Every example is a group of cases (judged against the oracle, ``Cases``) plus, by chance, a draw for each side
family: an exact relation on its first case, a producer chain (BatchNorm inside a network), a training sequence,
a member call. A side family is drawn on one example in N (``chance``) and runs where it was drawn, and its
findings are hunted, shrunk and settled like the cases' own; the worker (fuzzing.explorer) treats them all alike.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from bnprops.base.family import spec_of
from bnprops.fuzzing import lifecycle_findings, member_findings, network_findings, relation_findings, sequence_findings
from bnprops.fuzzing.catalogue import (
    LIFECYCLE,
    MEMBER,
    NETWORK,
    RELATION,
    SEQUENCE,
    STALE,
    Entry,
    Signature,
    classify,
    classify_error,
)
from bnprops.fuzzing.plan import CampaignConfig, Example, RunnerFactory, Target, kernel_of
from bnprops.fuzzing.relation_findings import RelationDraw
from bnprops.fuzzing.tallies import WorkerResult, count
from bnprops.judging import in_network
from bnprops.judging.checks import Outcome, check, check_group
from bnprops.model.case import Case
from bnprops.mx import sync
from bnprops.mx import worker as mx_worker
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import BACKENDS, IN_PROCESS_BACKEND, Runner

FLAKY = "this example no longer shows the signature when run again (flaky?)"


class Checked(Protocol):
    @property
    def signatures(self) -> tuple[Signature, ...]: ...


class SideFamily(Protocol):
    """A side check: what it draws from an example, when it runs, and how its findings become entries."""

    kind: str

    def draw(self, value: Example) -> Any: ...
    def chance(self, target: Target, case: Case) -> float: ...
    def may_show(self, sig: Signature, value: Example) -> bool: ...
    def check(self, target: Target, case: Case, drawn: Any) -> Checked: ...
    def tally(self, result: WorkerResult, checked: Any, *, ms: int) -> None: ...
    def entry(self, sig: Signature, checked: Any, case: Case, count: int, reduction: str) -> Entry: ...


class Cases:
    """The example's own cases: one stacked MXNet call judged against the oracle (bnprops.judging.checks)."""

    def __init__(self, runners: dict[Target, Runner]) -> None:
        self.runners = runners

    def judge(self, target: Target, case: Case) -> tuple[Outcome | None, tuple[Signature, ...], str]:
        """One case on its own: what describe() and the reproducers see."""
        entry, backend = target
        try:
            outcome = check(case, runner=self.runners[target], entry=entry, kernel=kernel_of(case, backend))
        except Exception as exc:  # a runner that raises is a finding, not a crash of the campaign
            return None, (classify_error(case, exc, entry=entry, backend=backend),), f"{type(exc).__name__}: {exc}"
        return outcome, classify(outcome, backend=backend), ""

    def judge_group(self, target: Target, group: list[Case]) -> list[tuple[Outcome | None, tuple[Signature, ...]]]:
        """A group from one stacked call; should the call raise, each case on its own decides whose error it is."""
        entry, backend = target
        try:
            outcomes = check_group(group, runner=self.runners[target], entry=entry, backend=backend)
        except Exception:
            return [self.judge(target, case)[:2] for case in group]
        return [(outcome, classify(outcome, backend=backend)) for outcome in outcomes]

    def describe(self, sig: Signature, case: Case) -> str:
        """What the comparator says about ``case`` for ``sig``: the mismatch, the stale deviation or the error."""
        outcome, sigs, error = self.judge((sig.entry, sig.backend), case)
        if error:
            return error
        assert outcome is not None
        if sig not in sigs:
            return FLAKY
        if sig.kind == STALE:
            return outcome.message().splitlines()[0]
        for m in outcome.unexpected:
            if m.quantity == sig.quantity and m.deviation == sig.deviation:
                return m.describe()
        for m in outcome.verdict.mismatches:
            if m.quantity == sig.quantity:
                # A known one: what differs from the oracle is what the deviation's model predicts.
                known = f"matches the recorded deviation {sig.deviation}; against the oracle:\n"
                return (known if sig.deviation else "") + m.describe()
        return ""

    def shows(self, sig: Signature, target: Target, group: list[Case]) -> Case | None:
        """The first case of ``group`` that shows ``sig``, judged as the group."""
        for case, (_, sigs) in zip(group, self.judge_group(target, group), strict=True):
            if sig in sigs:
                return case
        return None


class Relations:
    """An exact relation on the example's first case (fuzzing.relation_findings)."""

    kind = RELATION

    def __init__(self, config: CampaignConfig, runners: dict[Target, Runner]) -> None:
        self.every, self.runners = config.relation_every, runners

    def draw(self, value: Example) -> RelationDraw | None:
        return value[2]

    def chance(self, target: Target, case: Case) -> float:
        return relation_findings.chance(case, every=self.every)

    def may_show(self, sig: Signature, value: Example) -> bool:
        # While shrinking the drawn relation runs whatever its chance, so any relation_every replays it.
        drawn = self.draw(value)
        return drawn is not None and drawn.relation == relation_findings.relation_of(sig)

    def check(self, target: Target, case: Case, drawn: RelationDraw) -> relation_findings.RelationCheck:
        entry, backend = target
        return relation_findings.check_relation(case, drawn, runner=self.runners[target], entry=entry, backend=backend)

    def tally(self, result: WorkerResult, checked: relation_findings.RelationCheck, *, ms: int) -> None:
        count(result.relations, checked.draw.relation, (checked.result,))

    def entry(
        self, sig: Signature, checked: relation_findings.RelationCheck, case: Case, count: int, reduction: str
    ) -> Entry:
        detail = checked.detail() if sig in checked.signatures else FLAKY
        return Entry(sig, count, case, reduction, detail, relation=checked.draw.key)


class Networks:
    """The example's producer chain, BatchNorm judged inside it (fuzzing.network_findings)."""

    kind = NETWORK

    def __init__(self, config: CampaignConfig, runners: dict[Target, Runner]) -> None:
        self.every, self.runner, self.runners = config.network_every, config.network_runner, runners

    def draw(self, value: Example) -> Any:
        return value[3]

    def chance(self, target: Target, case: Case) -> float:
        return network_findings.chance(*target, every=self.every)

    def may_show(self, sig: Signature, value: Example) -> bool:
        return self.draw(value) is not None and network_findings.applies(*value[0])

    def check(self, target: Target, case: Case, drawn: Any) -> network_findings.NetworkCheck:
        entry, backend = target
        return network_findings.check_network(
            drawn, entry=entry, backend=backend, plain_runner=self.runners[target], runner=self.runner
        )

    def tally(self, result: WorkerResult, checked: network_findings.NetworkCheck, *, ms: int) -> None:
        # ms: the time the checks took, worker processes' start included
        count(result.networks, f"{checked.chain.api}/{checked.backend}", ("checks", *checked.results), ms=ms)

    def entry(
        self, sig: Signature, checked: network_findings.NetworkCheck, case: Case, count: int, reduction: str
    ) -> Entry:
        call = network_findings.call_of(checked.chain, checked.result)  # the plain call BatchNorm made
        return Entry(sig, count, call, reduction, checked.detail(sig), network=checked.chain.to_json())


class Sequences:
    """The example's training sequence on one BatchNorm (fuzzing.sequence_findings)."""

    kind = SEQUENCE

    def __init__(self, config: CampaignConfig) -> None:
        self.every, self.session = config.sequence_every, config.sequence_session or None

    def draw(self, value: Example) -> Any:
        return value[4]

    def chance(self, target: Target, case: Case) -> float:
        return sequence_findings.chance(*target, every=self.every)

    def may_show(self, sig: Signature, value: Example) -> bool:
        return self.draw(value) is not None and sequence_findings.applies(*value[0])

    def check(self, target: Target, case: Case, drawn: Any) -> sequence_findings.SequenceCheck:
        entry, backend = target
        return sequence_findings.check_sequence(drawn, entry=entry, backend=backend, session=self.session)

    def tally(self, result: WorkerResult, checked: sequence_findings.SequenceCheck, *, ms: int) -> None:
        count(result.sequences, f"{checked.sequence.config.entry}/{checked.backend}", ("checks", checked.result), ms=ms)

    def entry(
        self, sig: Signature, checked: sequence_findings.SequenceCheck, case: Case, count: int, reduction: str
    ) -> Entry:
        if reduction == "shrunk":
            checked = sequence_findings.without_needless_rules(checked, sig, session=self.session)
        call = sequence_findings.entry_case(checked.sequence)
        replay = checked.run.script if sig.kind == SEQUENCE and checked.run.script else None
        sequence = checked.sequence.to_json()
        return Entry(sig, count, call, reduction, checked.detail(sig), sequence=sequence, replay=replay)


class Members:
    """The example's call of a BatchNorm family member, on the member's own entry and backend
    (fuzzing.member_findings); the example's target only decides when it is due."""

    kind = MEMBER

    def __init__(self, config: CampaignConfig, runner_factory: RunnerFactory) -> None:
        self.every, self.runner_factory, self.dtypes = config.member_every, runner_factory, config.dtypes
        self.pairs = member_findings.runnable(config.members, config.backends)
        self.runners: dict[tuple[str, str], Runner] = {}

    def draw(self, value: Example) -> member_findings.MemberDraw:
        return value[5] if len(value) > 5 else None

    def chance(self, target: Target, case: Case) -> float:
        return member_findings.chance(self.pairs, every=self.every)

    def may_show(self, sig: Signature, value: Example) -> bool:
        drawn = self.draw(value)
        return drawn is not None and drawn[:2] == (sig.entry, sig.backend)

    def check(self, target: Target, case: Case, drawn: member_findings.MemberDraw) -> member_findings.MemberCheck:
        if drawn is None or drawn[2].dtype not in self.dtypes:  # none drawn, or a dtype this run did not select
            return member_findings.MemberCheck.skipped(case)
        pair = drawn[:2]
        if pair not in self.runners:
            self.runners[pair] = member_findings.member_runner(*pair, runner_factory=self.runner_factory)
        return member_findings.check_member(drawn, runner=self.runners[pair])

    def tally(self, result: WorkerResult, checked: member_findings.MemberCheck, *, ms: int) -> None:
        if checked.result == member_findings.SKIPPED:
            return
        count(result.members, f"{checked.entry}/{checked.backend}", ("checks", checked.result), ms=ms)

    def entry(
        self, sig: Signature, checked: member_findings.MemberCheck, case: Case, count: int, reduction: str
    ) -> Entry:
        return Entry(sig, count, checked.case, reduction, checked.detail(sig))


class Lifecycle:
    """The example's life-cycle scenario, drawn only where it is due (fuzzing.lifecycle_findings); it runs on this
    process's backend, its plain calls from ``runner_factory``."""

    kind = LIFECYCLE

    def __init__(self, config: CampaignConfig, runner_factory: RunnerFactory) -> None:
        self.runner_factory, self.every = runner_factory, config.lifecycle_every

    def draw(self, value: Example) -> dict[str, Any] | None:
        return value[6] if len(value) > 6 else None  # an example built without one (the tests' own) has none

    def chance(self, target: Target, case: Case) -> float:
        return lifecycle_findings.chance(every=self.every)

    def may_show(self, sig: Signature, value: Example) -> bool:
        drawn = self.draw(value)
        return drawn is not None and drawn["check"] == lifecycle_findings.check_of(sig)

    def check(self, target: Target, case: Case, drawn: dict[str, Any] | None) -> lifecycle_findings.LifecycleCheck:
        return lifecycle_findings.check_lifecycle(drawn, runner_factory=self.runner_factory)

    def tally(self, result: WorkerResult, checked: lifecycle_findings.LifecycleCheck, *, ms: int) -> None:
        if checked.scenario is not None:
            count(result.lifecycle, checked.scenario["check"], ("checks", checked.result), ms=ms)

    def entry(
        self, sig: Signature, checked: lifecycle_findings.LifecycleCheck, case: Case, count: int, reduction: str
    ) -> Entry:
        assert checked.scenario is not None  # a signature comes from a scenario that ran
        kept = lifecycle_findings.kept(checked.scenario, checked.showing(sig))
        return Entry(sig, count, case, reduction, checked.detail(sig), lifecycle=kept)


def side_families(
    config: CampaignConfig, runners: dict[Target, Runner], runner_factory: RunnerFactory = runner_for
) -> dict[str, SideFamily]:
    """The side families by the kind of finding each makes, in the order an example runs them; family members'
    runners come from ``runner_factory`` (tests plant faults there)."""
    families: list[SideFamily] = [Relations(config, runners), Networks(config, runners), Sequences(config)]
    if config.members and config.member_every:
        families.append(Members(config, runner_factory))
    if config.lifecycle_every:
        families.append(Lifecycle(config, runner_factory))
    return {family.kind: family for family in families}


class Helper(Protocol):
    def launch(self) -> None: ...
    def wait_ready(self) -> None: ...


def helpers(config: CampaignConfig, targets: list[Target], *, runner_factory: RunnerFactory) -> list[Helper]:
    """The helper processes this worker's examples will call: the other CPU backend's (mx.worker), the chains' and
    the other backend's sequences' (judging.in_network), and SyncBatchNorm's (mx.sync)."""
    found: list[Helper] = []
    other = {b for _, b in targets if b in BACKENDS and b != IN_PROCESS_BACKEND}
    if runner_factory is runner_for:  # (tests plant runners that call no helper)
        found += [mx_worker.worker_for(backend) for backend in sorted(other)]
    chains = {b for e, b in targets if network_findings.chance(e, b, every=config.network_every) > 0}
    sequences = {b for e, b in targets if sequence_findings.chance(e, b, every=config.sequence_every) > 0}
    pairs = member_findings.runnable(config.members, config.backends) if config.member_every else []
    isolated = {b for e, b in pairs if spec_of(e).isolated and b in member_findings.HELPER_BACKENDS}
    if runner_factory is not runner_for:
        isolated = set()
    found += [in_network.worker_for(backend) for backend in sorted(chains | (sequences & other) | isolated)]
    if any(entry in sync.ENTRIES and backend == IN_PROCESS_BACKEND for entry, backend in pairs):
        found.append(sync.worker_for(IN_PROCESS_BACKEND))
    return found


def run_timed(family: SideFamily, target: Target, case: Case, drawn: Any) -> tuple[Checked, int]:
    started = time.perf_counter()
    checked = family.check(target, case, drawn)
    return checked, round(1000 * (time.perf_counter() - started))

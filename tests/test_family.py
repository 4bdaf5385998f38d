"""Every member of the BatchNorm family, from the registry: a property per member entry and backend, and a
planted 0.5% error in one gradient (in y for the inference-only members) of each member's correct subject, caught.

The properties skip, with the reason, where a member cannot run (release, build, kernel: its KERNELS).
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
from hypothesis import assume, given, settings
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from bnprops.base.family import MEMBER_ENTRIES
from bnprops.base.selection import parse_entries
from bnprops.judging.checks import PROPERTIES
from bnprops.mx import family as mx_family
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import ENTRY_POINTS, kernel_for
from bnprops.search.family import MEMBERS, member_of
from tests.helpers import budget, planted_search
from tests.planted_members import SUBJECTS

#: (member, property, fault): every fault each member's subject carries.
PLANTED = [(m.name, prop, fault) for m in MEMBERS for prop, fault in SUBJECTS[m.name].faults]


@pytest.mark.property
@settings(max_examples=budget(0.1), deadline=None)
@given(data=st.data())
def test_each_member_entry_matches_the_oracle(bn_member_entry: str, bn_backend: str, data: st.DataObject) -> None:
    reason = mx_family.skip_reason(bn_member_entry, bn_backend)
    if reason is not None:
        pytest.skip(f"{bn_member_entry} on {bn_backend}: {reason}")
    member = member_of(bn_member_entry)
    case = data.draw(member.strategy())
    assume(member.unexpressible_reason(bn_member_entry, case) is None)
    runner = runner_for(bn_member_entry, bn_backend)
    kernel = kernel_for(case, bn_backend, bn_member_entry)
    judged = member.check(case, entry=bn_member_entry, runner=runner, kernel=kernel)
    assert judged.ok, judged.message()


@pytest.mark.parametrize(("member", "prop", "fault"), PLANTED)
def test_a_half_percent_error_in_each_member_is_caught(member: str, prop: str, fault: str) -> None:
    chosen = next(m for m in MEMBERS if m.name == member)
    entry = chosen.entries[0]
    runner = functools.partial(SUBJECTS[member].run, fault=fault)

    def judged(case):  # type: ignore[no-untyped-def]
        return chosen.check(case, entry=entry, runner=runner, kernel="subject", checked=PROPERTIES[prop])

    def caught(case) -> bool:  # type: ignore[no-untyped-def]
        # Caught as a finding of its own: a deviation's model the subject does not share (it is correct) shows
        # as stale, which is no catch of the planted fault.
        return chosen.unexpressible_reason(entry, case) is None and bool(judged(case).outcome.unexpected)

    found = hypothesis_find(chosen.strategy(), caught, settings=planted_search(300))
    outcome = judged(found).outcome
    assert outcome.unexpected, f"{member}: {found.describe()} was flagged only through a known deviation"


@pytest.mark.parametrize("member", [m.name for m in MEMBERS])
@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_each_members_correct_subject_passes(member: str, data: st.DataObject) -> None:
    chosen = next(m for m in MEMBERS if m.name == member)
    entry = chosen.entries[0]
    case = data.draw(chosen.strategy(is_train=True))
    assume(chosen.unexpressible_reason(entry, case) is None)
    judged = chosen.check(case, entry=entry, runner=SUBJECTS[member].run, kernel="subject")
    # A correct subject cannot show MXNet's recorded deviations: they are stale for it, and nothing else may be.
    unstale = dataclasses.replace(judged, outcome=dataclasses.replace(judged.outcome, stale=()))
    assert unstale.ok, judged.message()


def test_every_registered_member_has_a_planted_subject_and_unique_entries() -> None:
    assert sorted(SUBJECTS) == sorted(m.name for m in MEMBERS)
    assert len(set(MEMBER_ENTRIES)) == len(MEMBER_ENTRIES)
    assert not set(MEMBER_ENTRIES) & set(ENTRY_POINTS)


def test_bn_entry_accepts_member_entries_beside_plain_ones() -> None:
    assert parse_entries("nd,sym-relu", plain=ENTRY_POINTS) == (("nd",), ("sym-relu",))
    plain, members = parse_entries("all", plain=ENTRY_POINTS)
    assert plain == ENTRY_POINTS and members == MEMBER_ENTRIES
    with pytest.raises(ValueError, match="sym-relu"):
        parse_entries("nd-relux", plain=ENTRY_POINTS)


def test_a_member_runs_on_the_other_backend_through_the_worker_where_its_kernels_allow() -> None:
    entry = "sym-v1"
    member = member_of(entry)
    case = hypothesis_find(member.strategy(is_train=True), lambda c: c.x.size > 4, settings=planted_search(50))
    judged = member.check(case, entry=entry, runner=runner_for(entry, "native"), kernel="native")
    assert judged.ok, judged.message()
    assert mx_family.kernel_reason("nd-relu", "native") is not None


def test_a_deviation_scoped_to_a_member_is_probed_with_the_members_judge_where_the_release_has_it() -> None:
    from bnprops.judging.known_deviations import KNOWN_DEVIATIONS
    from bnprops.judging.release_probe import PRESENT, probe

    v1 = [kd for kd in KNOWN_DEVIATIONS if kd.entries == frozenset({"sym-v1"})]
    assert v1, "BatchNorm_v1's deviations are scoped to sym-v1"
    row = probe(v1[0])
    assert row["entries"]["sym-v1"]["status"] == PRESENT, row


def test_a_release_without_the_member_notes_n_a_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnprops.commands.versions import ReleaseResult, cell
    from bnprops.judging.known_deviations import KNOWN_DEVIATIONS
    from bnprops.judging.release_probe import NOT_APPLICABLE, probe
    from bnprops.mx import v1

    monkeypatch.setattr(v1, "unavailable_reason", lambda: "MXNet 0.0 has no mx.sym.BatchNorm_v1")
    kd = next(kd for kd in KNOWN_DEVIATIONS if kd.entries == frozenset({"sym-v1"}))
    row = probe(kd)
    assert row["status"] == NOT_APPLICABLE and "has no mx.sym.BatchNorm_v1" in row["entries"]["sym-v1"]["detail"]
    result = ReleaseResult(release="0.0", install={"ok": True}, probe={"deviations": {kd.id: row}})
    assert cell(result, kd.id).startswith("n/a: BatchNorm_v1: MXNet 0.0 has no")


def test_batchnorms_deviations_reach_a_member_entry_only_through_the_plain_entry_it_shares_code_with() -> None:
    from bnprops.judging.judgement import predictions
    from bnprops.judging.known_deviations import KNOWN_DEVIATIONS

    kd = next(kd for kd in KNOWN_DEVIATIONS if kd.id == "onednn-fix-gamma-add-wipes-dgamma")
    if (reason := mx_family.skip_reason("nd-relu", "onednn")) is not None:
        pytest.skip(reason)
    case = mx_family.adapt("nd-relu", kd.reproducer())
    kernel = kernel_for(case, "onednn", "nd-relu")
    # By default a member entry's predictions include its plain entry's (mx.with_relu.PLAIN); like= itself: its own.
    shared = [k for k, _ in predictions(case, entry="nd-relu", kernel=kernel, scoped=False)]
    alone = [k for k, _ in predictions(case, entry="nd-relu", kernel=kernel, scoped=False, like="nd-relu")]
    assert kd not in alone and kd in shared
    assert mx_family.like("nd-relu") == "nd" and mx_family.like("sym-v1") is None

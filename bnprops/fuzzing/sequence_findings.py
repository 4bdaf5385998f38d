"""Training sequences in the fuzz job: which sequence an example runs, its findings, files and replay.

One fuzz example in ``every`` (``chance``) whose target has a session (``applies``) also draws a training
sequence (``search.sequences``); it runs on the target's entry point and backend (the
other backend's in a worker process: MXNet reads its kernel choice at start-up), and
``judging.state_model`` checks the state after every rule.  The sequence is part of the example, so
Hypothesis shrinks the list of rules first and a finding settles on the shortest sequence.

A finding's quantity is ``RULE:WHAT`` (``backward_again:moving_mean``): the same fault reached through
longer sequences is one finding, its entry keeping the shortest (Entry.sequence).  A rule where a
recorded sequence deviation's model held is "known".  ``script`` is the standalone replay, under the shared
reproducer contract (a known deviation's persists while the state shows it as recorded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from bnprops.base import reproduction
from bnprops.fuzzing.catalogue import KNOWN, SEQUENCE, VERDICTS, Entry, Signature
from bnprops.fuzzing.report.summary import per_target_table
from bnprops.fuzzing.reproducer import load_example, with_example
from bnprops.judging import in_network
from bnprops.judging.known_deviations import SEQUENCE_DEVIATIONS
from bnprops.judging.state_model import REPLAYS
from bnprops.model.case import Case
from bnprops.mx.runners import IN_PROCESS_BACKEND, sequence_unavailable_reason
from bnprops.search.chance import one_in
from bnprops.search.sequences import (
    ENTRIES,
    MEMBER_ENTRIES,
    Sequence,
    SequenceRun,
    member_unavailable_reason,
    resolve,
    routed_entry,
    run_sequence,
    sequences,
)

#: One example in this many runs its sequence while exploring (bnprops fuzz --sequences). A sequence of up to
#: MAX_RULES rules costs about 20 ms in this process (measured: the documentation's sequences page).
SEQUENCE_EVERY = 8
MAX_RULES = 8
#: Every sequence signature has this value regime.
REGIME = "sequence"
#: What a sequence check came to, counted per target in the report.
RESULTS = ("passed", "known", "failed", "raises", "crashes")
#: What a sequence is drawn for: nd (run on the target's entry), or a member's entry (run on the member where the
#: target is the plain entry whose code it shares, search.sequences.routed_entry): one in eight each, in a
#: campaign that selects float32.
DRAWN_ENTRIES = ("nd",) * 5 + MEMBER_ENTRIES
#: The module:function the worker process runs a sequence with.
_IN_WORKER = "bnprops.fuzzing.sequence_findings:run_in_worker"
_DEVIATIONS = {d.id: d for d in SEQUENCE_DEVIATIONS}


def sequence_draws(dtypes: Seq[str]) -> st.SearchStrategy[Sequence]:
    """Drawn on the examples whose coin (search.chance) comes up, with the family's ``chance``; a stored example
    decodes the same under any ``every``."""
    entries = DRAWN_ENTRIES if "float32" in dtypes else ("nd",)  # a member runs float32 only
    return sequences(entries=entries, dtypes=dtypes, max_rules=MAX_RULES)


def applies(entry: str, backend: str) -> bool:
    """A session exists for every entry point, on the CPU backends, and for members' entries where they run."""
    if entry in MEMBER_ENTRIES:
        return member_unavailable_reason(entry, backend) is None
    return entry in ENTRIES and backend in ("onednn", "native")


def chance(entry: str, backend: str, *, every: int) -> float:
    """How often an example on this target draws, and runs, a sequence: one in ``every`` where a session runs
    (``applies``, and this release has the sessions' APIs), else 0."""
    return one_in(every) if applies(entry, backend) and sequence_unavailable_reason(entry) is None else 0.0


def run_in_worker(spec: dict[str, Any]) -> SequenceRun:
    """The worker process's side: the sequence on that process's backend."""
    sequence = Sequence.from_dict(spec["sequence"])
    session = resolve(spec.get("session"))
    script, deviation = spec["script"], spec.get("deviation", "")
    return run_sequence(
        sequence, backend=IN_PROCESS_BACKEND, session_factory=session, script=script, deviation=deviation
    )


@dataclasses.dataclass(frozen=True)
class SequenceCheck:
    """One sequence run through one target, and the signatures it makes."""

    sequence: Sequence
    backend: str
    run: SequenceRun
    signatures: tuple[Signature, ...]

    @property
    def result(self) -> str:
        """What the report counts: passed, known, failed (the state left the model), raises or crashes."""
        if self.run.failed:
            return (
                self.run.quantity.split(":", 1)[0] if self.run.quantity.startswith(("raises", "crashes")) else "failed"
            )
        return "known" if self.run.known else "passed"

    def detail(self, sig: Signature) -> str:
        """What the report says about ``sig``: the sequence, and the failure (or the deviation it matches)."""
        head = f"MXNet ({sig.entry}, {sig.backend}): {self.sequence.describe()}"
        if sig.kind == KNOWN:
            kd = _DEVIATIONS[sig.deviation]
            return f"{head}\n{VERDICTS[KNOWN]} {kd.id}: {kd.summary}\nmodel: {kd.model}"
        if sig not in self.signatures:
            return "this example no longer shows the signature when run again (flaky?)"
        return f"{head}\n{self.run.message.split('Replay with', 1)[0].rstrip()}"


def signatures(run: SequenceRun, *, entry: str, backend: str) -> tuple[Signature, ...]:
    dtype = run.sequence.config.dtype
    sigs = [
        Signature(KNOWN, f"{rule}:{_DEVIATIONS[ident].affects}", entry, backend, dtype, (), REGIME, ident)
        for rule, ident in run.known
    ]
    if run.failed:
        rule = run.ran[-1] if run.ran else "start"
        sigs.append(Signature(SEQUENCE, f"{rule}:{run.quantity}", entry, backend, dtype, (), REGIME))
    return tuple(dict.fromkeys(sigs))


def check_sequence(
    sequence: Sequence,
    *,
    entry: str,
    backend: str,
    session: str | None = None,
    script: bool = False,
    deviation: str = "",
) -> SequenceCheck:
    """Run the drawn sequence on ``entry`` and ``backend`` (a member's, drawn for it, at its plain entry point);
    ``session`` (module:function) plants a session.

    ``script``: a replay script even when the sequence follows the model (a failure always has one), which checks
    recorded deviation ``deviation`` as recorded.
    """
    entry = routed_entry(sequence, entry, backend)
    built = sequence.for_entry(entry)
    if backend == IN_PROCESS_BACKEND:
        factory = resolve(session)
        run = run_sequence(built, backend=backend, session_factory=factory, script=script, deviation=deviation)
    else:
        spec = {"sequence": built.to_dict(), "session": session, "script": script, "deviation": deviation}
        try:
            run = in_network.worker_for(backend).call(spec, _IN_WORKER)
        except in_network.ChainCrashed as exc:
            run = SequenceRun(built, (), (), "crashes", str(exc))
        except in_network.ChainRaised as exc:  # bnprops failed in the worker: a finding with its message
            run = SequenceRun(built, (), (), "raises:" + str(exc).partition(":")[0], str(exc))
    return SequenceCheck(built, backend, run, signatures(run, entry=entry, backend=backend))


def without_needless_rules(checked: SequenceCheck, sig: Signature, *, session: str | None = None) -> SequenceCheck:
    """The check of ``checked``'s sequence less every rule the finding ``sig`` does not need, one at a time in order.

    Hypothesis's shrinker can stop short of that (a rule drawn first, before the ones that matter, may stay), so a
    settled finding is made 1-minimal here: without any one of its rules, the finding is gone.  A few runs of a
    short sequence, once per finding."""
    i = 0
    while i < len(checked.sequence.rules):
        rules = checked.sequence.rules
        fewer = dataclasses.replace(checked.sequence, rules=rules[:i] + rules[i + 1 :])
        again = check_sequence(fewer, entry=sig.entry, backend=sig.backend, session=session)
        if sig in again.signatures:
            checked = again
        else:
            i += 1
    return checked


def entry_case(sequence: Sequence) -> Case:
    """The catalogue's case for a sequence finding: the first batch on the initial state (for its size and summary)."""
    c = sequence.config
    x = np.zeros(c.x_shape, dtype=c.dtype)
    return Case(
        x=x,
        gamma=c.gamma,
        beta=c.beta,
        moving_mean=c.moving_mean,
        moving_var=c.moving_var,
        dy=np.zeros_like(x),
        axis=c.axis,
        eps=c.eps,
        momentum=c.momentum,
        fix_gamma=c.fix_gamma,
        use_global_stats=c.use_global_stats,
        regime=REGIME,
    )


def sequence_of(entry: Entry) -> Sequence:
    if entry.sequence is None:
        raise ValueError(f"{entry.signature.ident} keeps no sequence: is it a sequence finding?")
    return Sequence.from_json(entry.sequence)


def finding_json(entry: Entry, base: str) -> str:
    """``findings/ID.json`` for a sequence finding: ``base`` (reproducer.finding_json) plus the sequence."""
    return with_example(base, key="sequence", example=entry.sequence, summary=sequence_of(entry).describe())


def load_sequence(path: Path) -> Sequence | None:
    """The sequence a finding file keeps; None if it keeps none (not a sequence finding)."""
    return load_example(path, key="sequence", decode=Sequence.from_dict)


def script(entry: Entry) -> str:
    """The standalone replay (mxnet and numpy only, the shared contract): state_model's script for the sequence.

    A new finding's is the one written when it failed (Entry.replay: it checks the failing rule's value against
    the model, or that the rule raises, and persists while it departs as found); a recorded deviation's runs the
    sequence again on MXNet and checks, at the rule where it showed, that the state is as the deviation records.
    """
    sig = entry.signature
    sequence = sequence_of(entry).for_entry(sig.entry)
    recorded = sig.deviation if sig.kind == KNOWN else ""
    body = entry.replay if entry.replay and "def main(" in entry.replay else ""  # an older format: run it again
    if not body:
        checked = check_sequence(sequence, entry=sig.entry, backend=sig.backend, script=True, deviation=recorded)
        body = checked.run.script
    if recorded:
        persists = f"the state after the rule shows deviation {recorded}'s model, not the contract"
    else:
        persists = f"after rule {sig.quantity.replace(':', ', ', 1)} leaves the reference model of the state"
    about = [sig.describe(), f"Sequence ({entry.reduction}): {sequence.describe()}", "", REPLAYS]
    return reproduction.script(
        kind=sig.kind,
        ident=sig.ident,
        title="a training sequence on one BatchNorm",
        about=about,
        persists=persists,
        body=body or NO_REPLAY,
        recorded=recorded,
    )


#: The body of a sequence finding's script when no replay could be written (the run crashed its process).
NO_REPLAY = """
def main():
    return verdict(True, "no replay: the sequence did not run to a failure bnprops could write down (it crashed "
                   "the process running it); bnprops repro on the finding's JSON runs it again")
"""


def replay(sequence: Sequence, sig: Signature, *, entry: str, backend: str) -> bool:
    """Run a sequence finding again, say what happened, and return whether its finding still shows."""
    checked = check_sequence(sequence, entry=entry, backend=backend)
    print(f"sequence: {checked.sequence.describe()}")
    if not checked.signatures:
        print("the state followed the reference model after every rule")
    for now in checked.signatures:
        print(f"\n{now.describe()}\n{checked.detail(now)}")
    if (entry, backend) == (sig.entry, sig.backend):
        return sig in checked.signatures
    return any(s.kind == sig.kind and s.quantity == sig.quantity for s in checked.signatures)


def summary_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    """The report's table of sequence checks per target."""
    return per_target_table(
        "## Training sequences",
        "Sequences of rules on one BatchNorm run while exploring "
        "(bnprops/search/sequences.py, bnprops/judging/state_model.py; "
        "one example in `sequence_every`): the state after every rule against the reference model. A new finding "
        "is of kind `sequence` above; `known` counts sequences where a recorded sequence deviation's model held.",
        counts,
        RESULTS,
    )

"""The BatchNorm family's members in the fuzz job: which member an example runs, its findings, files and counts.

One fuzz example in ``every`` (``chance``) draws a member call: a (member entry, backend) pair among those that
can run here and a case from that member's own strategy (search.family). It runs through the member's runner and
is judged by the member's judge. Findings have the kind "member"; the quantity names the member and what failed
("BatchNormWithReLU/mismatch:dgamma", ".../raises:MXNetError"), the entry and backend are the member's, so each
member's findings are signatures (and causes) of their own. A departure a recorded deviation explains is
"known", under the member's entry. A member whose calls can kill their process (the registry's ``isolated``) runs
in a helper process (``HelperRunner``): a crash is the finding ".../crashed:SIGSEGV". ``script`` writes the
reproducer."""

from __future__ import annotations

import dataclasses
import re
import signal
from collections.abc import Callable, Sequence

from hypothesis import strategies as st

from bnprops.base import reproduction
from bnprops.base.family import spec_of
from bnprops.fuzzing.catalogue import KNOWN, MEMBER, Entry, Signature, case_flags, value_regime
from bnprops.fuzzing.report.summary import per_target_table
from bnprops.fuzzing.reproducer import SHOWS, call_body
from bnprops.judging.in_network import ChainCrashed, ChainRaised, worker_for
from bnprops.model.case import Case, Outputs
from bnprops.mx import family as mx_family
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import Runner, kernel_for
from bnprops.mx.worker import WorkerCrashed
from bnprops.search.chance import one_in
from bnprops.search.family import MEMBERS, member_of

#: One example in this many runs its member call while exploring (bnprops fuzz --member-every). Measured on
#: 1.9.1 (60 s campaigns, 2 workers): a BatchNormWithReLU call costs 15-35 ms, a BatchNorm_v1 call on the native
#: worker 0.2-0.7 s (its executors bound in the worker); at one in four the calls took 4.5-6.5% of the workers'
#: time, so one in eight, as for networks and sequences. Drawing the call (about 3 ms) is done where it runs.
MEMBER_EVERY = 8
#: What a member check came to, counted per member entry and backend in the report.
RESULTS = ("passed", "known", "failed", "error")
#: A drawn call that did not run (a dtype the campaign did not select): not counted.
SKIPPED = "skipped"
#: A member's draw: its entry, the backend it runs on, the case from its strategy.
MemberDraw = tuple[str, str, Case] | None


def runnable(entries: Sequence[str], backends: Sequence[str]) -> list[tuple[str, str]]:
    """The (member entry, backend) pairs that can run here; the others are skipped, as skipped() says why."""
    return [(e, b) for e in entries for b in backends if mx_family.skip_reason(e, b) is None]


def skipped(entries: Sequence[str], backends: Sequence[str]) -> list[dict[str, str]]:
    """The member targets that cannot run here, each with the reason (listed in the report)."""
    return [
        {"entry": e, "backend": b, "reason": reason}
        for e in entries
        for b in backends
        if (reason := mx_family.skip_reason(e, b)) is not None
    ]


def member_draws(pairs: Sequence[tuple[str, str]]) -> st.SearchStrategy[MemberDraw]:
    """A member call, on the examples whose coin (search.chance) comes up: a runnable pair and that member's case."""
    if not pairs:
        return st.none()
    by_member: dict[str, list[tuple[str, str]]] = {}
    for entry, backend in pairs:
        by_member.setdefault(member_of(entry).name, []).append((entry, backend))
    return st.one_of(
        *(
            st.tuples(st.sampled_from(chosen), next(m for m in MEMBERS if m.name == name).strategy()).map(
                lambda drawn: (drawn[0][0], drawn[0][1], drawn[1])
            )
            for name, chosen in by_member.items()
        )
    )


def chance(pairs: Sequence[tuple[str, str]], *, every: int) -> float:
    """How often an example draws, and runs, a member call: one in ``every`` when a pair can run here, else 0."""
    return one_in(every) if pairs else 0.0


@dataclasses.dataclass
class MemberCheck:
    """One member call judged: the case as judged (for BatchNormWithReLU, its head masked), result, findings."""

    entry: str
    backend: str
    case: Case
    result: str
    signatures: tuple[Signature, ...]
    message: str

    @classmethod
    def skipped(cls, case: Case) -> MemberCheck:
        """No member call ran for the example whose first case is ``case``."""
        return cls("", "", case, SKIPPED, (), "")

    def detail(self, sig: Signature) -> str:
        return self.message if sig in self.signatures else "this example no longer shows the signature (flaky?)"


#: What a helper process runs for a member call (HelperRunner): the member entry's own runner.
HELPER_CALL = "bnprops.mx.family:run_spec"
#: The CPU backends a helper process runs (judging.in_network's worker).
HELPER_BACKENDS = ("onednn", "native")


@dataclasses.dataclass(frozen=True)
class HelperRunner:
    """A member entry's runner in a helper process (judging.in_network's worker for the backend): a call that kills
    that process raises ChainCrashed here, and the next call starts a fresh one. ``function`` (module:function)
    makes the call there (tests plant crashes)."""

    entry: str
    backend: str
    function: str = HELPER_CALL

    def __call__(self, case: Case) -> Outputs:
        outputs: Outputs = worker_for(self.backend).call({"entry": self.entry, "case": case}, self.function)
        return outputs


def member_runner(
    entry: str, backend: str, *, runner_factory: Callable[[str, str], Runner], isolate: bool = False
) -> Runner:
    """A member call's runner: ``runner_factory``'s, or a HelperRunner where the call may kill its process (the
    registry's ``isolated``, or ``isolate``) and the factory is bnprops's own (tests plant runners that call none)."""
    runner = runner_factory(entry, backend)
    wanted = isolate or spec_of(entry).isolated
    if wanted and runner_factory is runner_for and backend in HELPER_BACKENDS:
        return HelperRunner(entry, backend)
    return runner


#: A crashed helper's message (in_network.ChainCrashed, mx.worker.WorkerCrashed): its exit status, and the line
#: MXNet's own signal handler prints before it exits with status 255.
_EXIT_STATUS = re.compile(r"exit status (-?\d+)")
_MXNET_SIGNAL = re.compile(r"Segmentation fault: (\d+)")


def crash_signal(message: str) -> str:
    """What killed a helper process, from its crash message: a signal's name ('SIGSEGV', 'SIGABRT'), 'hung' for a
    call that timed out, else 'exit N'."""
    if "hung for" in message:
        return "hung"
    caught = _MXNET_SIGNAL.search(message)
    status = _EXIT_STATUS.search(message)
    number = int(caught.group(1)) if caught else -int(status.group(1)) if status and int(status.group(1)) < 0 else 0
    if number:
        try:
            return signal.Signals(number).name
        except ValueError:
            return f"signal {number}"
    return f"exit {status.group(1)}" if status else "unknown"


def is_crash(sig: Signature) -> bool:
    """Is this member finding a call that killed its process?"""
    return sig.quantity.partition("/")[2].startswith("crashed:")


def _signature(what: str, case: Case, entry: str, backend: str, deviation: str = "") -> Signature:
    quantity = f"{member_of(entry).name}/{what}"
    return Signature(MEMBER, quantity, entry, backend, case.dtype, case_flags(case), value_regime(case), deviation)


#: A mismatch's kind as the plain cases' signatures name it (catalogue.classify): accuracy, unrecorded, else mismatch.
_KINDS = {"accuracy": "accuracy", "unrecorded": "unrecorded"}


def check_member(drawn: tuple[str, str, Case], *, runner: Runner) -> MemberCheck:
    """Run a drawn member call and judge it with the member's judge; a runner that raises is a finding."""
    entry, backend, case = drawn
    member = member_of(entry)
    try:
        case = mx_family.adapt(entry, case)
        judged = member.judge(case, runner(case), entry=entry, kernel=kernel_for(case, backend, entry))
    except (ChainCrashed, WorkerCrashed) as exc:  # the call killed the helper process it ran in
        sig = _signature(f"crashed:{crash_signal(str(exc))}", case, entry, backend)
        return MemberCheck(entry, backend, case, "error", (sig,), str(exc))
    except Exception as exc:  # a member that raises is a finding, not a crash of the campaign
        # (raised in a helper process, the message starts with the exception's own type)
        name = str(exc).partition(":")[0] if isinstance(exc, ChainRaised) else type(exc).__name__
        message = str(exc) if isinstance(exc, ChainRaised) else f"{type(exc).__name__}: {exc}"
        sig = _signature(f"raises:{name}", case, entry, backend)
        return MemberCheck(entry, backend, case, "error", (sig,), message)
    outcome = judged.outcome
    judged_case = outcome.case
    sigs = [
        _signature(f"{_KINDS.get(m.kind, 'mismatch')}:{m.quantity}", judged_case, entry, backend, m.deviation)
        for m in outcome.unexpected
    ]
    sigs += [
        _signature(f"stale:{','.join(sorted(kd.quantities))}", judged_case, entry, backend, kd.id)
        for kd in outcome.stale
    ]
    if not judged.ok and outcome.ok:  # the member's own judgement (e.g. a ReLU output below 0)
        sigs.append(_signature("judge", judged_case, entry, backend))
    known = [
        Signature(
            KNOWN, q, entry, backend, judged_case.dtype, case_flags(judged_case), value_regime(judged_case), kd.id
        )
        for kd, quantities in outcome.explained
        for q in sorted(quantities)
    ]
    result = "failed" if sigs else ("known" if known else "passed")
    return MemberCheck(entry, backend, judged_case, result, (*sigs, *known), judged.message())


def is_member_entry(entry: Entry) -> bool:
    return mx_family.is_member(entry.signature.entry)


def script(entry: Entry) -> str:
    """A member finding's standalone reproducer (mxnet and numpy only): the member's own call of the judged case,
    then the plain reproducer's judgement of it, after the member's view of MXNet's results (base.family)."""
    sig, case = entry.signature, entry.case
    member = member_of(sig.entry)
    call = mx_family.snippet(case, sig.entry, backend=sig.backend)
    if is_crash(sig):
        return _crash_script(entry, call)
    plain = dataclasses.replace(sig, kind=KNOWN if sig.kind == KNOWN else _plain_kind(sig))
    plain = dataclasses.replace(plain, quantity=sig.quantity if sig.kind == KNOWN else _plain_quantity(sig))
    body, meaning = call_body(
        dataclasses.replace(entry, signature=plain),
        call=call,
        view=member.reproducer_view,
        like=mx_family.like(sig.entry),
    )
    about = [sig.describe(), f"Example ({entry.reduction}): {case.describe()}", "", SHOWS]
    return reproduction.script(
        kind=sig.kind,
        ident=sig.ident,
        title=f"a single {member.name} call ({member.operator.split(',')[0]})",
        about=about,
        persists=meaning,
        body=body,
        recorded=sig.deviation if sig.kind == KNOWN else "",
    )


_CRASH_BODY = """
CALL = {call!r}


def main(call=CALL):
    \"\"\"Make the member's call in a fresh process: the finding persists while that process dies of a signal.\"\"\"
    import subprocess

    done = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True, timeout=900, check=False)
    died = done.returncode < 0 or "Segmentation fault" in done.stderr  # (MXNet's handler exits with 255)
    tail = done.stderr[-2000:]
    return verdict(died, f"the call's process exited with status {{done.returncode}}; its stderr ends:\\n{{tail}}")
"""


def _crash_script(entry: Entry, call: str) -> str:
    """A crash finding's reproducer: the member's call run in a subprocess, persisting while that process dies."""
    sig = entry.signature
    member = member_of(sig.entry)
    return reproduction.script(
        kind=sig.kind,
        ident=sig.ident,
        title=f"a single {member.name} call ({member.operator.split(',')[0]}) that kills its process",
        about=[sig.describe(), f"Example ({entry.reduction}): {entry.case.describe()}"],
        persists=f"the call's process dies ({sig.quantity.rpartition(':')[2]})",
        body=_CRASH_BODY.format(call=call),
    )


def _plain_kind(sig: Signature) -> str:
    """The plain reproducer's kind for a member finding: what the member's quantity says failed."""
    what = sig.quantity.split("/", 1)[1].split(":", 1)[0]
    kinds = {"raises": "error", "stale": "stale", "accuracy": "accuracy", "unrecorded": "unrecorded"}
    return kinds.get(what, "mismatch")


def _plain_quantity(sig: Signature) -> str:
    what = sig.quantity.split("/", 1)[1]
    return what.split(":", 1)[1] if ":" in what else "y"  # "judge": the member's own check of its output


def summary_line(counts: dict[str, dict[str, int]]) -> list[str]:
    """summary.md's line on the members: per member, its calls and those with a new finding (none: no line)."""
    per: dict[str, list[int]] = {}
    for target, cell in counts.items():
        name = member_of(target.split("/", 1)[0]).name
        calls = per.setdefault(name, [0, 0, 0])
        calls[0] += cell.get("checks", 0)
        calls[1] += cell.get("known", 0)
        calls[2] += cell.get("failed", 0) + cell.get("error", 0)
    if not per:
        return []
    listed = "; ".join(
        f"{name} {n:,} calls, {known} known, **{new} new**" for name, (n, known, new) in sorted(per.items())
    )
    return [f"Family members (calls, with a known deviation, with a new finding): {listed}."]


def summary_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    """The report's table of member calls: per member entry and backend, how many passed, were known, found."""
    names = ", ".join(f"{m.name} ({', '.join(m.entries)})" for m in MEMBERS)
    return per_target_table(
        "## The BatchNorm family's members",
        f"Member calls run while exploring (one example in `member_every`), each judged by its member's judge "
        f"(bnprops/search/family.py): {names}. A new finding is of kind `member` above, its quantity naming "
        "the member.",
        counts,
        RESULTS,
    )

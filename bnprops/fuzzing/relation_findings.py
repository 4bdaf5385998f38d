"""The exact relations in the fuzz job: which relation an example runs, and a broken relation as a finding.

One fuzz example in ``every`` (``chance``; a target and a group of cases, judged against the oracle) also draws
a relation and a parameter choice (``relation_draws``), and the relation runs on the group's first case through
the same runner, original call then transformed call (judging.relations). The draw is part of the example, so
the example database stores it and replay and shrinking reproduce it: a hunt for a relation finding runs the
drawn relation whatever its chance says, and a hunt for any other finding runs none.

A broken relation is a finding of kind "relation" whose quantity names the relation and what broke:
a quantity ("scale-data:dx") or the exception the transformed call raised ("scale-data:MXNetError").
Its catalogue entry keeps the (relation, choice) pair (Entry.relation); ``finding_json`` writes it into
``findings/ID.json``, and ``replay`` is what ``bnprops repro`` does with such a file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hypothesis import strategies as st

from bnprops.fuzzing.catalogue import RELATION, Entry, Signature, case_flags, value_regime
from bnprops.judging.relations import RELATIONS, Params, RelationOutcome
from bnprops.model.case import Case
from bnprops.mx.runners import Runner, adapt
from bnprops.search.chance import one_in
from bnprops.search.strategies import STACKED_ELEMENTS

#: One example in this many runs a relation while exploring (bnprops fuzz --relations): a check is two
#: single-case MXNet calls and the admissible-range analysis, about a third of a small example's cost.
RELATION_EVERY = 2
#: A large case's check costs half its judgement (two more calls at that size, and the analysis runs
#: over every element): large cases run one a quarter as often, so that they do not dominate the cost.
LARGE_FACTOR = 4
#: Parameter choices, as the relation properties draw them: an index into the relation's admissible ones.
CHOICES = st.integers(0, 2**16)
#: What a relation check came to; counted per relation in the report.
RESULTS = ("held", "broken", "no instance", "error")


@dataclasses.dataclass(frozen=True)
class RelationDraw:
    """A relation and its parameter choice (Relation.parameters), drawn on the fuzz examples that run one."""

    relation: str
    choice: int

    @property
    def key(self) -> tuple[str, int]:
        """What a catalogue entry keeps (Entry.relation)."""
        return (self.relation, self.choice)


def relation_draws() -> st.SearchStrategy[RelationDraw]:
    """Drawn on the examples whose coin (search.chance) comes up, with the family's ``chance``; a stored example
    decodes the same under any ``every``."""
    return st.builds(RelationDraw, st.sampled_from(list(RELATIONS)), CHOICES)


def chance(case: Case, *, every: int) -> float:
    """How often an example whose first case is ``case`` draws, and runs, a relation: one in ``every``, one in
    LARGE_FACTOR times as many for a large case; 0 for none."""
    return one_in(every * LARGE_FACTOR if case.x.size > STACKED_ELEMENTS else every)


def relation_of(sig: Signature) -> str:
    """The relation a relation signature names ('scale-data' of 'scale-data:dx')."""
    return sig.quantity.partition(":")[0]


@dataclasses.dataclass(frozen=True)
class RelationCheck:
    """One relation run on one case (as its entry point runs it, runners.adapt), and the findings it makes."""

    draw: RelationDraw
    case: Case
    entry: str
    backend: str
    params: Params | None = None
    outcome: RelationOutcome | None = None
    #: The exception a call raised ("Type: message"), if one did.
    error: str = ""
    signatures: tuple[Signature, ...] = ()

    @property
    def result(self) -> str:
        if self.signatures:
            return "broken"
        if self.error:
            return "error"  # the original call raised: the oracle's judgement of the case reports that
        return "held" if self.outcome is not None else "no instance"

    def detail(self) -> str:
        """What broke, for the report: the relation, both calls and each violation (no arrays)."""
        relation = RELATIONS[self.draw.relation]
        lines = [
            f"MXNet ({self.entry}, {self.backend}) breaks relation {relation.name!r} ({relation.statement}) "
            f"with {self.params} (parameter choice {self.draw.choice})",
            f"  first:  {self.case.describe()}",
        ]
        if self.outcome is not None:
            lines.append(f"  second: {self.outcome.second_case.describe()}")
            lines += ["  " + v.describe().replace("\n", "\n  ") for v in self.outcome.violations]
        if self.error:
            lines.append(f"  the second call raised {self.error}")
        return "\n".join(lines)


def check_relation(case: Case, draw: RelationDraw, *, runner: Runner, entry: str, backend: str) -> RelationCheck:
    """Run the drawn relation on ``case`` through ``runner``: the original call, then the transformed one."""
    relation = RELATIONS[draw.relation]
    try:
        case = adapt(entry, case)
    except ValueError:
        return RelationCheck(draw, case, entry, backend)  # the entry point cannot make this call at all
    params = relation.parameters(case, draw.choice)
    if params is None:
        return RelationCheck(draw, case, entry, backend)
    second_case = relation.transform(case, params)

    def signature(what: str) -> Signature:
        quantity = f"{relation.name}:{what}"
        return Signature(RELATION, quantity, entry, backend, case.dtype, case_flags(case), value_regime(case))

    try:
        first = runner(case)
    except Exception as exc:
        return RelationCheck(draw, case, entry, backend, params, error=f"{type(exc).__name__}: {exc}")
    try:
        second = runner(second_case)
    except Exception as exc:  # the original call ran: the transformed one must too
        error = f"{type(exc).__name__}: {exc}"
        return RelationCheck(draw, case, entry, backend, params, None, error, (signature(type(exc).__name__),))
    violations = tuple(relation.check(case, first, second, params))
    outcome = RelationOutcome(relation.name, case, params, second_case, violations)
    signatures = tuple(dict.fromkeys(signature(v.quantity) for v in violations))
    return RelationCheck(draw, case, entry, backend, params, outcome, "", signatures)


def draw_of(entry: Entry) -> RelationDraw:
    """The relation and parameter choice a relation finding's example ran."""
    if entry.relation is None:
        raise ValueError(f"{entry.signature.ident} keeps no relation: is it a relation finding?")
    return RelationDraw(*entry.relation)


def finding_json(entry: Entry, base: str) -> str:
    """``findings/ID.json`` for a relation finding: ``base`` (reproducer.finding_json) plus the relation drawn."""
    draw = draw_of(entry)
    case = adapt(entry.signature.entry, entry.case)
    data = json.loads(base)
    data["relation"] = {
        "name": draw.relation,
        "choice": draw.choice,
        "params": str(RELATIONS[draw.relation].parameters(case, draw.choice)),
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def load_draw(path: Path) -> RelationDraw:
    """The relation and parameter choice a finding file keeps (ValueError if it keeps none)."""
    try:
        spec = json.loads(path.read_text())["relation"]
        return RelationDraw(str(spec["name"]), int(spec["choice"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is a relation finding without its relation and parameter choice ({exc})") from exc


def replay(case: Case, sig: Signature, draw: RelationDraw, *, runner: Runner, entry: str, backend: str) -> bool:
    """Run a relation finding again, say what happened, and return whether its signature still shows."""
    if draw.relation not in RELATIONS:
        raise ValueError(f"unknown relation {draw.relation!r}; bnprops knows {', '.join(RELATIONS)}")
    checked = check_relation(case, draw, runner=runner, entry=entry, backend=backend)
    if checked.result == "no instance":
        print(f"relation {draw.relation!r} has no exact instance for this case (parameter choice {draw.choice})")
    elif checked.result == "error":
        print(f"the original call raised {checked.error}")
    elif checked.result == "held":
        print(f"relation {draw.relation!r} holds with {checked.params}: both calls agree bit for bit")
    else:
        print(checked.detail())
    # Run elsewhere (--entry, --backend), the finding's own signature cannot show: any break counts.
    same_place = (entry, backend) == (sig.entry, sig.backend)
    return sig in checked.signatures if same_place else bool(checked.signatures)


def summary_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    """The report's table of relation checks: per relation, how many held, broke, had no instance or raised."""
    lines = [
        "## Exact relations",
        "",
        "Relation checks run while exploring (bnprops/judging/relations.py; one example in `relation_every`). A broken "
        "relation is a new finding of kind `relation` above.",
        "",
    ]
    if not counts:
        return [*lines, "None ran."]
    lines += ["| relation | checks | " + " | ".join(RESULTS) + " |", "|---|---:|" + "---:|" * len(RESULTS)]
    for name in sorted(counts):
        cell = counts[name]
        lines.append(f"| {name} | {sum(cell.values())} | " + " | ".join(str(cell.get(r, 0)) for r in RESULTS) + " |")
    return lines

"""BatchNorm through a model's life in the fuzz job: which scenario an example runs, its findings and reproducer.

An example draws, only where it is ``due`` (one example in ``every``, by its first case), a life-cycle scenario
(bnprops.mx.lifecycle_kernel: train/evaluate/train, export/import, float16 cast, symbolic inference, with its
channels, hybridize, dtype and seed). It runs in this process on its
backend and is judged by judging.lifecycle. A check this release lacks the API for is noted ("lacks"), not run.
Findings have the kind "lifecycle": the quantity is ``CHECK/WHAT`` ("export-import/differs:dgamma"); one a
recorded life-cycle deviation explains is "known". ``script`` writes the standalone reproducer.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from bnprops.base import reproduction
from bnprops.fuzzing.catalogue import KNOWN, LIFECYCLE, VERDICTS, Entry, Signature
from bnprops.fuzzing.report.summary import per_target_table
from bnprops.fuzzing.reproducer import load_example, with_example
from bnprops.judging import lifecycle
from bnprops.judging.known_deviations import LIFECYCLE_DEVIATIONS
from bnprops.mx import lifecycle_kernel
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND
from bnprops.search.chance import one_in

#: One example in this many runs a life-cycle scenario (bnprops fuzz --lifecycle). A scenario costs 30-160 ms on a
#: loaded 2-core machine (symbolic inference least, train/evaluate/train most); at one in two it took 10% of a
#: worker's time, so one in sixteen (about 1.5%).
LIFECYCLE_EVERY = 16
#: Every life-cycle signature has this value regime.
REGIME = "life-cycle"
#: What a scenario came to, counted per check in the report.
RESULTS = ("passed", "known", "failed", "lacks")
#: An example that was not due: nothing drawn, nothing ran, nothing counted.
SKIPPED = "skipped"
#: The entry point each check's model is built through.
ENTRY = {
    "train-evaluate-train": "gluon",
    "export-import": "gluon",
    "float16-cast": "gluon",
    "symbolic-inference": "sym",
}


def dtype_of(scenario: dict[str, Any]) -> str:
    """The dtype BatchNorm runs in: float16 for the cast, the drawn one for the symbol, else float32."""
    by_check = {"float16-cast": "float16", "symbolic-inference": str(scenario["dtype"])}
    return by_check.get(scenario["check"], "float32")


def chance(*, every: int) -> float:
    """How often an example draws, and runs, a life-cycle scenario: one in ``every`` (0: never)."""
    return one_in(every)


def lifecycle_draws(dtypes: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A scenario (its check, size, hybridization, dtype and seed) among the checks ``dtypes`` allow; drawn only
    where the example's coin for the family comes up (search.chance)."""
    checks = [c for c in lifecycle.CHECKS if dtype_of({"check": c, "dtype": dtypes[0]}) in dtypes]
    if not checks:
        return st.nothing()
    return st.fixed_dictionaries(
        {
            "check": st.sampled_from(checks),
            "channels": st.integers(1, 16),
            "hybridize": st.booleans(),
            "dtype": st.sampled_from(list(dtypes)),
            "seed": st.integers(0, 2**16 - 1),
        }
    )


def lacking() -> list[dict[str, str]]:
    """The checks this release cannot run, each with the reason (the report lists them as skipped)."""
    return [
        {"entry": f"life cycle: {check}", "backend": IN_PROCESS_BACKEND, "reason": reason}
        for check in lifecycle.CHECKS
        if (reason := lifecycle_kernel.lacks(check)) is not None
    ]


@dataclasses.dataclass(frozen=True)
class LifecycleCheck:
    """One scenario run and judged: what it came to, its problems and the signatures they make."""

    scenario: dict[str, Any] | None
    result: str
    problems: tuple[lifecycle.Problem, ...] = ()
    signatures: tuple[Signature, ...] = ()
    note: str = ""

    def showing(self, sig: Signature) -> list[lifecycle.Problem]:
        """The problems that make the signature ``sig``."""
        return [p for p in self.problems if _signature(self.scenario or {}, p) == sig]

    def detail(self, sig: Signature) -> str:
        shown = self.showing(sig)
        if not shown:
            return "this example no longer shows the signature when run again (flaky?)"
        head = f"life cycle: {describe(self.scenario or {})}"
        known = [f"{VERDICTS[KNOWN]} {p.deviation}" for p in shown[:1] if p.deviation]
        return "\n".join([head, *known, *(p.message for p in shown)])


def describe(scenario: dict[str, Any]) -> str:
    return ", ".join(f"{k}={scenario[k]}" for k in sorted(scenario))


def _signature(scenario: dict[str, Any], problem: lifecycle.Problem) -> Signature:
    check = scenario["check"]
    return Signature(
        KNOWN if problem.deviation else LIFECYCLE,
        f"{check}/{problem.what}",
        ENTRY[check],
        IN_PROCESS_BACKEND,
        dtype_of(scenario),
        (("hybridize", str(scenario["hybridize"])),) if check != "symbolic-inference" else (),
        REGIME,
        problem.deviation,
    )


def check_lifecycle(scenario: dict[str, Any] | None, *, runner_factory: Any) -> LifecycleCheck:
    """Run a drawn scenario (None: the gate stayed shut) through judging.lifecycle; ``runner_factory`` makes the
    plain calls (tests plant faults there)."""
    if scenario is None:
        return LifecycleCheck(None, SKIPPED)
    missing = lifecycle_kernel.lacks(scenario["check"])
    if missing is not None:
        return LifecycleCheck(scenario, "lacks", note=missing)
    problems = tuple(lifecycle.check(scenario, runner_factory=runner_factory))
    sigs = tuple(dict.fromkeys(_signature(scenario, p) for p in problems))
    new = any(s.kind != KNOWN for s in sigs)
    result = "failed" if new else ("known" if sigs else "passed")
    return LifecycleCheck(scenario, result, problems, sigs)


def check_of(sig: Signature) -> str:
    return sig.quantity.split("/", 1)[0]


def kept(scenario: dict[str, Any], problems: Sequence[lifecycle.Problem]) -> str:
    """What an entry keeps of a life-cycle finding (Entry.lifecycle): the scenario and the worst difference of
    ``problems``, those of the finding's own signature (its reproducer's threshold: another quantity's larger
    difference would make the reproducer call a persisting finding gone)."""
    sizes = [p.error for p in problems if not math.isnan(p.error)]
    return json.dumps({"scenario": scenario, "error": max(sizes) if sizes else None}, sort_keys=True)


def scenario_of(entry: Entry) -> dict[str, Any]:
    if entry.lifecycle is None:
        raise ValueError(f"{entry.signature.ident} keeps no life-cycle scenario: is it a life-cycle finding?")
    return dict(json.loads(entry.lifecycle)["scenario"])


def error_of(entry: Entry) -> float:
    """The worst difference the finding showed (nan: a problem with no size, such as a raise)."""
    error = json.loads(entry.lifecycle or "{}").get("error")
    return math.nan if error is None else float(error)


_MAIN = '''
import json

SPEC = json.loads({spec!r})
WHAT = {what!r}  # the problem this reproducer looks for
SIGNATURE = {signature!r}  # a recorded deviation's words: it persists while the problem's message holds them
THRESHOLD = {threshold}  # a difference persists from this size on (half the one found); nan: any occurrence


def problems(ran, plain_call):
    """(what, message, size) for each note, each step that differs from the plain call, each twin that differs."""
    found = [(what, message, math.nan) for what, message in ran['notes']]
    pairs = [(step['what'], step['model'], plain_call(step)) for step in ran['steps']]
    pairs += [(what, a, b) for what, a, b in ran['twins']]
    for what, first, second in pairs:
        for q in sorted(set(first) & set(second)):
            a, b = first[q].astype(np.float64), second[q].astype(np.float64)
            if np.array_equal(a, b, equal_nan=True):
                print(f'{{what}}: {{q:12}} bit for bit')
                continue
            size = float(np.nanmax(np.abs(a - b))) if a.shape == b.shape else float('inf')
            found.append((f'differs:{{q}}', f'{{what}}: {{q}} differs, max |model - plain| = {{size:.3g}}', size))
    return found


def main(run_scenario=run, plain_call=plain):
    """The contract's verdict: does the scenario still show WHAT (as recorded: with SIGNATURE in its message)?"""
    print('scenario:', SPEC)
    try:
        found = problems(run_scenario(SPEC), plain_call)
    except Exception as exc:
        found = [(f'raises:{{type(exc).__name__}}', f'the scenario raised {{type(exc).__name__}}: {{exc}}', math.nan)]
    for _, message, _ in found:
        print(message)
    hits = [
        m for w, m, size in found
        if w == WHAT and SIGNATURE in m and (math.isnan(THRESHOLD) or not size < THRESHOLD)
    ]
    return verdict(bool(hits), hits[0] if hits else f'no {{WHAT}} problem (of {{len(found)}} found)')
'''


def script(entry: Entry) -> str:
    """The standalone reproducer (mxnet and numpy only, the shared contract): the life-cycle kernel's source, the
    scenario, and a main that runs it and compares each step with mx.nd.BatchNorm alone (lifecycle_kernel.plain)."""
    sig, scenario = entry.signature, scenario_of(entry)
    what = sig.quantity.split("/", 1)[1]
    recorded = next((d for d in LIFECYCLE_DEVIATIONS if d.id == sig.deviation), None) if sig.kind == KNOWN else None
    threshold = error_of(entry) / 2
    source = inspect.getsource(lifecycle_kernel).replace("from __future__ import annotations\n", "")
    head = "import math\nimport os\n\nos.environ.setdefault('MXNET_ENGINE_TYPE', 'NaiveEngine')  # as bnprops runs it\n"
    if IN_PROCESS_BACKEND == "native":
        head += "os.environ['MXNET_MKLDNN_ENABLED'] = '0'  # the native kernel (read at import)\n"
    main = _MAIN.format(
        spec=json.dumps(scenario, sort_keys=True),
        what=what,
        signature=recorded.signature if recorded else "",
        threshold="float('nan')" if math.isnan(threshold) else repr(threshold),
    )
    return reproduction.script(
        kind=sig.kind,
        ident=sig.ident,
        title=f"BatchNorm through a model's life: the {scenario['check']} scenario",
        about=[sig.describe(), f"Scenario: {describe(scenario)}", f"Example: {entry.reduction}"],
        persists=f"the scenario shows a '{what}' problem"
        + (f" whose message holds {recorded.signature!r}" if recorded else ""),
        body=head + source + main,
        recorded=recorded.id if recorded else "",
    )


def finding_json(entry: Entry, base: str) -> str:
    """``findings/ID.json`` for a life-cycle finding: ``base`` (reproducer.finding_json) plus the scenario."""
    return with_example(base, key="lifecycle", example=entry.lifecycle, summary=describe(scenario_of(entry)))


def load_scenario(path: Path) -> dict[str, Any] | None:
    """The scenario a finding file keeps; None if it keeps none (not a life-cycle finding)."""
    return load_example(path, key="lifecycle", decode=lambda kept: dict(kept["scenario"]))


def replay(scenario: dict[str, Any], sig: Signature) -> bool:
    """Run a life-cycle finding's scenario again, say what happened, and return whether its finding still shows."""
    checked = check_lifecycle(scenario, runner_factory=runner_for)
    print(f"scenario: {describe(scenario)}")
    if checked.result == "lacks":
        print(f"this MXNet cannot run it: {checked.note}")
        return False
    for problem in checked.problems:
        print(f"\n{problem.message}" + (f"\n({VERDICTS[KNOWN]} {problem.deviation})" if problem.deviation else ""))
    if not checked.problems:
        print("every step equals the plain call, and the twins each other")
    return sig in checked.signatures


def summary_line(counts: dict[str, dict[str, int]]) -> list[str]:
    """summary.md's line on the life-cycle scenarios that ran (none: no line)."""
    if not counts:
        return []
    listed = "; ".join(
        f"{check} {c.get('checks', 0):,} run, {c.get('known', 0)} known, **{c.get('failed', 0)} new**"
        + (f", lacks: {c['lacks']}" if c.get("lacks") else "")
        for check, c in sorted(counts.items())
    )
    return [f"Life cycle (scenarios run, with a known deviation, with a new finding): {listed}."]


def summary_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    """The report's table of life-cycle scenarios: per check, how many passed, were known, found, lacked."""
    return per_target_table(
        "## BatchNorm through a model's life",
        "Life-cycle scenarios run while exploring (one example in `lifecycle_every`; bnprops.mx.lifecycle_kernel, "
        "judged by bnprops.judging.lifecycle): each BatchNorm step against the same call alone, an exported model "
        "against its imported twin. A new finding is of kind `lifecycle` above, its quantity naming the check.",
        counts,
        RESULTS,
    )

"""Is each recorded deviation present in the MXNet release this process runs? Its reproducer says.

``python -m bnprops.judging.release_probe OUT.json`` (``bnprops versions`` runs it in each release's environment)
writes the environment (MXNet's and oneDNN's versions), which entry points and backends this release
has, and per known deviation (value, network, life-cycle and sequence ones) its status here, whatever its
recorded scope says:

* ``present``: MXNet matches the deviation's model where it differs from the oracle (on every entry
  point it was run on; ``partial`` when on some only);
* ``absent``: MXNet returns the oracle's values on the reproducer (fixed, or not yet broken);
* ``differs``: MXNet matches neither (deviates, but not as recorded), or the reproducer raises;
* ``not applicable``: the release cannot express the reproducer (no such entry point, or the kernel it
  needs, e.g. no oneDNN in the 1.3-1.6 'mxnet' wheels); a deviation scoped to a family member's entries
  is probed only where the release has the member (``n/a`` with the member's reason otherwise).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bnprops.base import atomic
from bnprops.base.family import MEMBER_ENTRIES, resolve, spec_of
from bnprops.judging import lifecycle
from bnprops.judging.declarations import lifted
from bnprops.judging.deviations import LIFECYCLE_DEVIATIONS
from bnprops.judging.judgement import Outcome, judge
from bnprops.judging.known_deviations import (
    KNOWN_DEVIATIONS,
    NETWORK_DEVIATIONS,
    SEQUENCE_DEVIATIONS,
    KnownDeviation,
    NetworkDeviation,
    SequenceDeviation,
)
from bnprops.judging.shortest_sequence import run_shortest
from bnprops.model.case import QUANTITIES, Case
from bnprops.mx import family, mxversion
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import (
    ALL_BACKENDS,
    ENTRY_POINTS,
    IN_PROCESS_BACKEND,
    adapt,
    entry_unavailable_reason,
    kernel_for,
    network_unavailable_reason,
    sequence_unavailable_reason,
    unavailable_reason,
)

PRESENT, ABSENT, PARTIAL, DIFFERS, NOT_APPLICABLE = "present", "absent", "partial", "differs", "not applicable"
STATUSES = (PRESENT, ABSENT, PARTIAL, DIFFERS, NOT_APPLICABLE)


def member_backend(entry: str) -> str | None:
    """The CPU backend a member entry is probed on: this process's if its KERNELS allow, else the other one
    (served by its worker); None if neither can run it here."""
    ordered = (IN_PROCESS_BACKEND, *(b for b in ("onednn", "native") if b != IN_PROCESS_BACKEND))
    return next((b for b in ordered if family.skip_reason(entry, b) is None), None)


def probe_member_entry(kd: KnownDeviation, entry: str) -> tuple[str, str]:
    """(status, detail) of the deviation's reproducer on a family member's entry, judged by the member's judge."""
    backend = member_backend(entry)
    if backend is None:
        reasons = "; ".join(f"{b}: {family.skip_reason(entry, b)}" for b in ("onednn", "native"))
        return NOT_APPLICABLE, f"n/a: {reasons}"
    try:
        case = family.adapt(entry, kd.reproducer())
        outputs = runner_for(entry, backend)(case)
        judged = resolve(spec_of(entry).judge)(
            case, outputs, entry=entry, kernel=kernel_for(case, backend, entry), checked=QUANTITIES
        )
    except Exception as exc:  # a release that rejects the call shows something else than recorded
        return DIFFERS, f"raises {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc) else ''}"
    status, detail = _status(kd, judged.outcome)
    return status, f"{detail} (on {backend})"


def probe_backend(kd: KnownDeviation) -> str:
    """The CPU backend a deviation is probed on: the one it needs where this build has it (the native kernel's
    deviations on a oneDNN build, served by the worker), else this process's."""
    needs = kd.needs_backend
    return needs if needs in ("onednn", "native") and unavailable_reason(needs) is None else IN_PROCESS_BACKEND


def probe_entry(kd: KnownDeviation, entry: str) -> tuple[str, str]:
    """(status, detail) of the deviation's reproducer on one entry point, on its probe backend."""
    if entry in MEMBER_ENTRIES:
        return probe_member_entry(kd, entry)
    backend = probe_backend(kd)
    case = adapt(entry, kd.reproducer())
    note = "" if backend == IN_PROCESS_BACKEND else f" (on {backend})"
    if case.x.ndim == 2 and case.axis == 1 and not _applies(kd, case, entry, backend):
        four = lifted(case)
        if _applies(kd, four, entry, backend):  # oneDNN runs only 4-D BatchNorm before 1.8: probe the same call there
            case, note = four, note + f" (as {case.dtype}{list(four.shape)}: 4-D, oneDNN's path)"
    status, detail = _judged(kd, case, entry, backend)
    return status, detail + note


def _applies(kd: KnownDeviation, case: Case, entry: str, backend: str) -> bool:
    from bnprops.judging.judgement import predictions

    return any(k is kd for k, _ in predictions(case, entry=entry, kernel=kernel_for(case, backend), scoped=False))


def _judged(kd: KnownDeviation, case: Case, entry: str, backend: str) -> tuple[str, str]:
    kernel = kernel_for(case, backend)
    try:
        outputs = runner_for(entry, backend)(case)
    except Exception as exc:  # a release that rejects the call shows something else than recorded
        return DIFFERS, f"raises {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc) else ''}"
    outcome = judge(case, outputs, entry=entry, kernel=kernel, checked=QUANTITIES, backend=backend, scoped=False)
    if not _applies(kd, case, entry, backend):
        return NOT_APPLICABLE, f"its conditions do not hold on the {kernel} kernel of this build"
    return _status(kd, outcome)


def _status(kd: KnownDeviation, outcome: Outcome) -> tuple[str, str]:
    mine = [k for k, _ in outcome.explained if k is kd]
    if outcome.unexpected:
        first = outcome.unexpected[0]
        return DIFFERS, f"{first.quantity}: matches neither the oracle nor the model ({first.kind})"
    if mine:
        return PRESENT, "MXNet matches the model"
    if kd in outcome.stale or not outcome.verdict.failed_quantities:
        return ABSENT, "MXNet returns the oracle's values"
    return DIFFERS, f"fails in {sorted(outcome.verdict.failed_quantities)}, explained by other deviations"


def probe(kd: KnownDeviation) -> dict[str, Any]:
    """The deviation's status in this release, over the entry points it shows on that this release has."""
    entries = sorted(kd.entries) if kd.entries is not None else list(ENTRY_POINTS)
    per_entry: dict[str, dict[str, str]] = {}
    for entry in entries:
        if entry in MEMBER_ENTRIES:  # a release without the member: n/a, with the member's own reason
            lacking = family.unavailable_reason(entry)
            missing = None if lacking is None else f"n/a: {spec_of(entry).name}: {lacking}"
        else:
            missing = entry_unavailable_reason(entry)
        if missing is not None:
            per_entry[entry] = {"status": NOT_APPLICABLE, "detail": missing}
            continue
        status, detail = probe_entry(kd, entry)
        per_entry[entry] = {"status": status, "detail": detail}
    return {"status": summarise([v["status"] for v in per_entry.values()]), "entries": per_entry}


def probe_network(kd: NetworkDeviation) -> dict[str, Any]:
    """A network deviation's status here: its reproducer chain, run as the fuzz job runs chains."""
    from bnprops.judging.in_network import ENTRY_OF, check_chain

    chain = kd.reproducer()
    entry = ENTRY_OF[chain.api]
    missing = network_unavailable_reason(entry)
    if missing is not None:
        return _row(entry, NOT_APPLICABLE, missing)
    if not kd.applies_to(chain, IN_PROCESS_BACKEND):
        detail = f"its conditions do not hold on the {IN_PROCESS_BACKEND} backend of this build"
        return _row(entry, NOT_APPLICABLE, detail)
    result = check_chain(chain, backend=IN_PROCESS_BACKEND)
    shown = [f for f in result.findings if f.kind == kd.kind and kd.signature in f.message]
    if shown:
        status, detail = PRESENT, "MXNet fails as recorded"
    elif not result.findings:
        status, detail = ABSENT, "the chain runs and matches the plain call"
    else:
        status, detail = DIFFERS, f"{result.findings[0].kind}: {result.findings[0].message.splitlines()[0][:200]}"
    return _row(entry, status, detail)


def _row(entry: str, status: str, detail: str) -> dict[str, Any]:
    """A deviation's row probed on one entry (or check) alone."""
    return {"status": status, "entries": {entry: {"status": status, "detail": detail}}}


def probe_lifecycle(ld: Any) -> dict[str, Any]:
    """A life-cycle deviation's status here: its reproducer's scenario (judging.lifecycle.probe)."""
    status, detail = lifecycle.probe(ld)
    return _row(ld.check, status, detail)


def probe_sequence(sd: SequenceDeviation) -> dict[str, Any]:
    """A sequence deviation's status here: its shortest sequence (judging.shortest_sequence) on this process's
    backend, present where the state after its rules shows its model."""
    assert sd.shortest_on is not None
    entry = sd.shortest_on[0]
    missing = sequence_unavailable_reason(entry)
    if missing is None and sd.needs_backend not in (None, IN_PROCESS_BACKEND):
        missing = f"needs the {sd.needs_backend} backend; this process runs {IN_PROCESS_BACKEND}"
    if missing is not None:
        return _row(entry, NOT_APPLICABLE, missing)
    kernel, known, failure = run_shortest(sd)
    if sd.needs_backend not in (None, kernel):
        status, detail = NOT_APPLICABLE, f"its conditions do not hold on the {kernel} kernel of this build"
    elif sd.id in known:
        status, detail = PRESENT, f"{' > '.join(sd.sequence)}: the state shows its model"
    elif failure:
        status, detail = DIFFERS, failure[:200]
    else:
        status, detail = ABSENT, f"{' > '.join(sd.sequence)}: the state follows the contract"
    return _row(entry, status, detail)


def summarise(statuses: list[str]) -> str:
    """One status from the entry points': present on all that apply, absent on all, else partial/differs."""
    applied = [s for s in statuses if s != NOT_APPLICABLE]
    if not applied:
        return NOT_APPLICABLE
    if DIFFERS in applied:
        return DIFFERS
    if all(s == PRESENT for s in applied):
        return PRESENT
    if all(s == ABSENT for s in applied):
        return ABSENT
    return PARTIAL


def run() -> dict[str, Any]:
    result: dict[str, Any] = {
        "environment": mxversion.environment(),
        "in_process_backend": IN_PROCESS_BACKEND,
        "entries": {e: entry_unavailable_reason(e) for e in ENTRY_POINTS},
        "members": {e: family.unavailable_reason(e) for e in MEMBER_ENTRIES},
        "backends": {b: unavailable_reason(b) for b in ALL_BACKENDS},
        "deviations": {},
    }
    probes: list[tuple[Any, Callable[[Any], dict[str, Any]]]] = [
        *((kd, probe) for kd in KNOWN_DEVIATIONS),
        *((nd, probe_network) for nd in NETWORK_DEVIATIONS),
        *((ld, probe_lifecycle) for ld in LIFECYCLE_DEVIATIONS),
        # A sequence deviation that needs another engine (MXNET_ENGINE_TYPE) has no shortest sequence to run here.
        *((sd, probe_sequence) for sd in SEQUENCE_DEVIATIONS if sd.shortest_on is not None),
    ]
    for declared, probe_one in probes:
        try:
            row = probe_one(declared)
        except Exception:  # one broken probe must not hide the others
            row = {"status": DIFFERS, "entries": {}, "error": traceback.format_exc(limit=4)}
        row["recorded_scope"] = declared.releases.describe()
        row["recorded_here"] = declared.releases.holds_here()
        result["deviations"][declared.id] = row
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bnprops.judging.release_probe OUT.json", file=sys.stderr)
        return 2
    result = run()
    atomic.write_text(Path(argv[0]), json.dumps(result, indent=1, sort_keys=True) + "\n")
    for name, row in result["deviations"].items():
        print(f"{name:<56}{row['status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

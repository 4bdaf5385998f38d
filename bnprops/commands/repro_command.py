"""``bnprops repro``: judge a finding, a saved case or a life-cycle, member, relation, network or sequence finding again
on this machine's MXNet, and say whether it still shows.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bnprops.base.family import MEMBER_ENTRIES
from bnprops.commands.arguments import EXIT_FOUND, EXIT_OK
from bnprops.model.case import QUANTITIES, Case

if TYPE_CHECKING:
    from bnprops.fuzzing.catalogue import Signature


def repro(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.fuzzing.catalogue import classify, classify_error
    from bnprops.fuzzing.plan import kernel_of
    from bnprops.fuzzing.reproducer import load_finding
    from bnprops.judging.checks import check
    from bnprops.mx.backends import runner_for, same_kernel_backend
    from bnprops.mx.runners import BackendUnavailable

    try:
        case, sig, entry, backend = load_finding(args.file)
    except ValueError as exc:
        parser.error(str(exc))
    if sig is not None and sig.kind == "relation":  # catalogue.RELATION: its two calls again, no oracle
        return _repro_relation(args, parser, case, sig)
    if sig is not None and sig.regime == "in-network":  # network_findings.REGIME: the chain again
        return _repro_network(args, parser, sig)
    if sig is not None and sig.regime == "sequence":  # sequence_findings.REGIME: the rules again
        return _repro_sequence(args, parser, sig)
    if sig is not None and sig.regime == "life-cycle":  # lifecycle_findings.REGIME: the scenario again
        return _repro_lifecycle(args, parser, sig)
    entry = args.entry or entry or "sym"
    backend = args.backend or backend or "onednn"
    if entry in MEMBER_ENTRIES:  # a family member's call: its own runner and judge
        return _repro_member(parser, case, sig, entry, backend)
    try:
        # A finding from oneDNN's backend replays on a build without oneDNN where its kernel was the native one.
        run_on = same_kernel_backend(case, backend, entry=entry)
        runner = runner_for(entry, run_on)
    except (ValueError, NotImplementedError, BackendUnavailable) as exc:
        parser.error(str(exc))
    kernel = kernel_of(case, backend)
    print(f"case: {case.describe()}")
    print(f"run through entry point {entry!r} on backend {backend!r} (kernel {kernel})")
    if run_on != backend:
        print(f"this MXNet has no {backend} backend: ran on {run_on}, whose kernel for this case is the same")
    if sig is not None:
        print(f"finding: {sig.describe()}")
    try:
        outcome = check(case, runner=runner, entry=entry, kernel=kernel, quantities=QUANTITIES)
    except Exception as exc:
        print(f"MXNet raised {type(exc).__name__}: {exc}")
        error_sig = classify_error(case, exc, entry=entry, backend=backend)
        return EXIT_FOUND if sig is None or sig == error_sig else EXIT_OK
    print("\nerror/bound per quantity (above 1 fails):")
    for q in QUANTITIES:
        if q in outcome.verdict.ratios:
            failed = q in outcome.verdict.failed_quantities
            print(f"  {q:<12} {outcome.verdict.ratios[q]:>11.3g}  {'FAILS' if failed else 'ok'}")
    for kd, quantities in outcome.explained:
        print(f"\n{', '.join(sorted(quantities))} matches the recorded deviation {kd.id}: {kd.summary}")
        print(f"  conditions: {kd.conditions}\n  model: {kd.model}")
    for m in outcome.unexpected:
        if m.kind == "unrecorded":
            print(f"\n{m.quantity} deviates, but not as recorded by known deviation {m.deviation}")
    if not outcome.ok:
        print()
        print(outcome.message())
    sigs = classify(outcome, backend=backend)
    persists = (sig in sigs) if sig is not None else not outcome.ok
    if sig is not None:
        now_known = not persists and any(sig.quantity in quantities for _, quantities in outcome.explained)
        state = "persists" if persists else ("is now a known deviation" if now_known else "is gone")
        print(f"\nthe finding's deviation {state} ({sig.ident})")
    else:
        print(f"\n{'new deviation: not explained by a recorded deviation' if persists else 'no new deviation'}")
    return EXIT_FOUND if persists else EXIT_OK


def _repro_lifecycle(args: argparse.Namespace, parser: argparse.ArgumentParser, sig: Signature) -> int:
    """A life-cycle finding: run its scenario again, judge it, say whether the finding persists."""
    from bnprops.fuzzing import lifecycle_findings

    try:
        scenario = lifecycle_findings.load_scenario(args.file)
    except ValueError as exc:
        parser.error(str(exc))
    if scenario is None:
        parser.error(f"{args.file} keeps no life-cycle scenario")
    persists = lifecycle_findings.replay(scenario, sig)
    print(f"\nthe finding's deviation {'persists' if persists else 'is gone'} ({sig.ident})")
    return EXIT_FOUND if persists else EXIT_OK


def _repro_member(parser: argparse.ArgumentParser, case: Case, sig: Signature | None, entry: str, backend: str) -> int:
    """A family member's call: run it again, judge it with the member's judge, say whether the finding persists."""
    from bnprops.fuzzing.member_findings import check_member, is_crash, member_runner
    from bnprops.mx.backends import runner_for

    try:  # a call that killed its process is made again in a helper process
        runner = member_runner(entry, backend, runner_factory=runner_for, isolate=sig is not None and is_crash(sig))
    except (ValueError, NotImplementedError) as exc:
        parser.error(str(exc))
    print(f"case: {case.describe()}\nrun through member entry {entry!r} on backend {backend!r}")
    checked = check_member((entry, backend, case), runner=runner)
    print(checked.message or f"{entry}: matches the oracle")
    persists = sig in checked.signatures if sig is not None else checked.result in ("failed", "error")
    if sig is not None:
        print(f"\nthe finding's deviation {'persists' if persists else 'is gone'} ({sig.ident})")
    return EXIT_FOUND if persists else EXIT_OK


def _repro_relation(args: argparse.Namespace, parser: argparse.ArgumentParser, case: Case, sig: Signature) -> int:
    """A broken exact relation: run its two calls again and say whether the relation still breaks."""
    from bnprops.fuzzing.relation_findings import load_draw, replay
    from bnprops.mx.backends import runner_for

    entry, backend = args.entry or sig.entry, args.backend or sig.backend
    try:
        draw = load_draw(args.file)
        runner = runner_for(entry, backend)
    except (ValueError, NotImplementedError) as exc:
        parser.error(str(exc))
    print(f"case: {case.describe()}")
    print(f"run through entry point {entry!r} on backend {backend!r}: relation {draw.relation!r}, choice {draw.choice}")
    print(f"finding: {sig.describe()}\n")
    persists = replay(case, sig, draw, runner=runner, entry=entry, backend=backend)
    print(f"\nthe finding's relation {'still breaks' if persists else 'holds now'} ({sig.ident})")
    return EXIT_FOUND if persists else EXIT_OK


def _repro_network(args: argparse.Namespace, parser: argparse.ArgumentParser, sig: Signature) -> int:
    """BatchNorm inside a network: build the finding's chain again and say whether its finding still shows."""
    from bnprops.fuzzing import network_findings

    return _repro_example(args, parser, sig, network_findings, what="chain")


def _repro_sequence(args: argparse.Namespace, parser: argparse.ArgumentParser, sig: Signature) -> int:
    """A training sequence: run its rules again and say whether its finding still shows."""
    from bnprops.fuzzing import sequence_findings

    return _repro_example(args, parser, sig, sequence_findings, what="sequence")


def _repro_example(
    args: argparse.Namespace, parser: argparse.ArgumentParser, sig: Signature, findings: Any, *, what: str
) -> int:
    """Replay a finding whose example is a chain or a sequence (``findings``: its *_findings module)."""
    from bnprops.judging.in_network import close_workers

    entry, backend = args.entry or sig.entry, args.backend or sig.backend
    try:
        example = findings.load_chain(args.file) if what == "chain" else findings.load_sequence(args.file)
    except ValueError as exc:
        parser.error(str(exc))
    if example is None:
        parser.error(f"{args.file} is a {what} finding without its {what}")
    if not findings.applies(entry, backend):
        parser.error(f"a {what} cannot run through entry point {entry!r} on backend {backend!r}")
    print(f"run through entry point {entry!r} on backend {backend!r}")
    print(f"finding: {sig.describe()}\n")
    try:
        persists = findings.replay(example, sig, entry=entry, backend=backend)
    finally:
        close_workers()
    state = "persists" if persists else "is gone"
    if sig.deviation:
        state = "still matches the recorded deviation" if persists else "no longer shows the recorded deviation"
    print(f"\nthe finding {state} ({sig.ident})")
    return EXIT_FOUND if persists else EXIT_OK

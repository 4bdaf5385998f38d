"""The ``bnprops`` command: runs each subcommand (its arguments are parsed as the arguments module defines).

Exit status: 0 when no new deviation was found (or the case agrees), 1 when one was (or the
deviation persists), 2 for a usage error (with a message saying what was expected).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from bnprops.base.family import MEMBER_ENTRIES
from bnprops.base.selection import parse_choices
from bnprops.commands import repro_command
from bnprops.commands.arguments import DEFAULT_TIME, EXIT_FOUND, EXIT_OK, EXIT_USAGE, build_parser
from bnprops.model.case import DTYPES, Case


class Progress:
    """Cases run, cases/s and failures so far, on stderr: one rewritten line on a TTY, plain lines otherwise."""

    def __init__(self, stream: IO[str], *, interval: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.start = time.monotonic()
        self.last = -math.inf
        self.state = (0, 0, 0, 0)

    def __call__(self, cases: int, failed: int, known: int, signatures: int) -> None:
        self.state = (cases, failed, known, signatures)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.show()

    def line(self) -> str:
        cases, failed, known, signatures = self.state
        elapsed = time.monotonic() - self.start
        rate = cases / elapsed if elapsed > 0 else 0.0
        return (
            f"[{elapsed:7.1f} s] {cases} cases, {rate:.1f} cases/s, failures so far: {failed} new, "
            f"{known} known ({signatures} signatures)"
        )

    def show(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.show()
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()


def _fuzz(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.fuzzing import campaign, plan
    from bnprops.mx.runners import BACKENDS, RUNNERS

    try:
        entries = parse_choices(args.entry, allowed=tuple(RUNNERS), what="entry point")
        backends = parse_choices(args.backend or "all", allowed=BACKENDS, what="backend")
        dtypes = parse_choices(args.dtype, allowed=DTYPES, what="dtype")
        members = () if args.members == "none" else parse_choices(args.members, allowed=MEMBER_ENTRIES, what="member")
    except ValueError as exc:
        parser.error(str(exc))
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    time_limit = args.time if (args.time is not None or args.max_examples is not None) else DEFAULT_TIME
    try:
        config = plan.CampaignConfig(
            out=args.out,
            baseline=args.baseline,
            entries=entries,
            backends=backends,
            dtypes=dtypes,
            max_examples=args.max_examples,
            time_limit=time_limit,
            seed=args.seed,
            shard_index=args.shard[0],
            shard_count=args.shard[1],
            workers=args.workers,
            chunk_size=args.chunk_size or plan.DEFAULT_CHUNK_SIZE,
            backends_explicit=args.backend is not None,
            **({} if args.relations is None else {"relation_every": args.relations}),
            **({} if args.networks is None else {"network_every": args.networks}),
            **({} if args.sequences is None else {"sequence_every": args.sequences}),
            **({} if args.member_every is None else {"member_every": args.member_every}),
            **({} if args.lifecycle is None else {"lifecycle_every": args.lifecycle}),
            members=members,
        )
        result = campaign.run(config, progress=None if args.quiet else Progress(sys.stderr))
    except plan.UsageError as exc:
        parser.error(str(exc))
    print(result.summary())
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"report: {config.out / 'report.md'} (machine-readable: {config.out / 'report.json'})")
    return EXIT_FOUND if result.new or result.crashed else EXIT_OK


def _merge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.fuzzing.report import folder, merge

    reports = []
    for path in args.inputs:
        try:
            reports.append(folder.load(path))
        except ValueError as exc:
            parser.error(str(exc))
    merged = merge.merge(reports, sources=[str(p) for p in args.inputs])
    try:
        folder.write(merged, args.out, baseline=args.baseline)
    except ValueError as exc:
        parser.error(str(exc))
    print(merged.summary())
    print(f"merged report: {args.out / 'report.md'} (machine-readable: {args.out / 'report.json'})")
    return EXIT_FOUND if merged.new else EXIT_OK


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import bench

    if args.fuzz_seconds < 0:
        parser.error("--fuzz-seconds must be 0 or more")
    if not args.decades_only and not args.groups_only:
        print(
            f"bnprops bench: {args.examples} examples per stage, fuzz {args.fuzz_seconds:g} s on {args.workers} workers"
        )
        stages = bench.run(examples=args.examples, fuzz_seconds=args.fuzz_seconds, workers=args.workers)
        print(bench.format_table(stages))
    if args.top_decade >= 2 and not args.groups_only:
        print(f"\njudging against MXNet per decade of M, 10^2 to 10^{args.top_decade}, {args.reps} cases each:")
        print(bench.format_decades(bench.decades(top=args.top_decade, reps=args.reps)))
    if not args.decades_only:
        print(f"\njudging stacked groups of {bench.GROUP_SIZE} cases, {args.reps} groups a row:")
        print(bench.format_groups(bench.groups(reps=args.reps)))
    return EXIT_OK


def _tightness(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import detection, tightness

    try:
        decades = tightness.parse_decades(args.decades)
        dtypes = parse_choices(args.dtype, allowed=DTYPES, what="dtype")
        regimes = parse_choices(args.regime, allowed=tightness.REGIMES, what="regime")
    except ValueError as exc:
        parser.error(str(exc))
    detection_dtypes = tuple(d for d in dtypes if d in detection.DETECTION_DTYPES)
    if args.detection_only and not detection_dtypes:
        parser.error(f"detection covers {' and '.join(detection.DETECTION_DTYPES)}; --dtype {args.dtype} has neither")
    if args.json is not None and args.json.is_dir():
        parser.error(f"--json {args.json} is a folder; give a file name")
    if args.findings is not None and args.findings.exists() and not args.findings.is_dir():
        parser.error(f"--findings {args.findings} exists and is not a folder")
    findings_dir = args.findings
    if findings_dir is None and args.json is not None:
        findings_dir = args.json.with_name(args.json.stem + "-findings")
    start = time.monotonic()

    def progress(line: str) -> None:
        print(f"[{time.monotonic() - start:7.1f} s] {line}", file=sys.stderr, flush=True)

    from bnprops.mx.runners import IN_PROCESS_BACKEND, BackendUnavailable

    try:
        found = tightness.run(
            decades=decades,
            dtypes=dtypes,
            regimes=regimes,
            backend=args.backend or IN_PROCESS_BACKEND,
            cases_per_cell=args.cases_per_cell,
            detection_cases=args.detection_cases,
            detection_cases_top=args.detection_cases_top,
            seed=args.seed,
            on_mxnet=not args.detection_only,
            detect=not args.measure_only,
            json_path=args.json,
            findings_dir=findings_dir,
            progress=progress,
        )
    except BackendUnavailable as exc:
        parser.error(str(exc))
    print(f"\n{time.monotonic() - start:.1f} s in all")
    return EXIT_FOUND if found else EXIT_OK


def _explain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from bnprops.commands.explanation import explain
    from bnprops.mx.runners import BackendUnavailable

    expected: dict[str, str] = {}
    for item in args.expect:
        quantity, sep, value = item.partition("=")
        if not sep or not value.strip():
            parser.error(f"--expect {item!r}: write QUANTITY=VALUE, e.g. dgamma=-2.127873")
        if quantity.strip() in expected:
            parser.error(f"--expect gives {quantity.strip()} twice")
        expected[quantity.strip()] = value.strip()
    case = None
    if args.case is not None:
        try:
            case = Case.from_json(args.case.read_text())
        except OSError as exc:
            parser.error(f"--case {args.case}: {exc.strerror or exc}")
        except (ValueError, KeyError, TypeError) as exc:
            parser.error(f"--case {args.case} is not a bnprops case: {exc}")
    try:
        result = explain(
            expected=expected,
            entry=args.entry,
            case=case,
            x=args.x,
            gamma=args.gamma,
            beta=args.beta,
            moving_mean=args.moving_mean,
            moving_var=args.moving_var,
            dy=args.dy,
            target=args.target,
            loss=args.loss,
            dtype=args.dtype,
            axis=args.axis,
            eps=args.eps,
            momentum=args.momentum,
            fix_gamma=args.fix_gamma,
            use_global_stats=args.use_global_stats,
            scale=args.scale,
            center=args.center,
            is_train=False if args.inference else None,
            output_mean_var=True if args.output_mean_var else None,
            gamma_read_back=args.gamma_read_back,
            backend=args.backend,
            reproducer=args.reproducer,
            member=args.member,
            devices=args.devices,
        )
    except (ValueError, BackendUnavailable) as exc:
        parser.error(str(exc))
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.format())
    return EXIT_FOUND if result.unexplained else EXIT_OK


def _versions(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import versions
    from bnprops.mx import releases

    try:
        chosen = releases.requested(args.release)
    except ValueError as exc:
        parser.error(str(exc))
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    cache = args.cache if args.cache is not None else releases.default_cache()
    print(
        f"bnprops versions: {', '.join(chosen)}; pytest: {args.suite}; {args.time:g} s of fuzzing each; "
        f"environments in {cache}"
    )
    results = versions.run(
        chosen,
        cache=cache,
        out=args.out,
        time_s=args.time,
        workers=args.workers,
        seed=args.seed,
        suite=args.suite,
        progress=lambda line: print(line, flush=True),
    )
    print(f"matrix: {args.out / 'versions.md'} and {args.out / 'versions.json'}")
    return versions.exit_status(results)


def _deviations(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.base import atomic
    from bnprops.judging import deviation_table
    from bnprops.judging.deviations import ALL

    page = deviation_table.markdown()
    if args.check is not None:
        if args.check.is_file() and args.check.read_text() == page:
            print(f"{args.check} is up to date")
            return EXIT_OK
        print(f"{args.check} is stale: regenerate it with  {deviation_table.REGENERATE}", file=sys.stderr)
        return EXIT_FOUND
    if args.out is not None:
        atomic.write_text(args.out, page)
        print(f"wrote {args.out} ({len(ALL)} deviations)")
    elif args.markdown:
        sys.stdout.write(page)
    else:
        for d in ALL:
            print(f"{d.id:<56}{d.KIND:<13}{d.releases.describe():<18}{d.summary}")
    return EXIT_OK


def _doctor(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import doctor

    print("\n".join(doctor.report()))
    return EXIT_OK


def _family(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import family_table

    return _generated_section(args, parser, family_table, what="family table", page_is="the family page")


def _modules(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from bnprops.commands import module_map

    return _generated_section(args, parser, module_map, what="module map", page_is="the architecture page")


def _generated_section(
    args: argparse.Namespace, parser: argparse.ArgumentParser, renderer: Any, *, what: str, page_is: str
) -> int:
    """Print, --check or --write a docs page's section generated from the code (``renderer``: markdown(),
    rewritten(text), PAGE, REGENERATE)."""
    from bnprops.base import atomic

    page = args.write or args.check
    if page is None:
        sys.stdout.write(renderer.markdown() + "\n")
        return EXIT_OK
    if not page.is_file():
        parser.error(f"{page} does not exist: give {page_is} ({renderer.PAGE})")
    text = page.read_text()
    try:
        fresh = renderer.rewritten(text)
    except ValueError as exc:
        parser.error(f"{page}: {exc}")
    if args.check is not None:
        if fresh == text:
            print(f"{page}'s {what} is up to date")
            return EXIT_OK
        print(f"{page}'s {what} is stale: rewrite it with  {renderer.REGENERATE}", file=sys.stderr)
        return EXIT_FOUND
    atomic.write_text(page, fresh)
    print(f"wrote the {what} into {page}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except ModuleNotFoundError as exc:
        if exc.name != "mxnet":
            raise
        from bnprops.commands.doctor import INSTALL_HINT

        print(f"bnprops: no MXNet here ({exc}).\n{INSTALL_HINT}", file=sys.stderr)
        return EXIT_USAGE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handlers = {
        "fuzz": _fuzz,
        "repro": repro_command.repro,
        "merge": _merge,
        "bench": _bench,
        "tightness": _tightness,
        "explain": _explain,
        "versions": _versions,
        "deviations": _deviations,
        "modules": _modules,
        "family": _family,
        "doctor": _doctor,
    }
    result: int = handlers[args.command](args, args.subparser)
    return result


if __name__ == "__main__":
    sys.exit(main())

"""Hypothesis settings profiles, the --bn-entry/--bn-backend options, and the bnprops summary of a pytest run.

Profiles (choose with --hypothesis-profile=NAME, or BNPROPS_PROFILE=NAME):
  dev      the default: randomised; the five symbolic properties make 2,000 cases, the entry-point
           and backend properties take shares of the same per-property budget (tests/test_entry_points.py)
  ci       the default when CI is set: the same budget, derandomised, no example database
  nightly  50 times the examples of dev, for long runs
"""

from __future__ import annotations

import collections
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

#: Examples per property test in the dev and ci profiles; five symbolic properties make 2,000 cases.
EXAMPLES_PER_PROPERTY = 400

settings.register_profile(
    "dev",
    max_examples=EXAMPLES_PER_PROPERTY,
    # MXNet binds a new executor the first time it sees a shape; timing is not what we test.
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, database=None)
settings.register_profile("nightly", parent=settings.get_profile("dev"), max_examples=50 * EXAMPLES_PER_PROPERTY)
settings.load_profile(os.environ.get("BNPROPS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    from bnprops.base.family import MEMBER_ENTRIES
    from bnprops.mx.runners import ALL_BACKENDS, ENTRY_POINTS

    group = parser.getgroup("bnprops", "bnprops: which entry points and backends the properties run through")
    group.addoption(
        "--bn-entry",
        default="all",
        metavar="LIST",
        help=f"comma-separated entry points: {','.join(ENTRY_POINTS)} (default: all). "
        "sym is mx.sym + bind, nd is mx.nd.BatchNorm under autograd, gluon(-hybrid) is "
        "gluon.nn.BatchNorm (hybridized), npx is mx.npx.batch_norm; the BatchNorm family's members' entries: "
        f"{','.join(MEMBER_ENTRIES)} (tests/test_family.py).",
    )
    group.addoption(
        "--bn-backend",
        default="all",
        metavar="LIST",
        help=f"comma-separated kernels: {','.join(ALL_BACKENDS)} (default: all). onednn: float32 through "
        "oneDNN (MXNet's default); native: MXNET_MKLDNN_ENABLED=0, served by one worker process; cudnn and "
        "cuda (cudnn_off=True) need a GPU and are skipped, with the reason, without one.",
    )


def pytest_configure(config: pytest.Config) -> None:
    from bnprops.base.selection import parse_choices, parse_entries
    from bnprops.mx.runners import ALL_BACKENDS, ENTRY_POINTS

    try:
        requested, members = parse_entries(config.getoption("--bn-entry"), plain=ENTRY_POINTS)
        config.bn_backends = parse_choices(config.getoption("--bn-backend"), allowed=ALL_BACKENDS, what="backend")  # type: ignore[attr-defined]
    except ValueError as exc:
        raise pytest.UsageError(f"{exc}") from exc
    from bnprops.mx.runners import entry_unavailable_reason

    # Parametrised tests list every requested entry point (those this release lacks as skipped, with the
    # reason); tests that loop over entry points get the ones this release has.
    config.bn_entries_requested = requested  # type: ignore[attr-defined]
    config.bn_member_entries = members  # type: ignore[attr-defined]
    # pytest-xdist's workers share the cores: each takes its share for the fused path's threads.
    if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
        from bnprops.judging import fused

        fused.share_cores(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    config.bn_entries = tuple(e for e in requested if entry_unavailable_reason(e) is None)  # type: ignore[attr-defined]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which MXNet runs, and which recorded deviations its release has: a release where one is expected
    stays green (its cases count as known deviations) and says so here."""
    from bnprops.judging.known_deviations import KNOWN_DEVIATIONS
    from bnprops.mx import mxversion
    from bnprops.mx.runners import ENTRY_POINTS, ONEDNN_BUILT, entry_unavailable_reason

    running = mxversion.running()
    scoped = [kd for kd in KNOWN_DEVIATIONS if kd.releases.since or kd.releases.fixed]
    lines = [f"bnprops: MXNet {running}, oneDNN {'built' if ONEDNN_BUILT else 'not built (float32 runs native)'}"]
    lines += [
        f"bnprops: known deviation {kd.id} ({kd.releases.describe()}; {kd.releases.why}): "
        + ("EXPECTED in this release, its cases are known deviations" if kd.holds_in(running) else "absent here")
        for kd in scoped
    ]
    lines += [f"bnprops: entry point {e} skipped: {r}" for e in ENTRY_POINTS if (r := entry_unavailable_reason(e))]
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bn_entry" in metafunc.fixturenames:
        from bnprops.mx.runners import entry_unavailable_reason

        # An entry point this release lacks (npx before 1.6) is skipped with the reason, not failed.
        metafunc.parametrize(
            "bn_entry",
            [
                pytest.param(e, marks=pytest.mark.skip(reason=r) if (r := entry_unavailable_reason(e)) else ())
                for e in metafunc.config.bn_entries_requested  # type: ignore[attr-defined]
            ],
        )
    if "bn_member_entry" in metafunc.fixturenames:
        # The family's member entries chosen (tests/test_family.py skips, with the reason, where one cannot run).
        metafunc.parametrize("bn_member_entry", metafunc.config.bn_member_entries)  # type: ignore[attr-defined]
    if "bn_backend" in metafunc.fixturenames:
        metafunc.parametrize("bn_backend", metafunc.config.bn_backends)  # type: ignore[attr-defined]


def _counts_as_rows() -> dict[str, list[list[Any]]]:
    from bnprops.judging.checks import COUNTS, DECADES, DEVIATION_HITS

    return {
        "counts": [[*key, n] for key, n in COUNTS.items()],
        "hits": [[*key, n] for key, n in DEVIATION_HITS.items()],
        "decades": [[key, n] for key, n in DECADES.items()],
    }


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Under pytest-xdist each worker counts its own cases; hand them to the controller.
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["bnprops"] = _counts_as_rows()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    from bnprops.judging.checks import COUNTS, DECADES, DEVIATION_HITS, Tally

    rows = getattr(node, "workeroutput", {}).get("bnprops")
    if not rows:
        return
    for *key, n in rows["counts"]:
        COUNTS[Tally(*key)] += n
    for key, n in rows["decades"]:
        DECADES[key] += n
    for *key, n in rows["hits"]:
        DEVIATION_HITS[tuple(key)] += n  # type: ignore[index]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from bnprops.judging.checks import COUNTS, DECADES, DEVIATION_HITS

    if not COUNTS:
        return
    tr = terminalreporter
    tr.section("bnprops: cases judged against the oracle")
    rows: dict[tuple[str, str, str, str], collections.Counter[str]] = {}
    for key, count in COUNTS.items():
        rows.setdefault((key.entry, key.backend, key.kernel, key.dtype), collections.Counter())[key.result] += count
    tr.write_line(
        f"{'entry':<14}{'backend':<9}{'kernel':<8}{'dtype':<9}{'cases':>7}{'passed':>8}{'known dev.':>12}{'failed':>8}"
    )
    for key in sorted(rows):
        r = rows[key]
        tr.write_line(
            f"{key[0]:<14}{key[1]:<9}{key[2]:<8}{key[3]:<9}{sum(r.values()):>7}{r['passed']:>8}"
            f"{r['known deviation']:>12}{r['failed']:>8}"
        )
    for title, index in (("entry point", 0), ("backend", 1)):
        totals: collections.Counter[str] = collections.Counter()
        for key, count in COUNTS.items():
            totals[key[index]] += count
        tr.write_line(f"cases per {title}: " + ", ".join(f"{k} {n}" for k, n in sorted(totals.items())))
    tr.write_line(f"total cases: {sum(COUNTS.values())}")
    tr.write_line(
        "cases by reduction length M: "
        + ", ".join(f"M >= 10^{d}: {sum(DECADES[k] for k in DECADES if k >= d)}" for d in range(7))
    )
    if DEVIATION_HITS:
        tr.write_line("known deviations matched (cases, by entry point and backend):")
        for (kd, entry, backend), n in sorted(DEVIATION_HITS.items()):
            tr.write_line(f"  {kd:<42}{entry:<14}{backend:<9}{n:>7}")

"""Hypothesis settings profiles and the bnprops summary at the end of a pytest run.

Profiles (choose with --hypothesis-profile=NAME, or BNPROPS_PROFILE=NAME):
  dev      the default: randomised, enough examples for >= 2,000 property cases in all
  ci       the default when CI is set: the same budget, derandomised, no example database
  nightly  50 times the examples of dev, for long runs
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

#: Examples per property test in the dev and ci profiles; five properties make 2,100 cases.
EXAMPLES_PER_PROPERTY = 420

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from bnprops.checks import TALLY
    from bnprops.runners import RUNNERS

    tally = {key: n for key, n in TALLY.items() if key[0] in RUNNERS}  # MXNet's entry points, not test doubles
    if not tally:
        return
    tr = terminalreporter
    tr.section("bnprops: cases judged against the oracle")
    rows: dict[tuple[str, str, str], dict[str, int]] = {}
    for (entry, kernel, dtype, result), count in tally.items():
        rows.setdefault((entry, kernel, dtype), {}).setdefault(result, 0)
        rows[(entry, kernel, dtype)][result] += count
    tr.write_line(f"{'entry':<8}{'kernel':<8}{'dtype':<9}{'cases':>7}{'passed':>8}{'known dev.':>12}{'failed':>8}")
    for key in sorted(rows):
        r = rows[key]
        total = sum(r.values())
        tr.write_line(
            f"{key[0]:<8}{key[1]:<8}{key[2]:<9}{total:>7}{r.get('passed', 0):>8}"
            f"{r.get('known deviation', 0):>12}{r.get('failed', 0):>8}"
        )
    tr.write_line(f"total cases: {sum(tally.values())}")

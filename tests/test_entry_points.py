"""Every entry point on every backend matches the oracle; entry points agree with each other, and backends too.

Choose entry points and backends with --bn-entry and --bn-backend (conftest.py). Example counts
are shares of the profile's per-property budget, so --hypothesis-profile=nightly scales them too.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from bnprops.judging.checks import assert_agree, assert_group_matches_oracle
from bnprops.model.case import QUANTITIES, Case
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import BACKENDS, adapt, unavailable_reason
from bnprops.search.strategies import case_groups, cases
from tests.helpers import budget, skip_unless_available

pytestmark = pytest.mark.property

#: Shares of settings.default.max_examples (400 in dev: 300 oneDNN and 220 native cases per entry point,
#: then 50 for the agreement of entry points and of backends; each entry point sees >= 300 per backend).
SHARES = {"onednn": 0.75, "native": 0.55, "gpu": 0.25, "entries": 0.125, "backends": 0.125}


def examples(share: str) -> int:
    return budget(SHARES[share])


def test_entry_point_matches_the_oracle(bn_entry: str, bn_backend: str) -> None:
    skip_unless_available(bn_backend)
    runner = runner_for(bn_entry, bn_backend)

    # Each example a group of same-signature cases from one stacked call (one round trip to the native
    # backend's worker per group, not per case).
    @settings(max_examples=examples(bn_backend if bn_backend in BACKENDS else "gpu"))
    @given(group=case_groups(max_size=32))  # as the fuzz job's groups (plan.GROUP_SIZE)
    def entry_point_matches_the_oracle(group: list[Case]) -> None:
        assert_group_matches_oracle(group, runner=runner, entry=bn_entry, quantities=QUANTITIES, backend=bn_backend)

    entry_point_matches_the_oracle()


def test_all_entry_points_agree_on_the_same_case(bn_backend: str, request: pytest.FixtureRequest) -> None:
    skip_unless_available(bn_backend)
    entries = request.config.bn_entries  # type: ignore[attr-defined]
    if len(entries) < 2:
        pytest.skip(f"needs two entry points to compare; --bn-entry chose {','.join(entries)}")
    runners = {entry: (runner_for(entry, bn_backend), entry, bn_backend) for entry in entries}

    @settings(max_examples=examples("entries"))
    @given(case=cases())
    def entry_points_agree(case: Case) -> None:
        if {"gluon", "gluon-hybrid"} & set(entries):
            case = adapt("gluon", case)  # what every entry point can express
        assert_agree(case, runners)

    entry_points_agree()


def test_backends_agree_on_the_same_case(bn_entry: str, request: pytest.FixtureRequest) -> None:
    chosen = [b for b in request.config.bn_backends if unavailable_reason(b) is None]  # type: ignore[attr-defined]
    if len(chosen) < 2:
        pytest.skip(f"needs two available backends to compare; have {','.join(chosen) or 'none'}")
    runners = {backend: (runner_for(bn_entry, backend), bn_entry, backend) for backend in chosen}

    # float16 and float64 take the native kernel on every CPU backend; float32 is where they differ.
    @settings(max_examples=examples("backends"))
    @given(case=cases(dtypes=["float32"]))
    def backends_agree(case: Case) -> None:
        assert_agree(adapt(bn_entry, case), runners)

    backends_agree()

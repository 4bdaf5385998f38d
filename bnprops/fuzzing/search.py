"""One search of the fuzz job: ``hypothesis.find`` with a seed, a phase list and a database routed per signature."""

from __future__ import annotations

import unittest
from collections.abc import Callable, Iterable
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, seed
from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.database import ExampleDatabase

from bnprops.fuzzing.catalogue import Signature


class Stop(BaseException):
    """Raised inside a search to end it; a BaseException, so Hypothesis neither catches nor shrinks it."""


#: The layout of the examples a database holds (fuzzing.explorer.examples), in every key: one stored under another
#: layout decodes to a different example, so it is never fetched. 2: side draws behind coins (search.chance).
LAYOUT = b"examples/2:"


class Router(ExampleDatabase):
    """The searches' database: every key goes to the key of the signature being shrunk (or replayed).

    So each signature's minimal example is kept apart, whatever key Hypothesis derives for the test;
    while exploring, nothing is replayed (replays are run per signature, first).
    """

    def __init__(self, db: ExampleDatabase, hunting: Callable[[], Signature | None], *, replay: bool) -> None:
        super().__init__()
        self.db = db
        self.hunting = hunting
        self.replay = replay

    def _route(self, key: bytes) -> bytes | None:
        sig = self.hunting()
        if sig is None:
            return None
        for sub in (b".secondary", b".pareto"):
            if key.endswith(sub):
                return LAYOUT + sig.key + sub
        return LAYOUT + sig.key

    def save(self, key: bytes, value: bytes) -> None:
        routed = self._route(key)
        if routed is not None:
            self.db.save(routed, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        routed = self._route(key)
        if not self.replay or routed is None:
            return ()
        return self.db.fetch(routed)

    def delete(self, key: bytes, value: bytes) -> None:
        routed = self._route(key)
        if routed is not None:
            self.db.delete(routed, value)


class _Found(Exception):
    """The search's condition held: Hypothesis shrinks the case, then re-raises this with the minimal one."""


def find(
    strategy: st.SearchStrategy[Any],
    condition: Callable[[Any], bool],
    *,
    database: ExampleDatabase,
    max_examples: int,
    phases: tuple[Phase, ...],
    seed_value: int | None = None,
) -> Any | None:
    """The minimal value of ``strategy`` that satisfies ``condition``, or None: hypothesis.find, plus a database.

    find ignores the database once it is given a seed (so does @seed alone); settings applied after
    @seed put it back, so a seeded, reproducible chunk still keeps what it shrinks.
    """
    found: list[Any] = []

    def body(value: Any) -> None:
        if condition(value):
            found[:] = [value]
            raise _Found

    test = given(strategy)(body)
    # As hypothesis.find does: a fixed key spares Hypothesis hashing the source of ``body`` for one
    # (which reads this file again on every search); Router maps every key to a signature's anyway.
    test._hypothesis_internal_database_key = b"bnprops-fuzz"  # type: ignore[attr-defined]
    if seed_value is not None:
        test = seed(seed_value)(test)
    test = Settings(
        database=database,
        max_examples=max_examples,
        phases=phases,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
        print_blob=False,
    )(test)
    try:
        test()
    except _Found:
        return found[0]
    except unittest.SkipTest:
        return None  # nothing ran: a replay with no stored example
    return None

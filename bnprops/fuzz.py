"""Fuzz campaigns: the property checks run for a budget of cases or seconds, with failures catalogued.

A campaign draws ``(target, case)`` pairs, where the target is an (entry point, backend) pair and
the case comes from the very strategy the properties use (bnprops.strategies.cases), runs each
through checks.check (runner, oracle, comparator and known deviations: the same judgement as
``pytest -m property``), and classifies every failure by signature (bnprops.catalogue).

The search runs as a sequence of *chunks*, each one ``hypothesis.find`` call of at most
``chunk_size`` cases with its own seed.  Inside a chunk, the first case with a signature the run
has not seen makes ``find`` succeed, and Hypothesis shrinks it under the condition "still shows
this signature"; the minimal case goes into the catalogue and the next chunk starts.  Cases with
signatures already catalogued are only counted.

Sharding: chunk ``g`` of the infinite chunk sequence has seed ``sha256(seed, g)``; shard ``I`` of
``N`` runs the chunks ``g = I, I + N, I + 2N, ...`` (0-based ``I``), and its ``K`` workers deal
those out in turn.  So shards and workers never run the same chunk, and together N shards run
exactly the chunks one unsharded run would have run.  Distinct chunks draw distinct cases, with one
exception: Hypothesis starts every run with its simplest cases (shape (1,), seed 0, ...), so a few
of those recur in every chunk (about 1 in 100 cases).  A worker judges each case once and skips its
repeats (WorkerResult.repeats); across shards and workers such a simplest case may be judged once
each.  An exact partition (each shard judging only the cases whose hash it owns) would cost N
generated cases per judged one, and generation costs about as much as judging.

Exact relations: every example also draws a relation and a parameter choice
(bnprops/relation_findings.py); one example in ``Config.relation_every`` runs that relation on its first
case through the same runner, and a broken relation is a finding of kind "relation" like any other
(hunted, shrunk, stored and replayed with its draw, which is part of the example).

BatchNorm inside networks: every example also draws a producer chain (bnprops/network_findings.py); one
example in ``Config.network_every`` whose target a chain's API can express (nd, gluon, gluon-hybrid, sym on
a CPU backend) builds it in that API and judges it in context (bnprops/in_network.py, in a worker process a
crash cannot take down). A finding is of kind "network" (or "known", for a recorded network deviation),
with the chain's steps in its signature; it is hunted, shrunk, stored and replayed with its chain.

Training sequences: every example also draws a sequence of rules on one BatchNorm
(bnprops/sequence_findings.py); one example in ``Config.sequence_every`` runs it on the target's entry point
and backend, and the state after every rule is checked against the reference model (bnprops/state_model.py).
A finding is of kind "sequence" (or "known", for a recorded sequence deviation); hunted, shrunk to the
shortest sequence, stored and replayed with it.

The Hypothesis example database lives in ``OUT/db``: each new signature's minimal example is kept
under a key of its own (Signature.key), and ``OUT/db-index.json`` lists those signatures, so the
next run replays them first and says whether each still fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import queue as queue_module
import random
import signal
import time
import traceback
import unittest
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, seed
from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from bnprops import atomic, in_network, network_findings, sequence_findings
from bnprops.backends import runner_for
from bnprops.case import DTYPES, QUANTITIES, Case
from bnprops.catalogue import (
    KNOWN,
    NETWORK,
    RELATION,
    SEQUENCE,
    STALE,
    Catalogue,
    Entry,
    Signature,
    classify,
    classify_error,
    conditioning,
)
from bnprops.causes import read_baseline
from bnprops.checks import Outcome, check, check_group
from bnprops.network_findings import NETWORK_EVERY, NetworkCheck, applies, check_network, network_draws
from bnprops.producers import Chain
from bnprops.relation_findings import (
    RELATION_EVERY,
    RelationCheck,
    RelationDraw,
    check_relation,
    due,
    relation_draws,
    relation_of,
)
from bnprops.runners import (
    BACKENDS,
    RUNNERS,
    BackendUnavailable,
    Runner,
    entry_unavailable_reason,
    kernel_for,
    network_unavailable_reason,
    sequence_unavailable_reason,
)
from bnprops.sequence_findings import SEQUENCE_EVERY, SequenceCheck, check_sequence, sequence_draws
from bnprops.sequences import Sequence
from bnprops.strategies import case_groups

DEFAULT_CHUNK_SIZE = 100
#: A shrink under way when the time is up may go on this long (seconds) before its best case is kept.
SHRINK_GRACE_S = 30.0
#: Cases per example at most: same-signature cases share one stacked MXNet call (see bench.py).
GROUP_SIZE = 32
#: Cases per worker kept for the error plot (a uniform sample of all cases run).
PLOT_SAMPLE = 50_000
#: Chunks in a row that judge nothing new before a worker gives up (the space is exhausted).
MAX_IDLE_CHUNKS = 50
INDEX_FILE = "db-index.json"
_INDEX_FORMAT = "bnprops.db-index/1"

Target = tuple[str, str]
#: What a search draws: the target, a group of same-signature cases, a relation for the first one, a chain and a
#: training sequence.
Example = tuple[Target, list[Case], RelationDraw, Chain, Sequence]
RunnerFactory = Callable[[str, str], Runner]
#: Called by a worker with (cases run, new-deviation cases, known-deviation cases, signatures) now and then.
ProgressFn = Callable[[int, int, int, int], None]


class UsageError(ValueError):
    """The campaign cannot run as asked (bad selection, nothing runnable): exit status 2 in the CLI."""


@dataclasses.dataclass(frozen=True)
class Config:
    """What a campaign runs: selection, budget, seed, shard and workers. Validated on construction."""

    out: Path
    entries: tuple[str, ...] = tuple(RUNNERS)
    backends: tuple[str, ...] = BACKENDS
    dtypes: tuple[str, ...] = DTYPES
    max_examples: int | None = None
    time_limit: float | None = None
    seed: int = 0
    #: 0-based shard index and the number of shards.
    shard_index: int = 0
    shard_count: int = 1
    workers: int = 1
    chunk_size: int = DEFAULT_CHUNK_SIZE
    #: True when the user named the backends: one that cannot run is then an error, not a skip.
    backends_explicit: bool = False
    #: One example in this many also runs an exact relation on its first case (0: none).
    relation_every: int = RELATION_EVERY
    #: One example in this many also runs its producer chain (BatchNorm inside a network; 0: none).
    network_every: int = NETWORK_EVERY
    #: The in-network run (module:function, as bnprops.in_network takes it): tests plant faults here.
    network_runner: str = in_network.DEFAULT_RUNNER
    #: One example in this many also runs its training sequence (0: none).
    sequence_every: int = SEQUENCE_EVERY
    #: A previous report (report.json or its folder) the report says what changed against; None: --out's own.
    baseline: Path | None = None
    #: The sessions a sequence runs on (module:function making one from (entry, **kwargs); '' for MXNet's own):
    #: tests plant faults here.
    sequence_session: str = ""

    def __post_init__(self) -> None:
        if self.max_examples is None and self.time_limit is None:
            raise UsageError("give a budget: max_examples, time_limit or both")
        if self.max_examples is not None and self.max_examples < 1:
            raise UsageError(f"max_examples must be at least 1, got {self.max_examples}")
        if self.time_limit is not None and not (self.time_limit > 0 and math.isfinite(self.time_limit)):
            raise UsageError(f"time_limit must be a positive number of seconds, got {self.time_limit}")
        if not 0 <= self.shard_index < self.shard_count:
            raise UsageError(f"shard index {self.shard_index} is not in 0..{self.shard_count - 1}")
        if self.workers < 1:
            raise UsageError(f"workers must be at least 1, got {self.workers}")
        if self.chunk_size < 1:
            raise UsageError(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.seed < 0:
            raise UsageError(f"seed must be a non-negative integer, got {self.seed}")
        if self.relation_every < 0:
            raise UsageError(f"relation_every must be 0 (no relations) or more, got {self.relation_every}")
        if self.network_every < 0:
            raise UsageError(f"network_every must be 0 (no networks) or more, got {self.network_every}")
        if self.baseline is not None:
            try:
                if read_baseline(self.baseline) is None:
                    raise UsageError(f"baseline {self.baseline}: no report.json there")
            except ValueError as exc:
                raise UsageError(str(exc)) from exc
        if self.sequence_every < 0:
            raise UsageError(f"sequence_every must be 0 (no sequences) or more, got {self.sequence_every}")
        for name, values, allowed in (
            ("entries", self.entries, tuple(RUNNERS)),
            ("backends", self.backends, BACKENDS),
            ("dtypes", self.dtypes, DTYPES),
        ):
            if not values:
                raise UsageError(f"{name} must not be empty; choose from {', '.join(allowed)}")
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise UsageError(f"unknown {name} {unknown}; choose from {', '.join(allowed)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "entries": list(self.entries),
            "backends": list(self.backends),
            "dtypes": list(self.dtypes),
            "max_examples": self.max_examples,
            "time_limit_s": self.time_limit,
            "seed": self.seed,
            "shard": f"{self.shard_index + 1}/{self.shard_count}",
            "workers": self.workers,
            "chunk_size": self.chunk_size,
            "relation_every": self.relation_every,
            "network_every": self.network_every,
            "sequence_every": self.sequence_every,
            "out": str(self.out),
        }

    def worker_budget(self, worker: int) -> int | None:
        """The worker's share of max_examples (shares differ by at most one)."""
        if self.max_examples is None:
            return None
        share, rest = divmod(self.max_examples, self.workers)
        return share + (1 if worker < rest else 0)


def chunk_seed(seed: int, index: int) -> int:
    """The Hypothesis seed of chunk ``index`` of the run with ``seed``: a hash, so nearby seeds do not correlate."""
    digest = hashlib.sha256(f"bnprops-chunk/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def chunk_indices(*, shard_index: int, shard_count: int, worker: int, workers: int) -> Iterator[int]:
    """The global chunk indices one worker of one shard runs, in order (an endless iterator)."""
    if not 0 <= shard_index < shard_count or not 0 <= worker < workers:
        raise ValueError(f"bad shard {shard_index}/{shard_count} or worker {worker}/{workers}")
    for local in itertools.count(worker, workers):
        yield shard_index + local * shard_count


def kernel_of(case: Case, backend: str) -> str:
    """The kernel that runs a case on a backend: oneDNN takes float32 only; the rest is native."""
    return kernel_for(case, backend)


def resolve_targets(config: Config, runner_factory: RunnerFactory) -> tuple[list[Target], list[dict[str, str]]]:
    """The (entry, backend) pairs that can run here, and the ones skipped with the reason."""
    targets: list[Target] = []
    skipped: list[dict[str, str]] = []
    for entry in config.entries:
        for backend in config.backends:
            missing = entry_unavailable_reason(entry)
            if missing is not None:  # this release lacks the entry point: noted, never an error
                skipped.append({"entry": entry, "backend": backend, "reason": missing})
                continue
            try:
                runner_factory(entry, backend)
            except (NotImplementedError, BackendUnavailable) as exc:
                if config.backends_explicit:
                    raise UsageError(f"{entry} on backend {backend} cannot run here: {exc}") from exc
                skipped.append({"entry": entry, "backend": backend, "reason": str(exc)})
            else:
                targets.append((entry, backend))
    if not targets:
        raise UsageError("nothing to run: " + "; ".join(f"{s['entry']}/{s['backend']}: {s['reason']}" for s in skipped))
    return targets, skipped


def load_index(out: Path) -> list[Signature]:
    """The signatures whose minimal examples the database in ``out`` holds (none if there is no index)."""
    path = out / INDEX_FILE
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        if data.get("format") != _INDEX_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {_INDEX_FORMAT!r}")
        return [Signature.from_dict(s) for s in data["signatures"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a bnprops database index ({exc}); move it away to start afresh") from exc


def write_index(out: Path, signatures: Iterable[Signature]) -> None:
    data = {"format": _INDEX_FORMAT, "signatures": [s.to_dict() for s in sorted(set(signatures))]}
    atomic.write_text(out / INDEX_FILE, json.dumps(data, indent=1) + "\n")


@dataclasses.dataclass
class Points:
    """A uniform sample of judged cases for the error plot: dtype, conditioning, error/bound per quantity."""

    dtype: np.ndarray  # int8 index into DTYPES
    cond: np.ndarray  # float64, catalogue.conditioning
    ratio: np.ndarray  # float64 (n, len(QUANTITIES)), NaN where the quantity was not produced
    seen: int  # cases the sample was drawn from

    @classmethod
    def empty(cls) -> Points:
        return cls(np.zeros(0, np.int8), np.zeros(0), np.zeros((0, len(QUANTITIES))), 0)

    def concat(self, other: Points) -> Points:
        return Points(
            np.concatenate([self.dtype, other.dtype]),
            np.concatenate([self.cond, other.cond]),
            np.concatenate([self.ratio, other.ratio]),
            self.seen + other.seen,
        )


class _Sampler:
    """Reservoir sampling of plot points, seeded so a run is reproducible."""

    def __init__(self, cap: int, seed: int) -> None:
        self.cap = cap
        self.rng = random.Random(seed)
        self.rows: list[tuple[int, float, list[float]]] = []
        self.seen = 0

    def add(self, row: tuple[int, float, list[float]]) -> None:
        self.seen += 1
        if len(self.rows) < self.cap:
            self.rows.append(row)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.cap:
                self.rows[j] = row

    def points(self) -> Points:
        if not self.rows:
            return dataclasses.replace(Points.empty(), seen=self.seen)
        return Points(
            np.array([r[0] for r in self.rows], np.int8),
            np.array([r[1] for r in self.rows], np.float64),
            np.array([r[2] for r in self.rows], np.float64),
            self.seen,
        )


@dataclasses.dataclass
class WorkerResult:
    """What one worker ran and found; picklable, so worker processes send it back whole."""

    worker: int
    cases: int = 0
    #: Cases drawn again that this worker had judged already (Hypothesis starts every chunk with its
    #: simplest cases); skipped, not counted.
    repeats: int = 0
    shrink_calls: int = 0
    elapsed_s: float = 0.0
    stop_reason: str = "budget"
    #: (entry, backend, kernel, dtype) -> {"passed"|"known"|"failed"|"error": count}
    counts: dict[tuple[str, str, str, str], dict[str, int]] = dataclasses.field(default_factory=dict)
    entries: list[Entry] = dataclasses.field(default_factory=list)
    replays: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: (dtype, quantity) -> the case with the largest error/bound ratio.
    worst: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)
    points: Points = dataclasses.field(default_factory=Points.empty)
    chunks: list[int] = dataclasses.field(default_factory=list)
    error: str = ""
    #: relation -> {"held"|"broken"|"no instance"|"error": count} over the relation checks run while exploring.
    relations: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: "entry/backend" -> {"checks"|network_findings.RESULTS: count, "ms": milliseconds} over the chains run while
    #: exploring.
    networks: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    #: "entry/backend" -> {"checks"|sequence_findings.RESULTS: count, "ms": milliseconds} over the sequences run.
    sequences: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)


class _Stop(BaseException):
    """Raised inside a Hypothesis run to end it; a BaseException, so Hypothesis neither catches nor shrinks it."""


class _Router(ExampleDatabase):
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
                return sig.key + sub
        return sig.key

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


def search(
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
    # (which reads this file again on every search); _Router maps every key to a signature's anyway.
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


class _Worker:
    """One worker's search: chunks of find calls, the catalogue, counts and plot sample."""

    def __init__(
        self,
        config: Config,
        *,
        worker: int,
        targets: list[Target],
        runner_factory: RunnerFactory,
        deadline: float | None,
        stop_requested: Callable[[], bool],
        progress: ProgressFn | None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.runners = {t: runner_factory(*t) for t in targets}
        # Each example is a group of same-signature cases judged from one stacked MXNet call
        # (bnprops.batching): most of a case's cost is per call, not per channel.  One example in
        # LARGE_SHARE is a single case the size of a real layer (10^3 to 10^6 elements per channel).
        groups = case_groups(dtypes=config.dtypes, max_size=GROUP_SIZE, sizes="all")
        self.strategy = st.tuples(
            st.sampled_from(targets),
            groups,
            relation_draws(),
            network_draws(config.dtypes),
            sequence_draws(config.dtypes),
        )
        self.db = DirectoryBasedExampleDatabase(config.out / "db")
        self.deadline = deadline
        self.stop_requested = stop_requested
        self.progress = progress
        self.budget = config.worker_budget(worker)
        self.result = WorkerResult(worker=worker)
        self.catalogue = Catalogue()
        #: New signatures seen but not yet shrunk: their count and smallest case so far.
        self.pending: dict[Signature, Entry] = {}
        self.hunting: Signature | None = None
        self.best: Case | None = None
        #: The relation drawn with best, for a relation signature.
        self.best_draw: RelationDraw | None = None
        #: The chain drawn with best, for a network signature.
        self.best_chain: Chain | None = None
        #: The sequence drawn with best, for a sequence signature.
        self.best_sequence: Sequence | None = None
        self.sampler = _Sampler(PLOT_SAMPLE, chunk_seed(config.seed, -1 - worker))
        self.failed = self.known = 0
        self.last_progress = 0.0
        self.judged: set[bytes] = set()

    # Judging.
    def judge(self, value: tuple[Target, Case]) -> tuple[Outcome | None, tuple[Signature, ...], str]:
        """One case on its own: what describe() and the reproducers see."""
        (entry, backend), case = value
        try:
            outcome = check(case, runner=self.runners[(entry, backend)], entry=entry, kernel=kernel_of(case, backend))
        except Exception as exc:  # a runner that raises is a finding, not a crash of the campaign
            error = classify_error(case, exc, entry=entry, backend=backend)
            return None, (error,), f"{type(exc).__name__}: {exc}"
        return outcome, classify(outcome, backend=backend), ""

    def judge_group(self, value: tuple[Target, list[Case]]) -> list[tuple[Outcome | None, tuple[Signature, ...]]]:
        """A group from one stacked call; should the call raise, each case on its own decides whose error it is."""
        (entry, backend), group = value
        try:
            outcomes = check_group(group, runner=self.runners[(entry, backend)], entry=entry, backend=backend)
        except Exception:
            return [self.judge(((entry, backend), case))[:2] for case in group]
        return [(outcome, classify(outcome, backend=backend)) for outcome in outcomes]

    def record(self, value: tuple[Target, Case], outcome: Outcome | None, sigs: tuple[Signature, ...]) -> None:
        (entry, backend), case = value
        self.result.cases += 1
        kernel = kernel_of(case, backend)
        if outcome is None:
            result = "error"
        elif not outcome.ok:
            result = "failed"
        else:
            result = "known" if outcome.explained else "passed"
        cell = self.result.counts.setdefault((entry, backend, kernel, case.dtype), {})
        cell[result] = cell.get(result, 0) + 1
        self.failed += result in ("failed", "error")
        self.known += result == "known"
        for sig in sigs:
            if sig in self.catalogue:
                self.catalogue.entries[sig].count += 1
                if sig.kind == KNOWN:
                    self.catalogue.add(Entry(sig, 0, case, "smallest seen"))
            elif sig.kind == KNOWN:
                self.catalogue.add(Entry(sig, 1, case, "smallest seen"))
            else:
                self.pending.setdefault(sig, Entry(sig, 0, case, "smallest seen")).absorb(
                    Entry(sig, 1, case, "smallest seen")
                )
        if outcome is not None:
            ratios = [outcome.verdict.ratios.get(q, math.nan) for q in QUANTITIES]
            self.sampler.add((DTYPES.index(case.dtype), conditioning(case), ratios))
            for q, r in outcome.verdict.ratios.items():
                key = (case.dtype, q)
                if not math.isnan(r) and (key not in self.result.worst or r > self.result.worst[key]["ratio"]):
                    failed = any(m.quantity == q for m in outcome.verdict.mismatches)
                    self.result.worst[key] = {
                        "dtype": case.dtype,
                        "quantity": q,
                        "ratio": r,
                        "entry": entry,
                        "backend": backend,
                        "failed": failed,
                        "case": case.describe(),
                    }
        self.report_progress()

    def report_progress(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is not None and (force or now - self.last_progress >= 0.25):
            self.last_progress = now
            self.progress(self.result.cases, self.failed, self.known, len(self.catalogue) + len(self.pending))

    # The conditions the searches run.
    def time_is_up(self, *, grace: float = 0.0) -> bool:
        return self.deadline is not None and time.time() > self.deadline + grace

    def explore(self, value: Example) -> bool:
        if self.hunting is not None:
            return self.shrink_step(value)
        if self.stop_requested():
            self.result.stop_reason = "interrupted"
            raise _Stop
        if self.time_is_up():
            self.result.stop_reason = "time"
            raise _Stop
        if self.budget_spent():
            self.result.stop_reason = "budget"
            raise _Stop
        target, group, draw, chain, sequence = value
        if self.budget is not None:
            group = group[: self.budget - self.result.cases]  # the budget counts cases, not calls
        fingerprint = hashlib.sha1(repr(target).encode() + b"".join(c.fingerprint() for c in group)).digest()
        if fingerprint in self.judged:
            self.result.repeats += len(group)
            return False
        self.judged.add(fingerprint)
        fresh_case: Case | None = None
        for case, (outcome, sigs) in zip(group, self.judge_group((target, group)), strict=True):
            self.record((target, case), outcome, sigs)
            fresh = [s for s in sigs if s.is_new and s not in self.catalogue]
            if fresh and self.hunting is None:
                self.hunting, fresh_case = fresh[0], case
        if due(group[0], every=self.config.relation_every):
            checked = self.check_relation(target, group[0], draw)
            self.record_relation(checked, group[0])
            fresh = [s for s in checked.signatures if s not in self.catalogue]
            if fresh and self.hunting is None:
                self.hunting, fresh_case, self.best_draw = fresh[0], group[0], draw
        if (
            network_findings.due(group[0], every=self.config.network_every)
            and applies(*target)
            and network_unavailable_reason(target[0]) is None  # a release without the chain's hooks
        ):
            started = time.perf_counter()
            network = self.check_network(target, chain)
            self.record_network(network, ms=round(1000 * (time.perf_counter() - started)))
            fresh = [s for s in network.signatures if s.is_new and s not in self.catalogue]
            if fresh and self.hunting is None:
                self.hunting, fresh_case, self.best_chain = fresh[0], group[0], chain
        if (
            sequence_findings.due(group[0], every=self.config.sequence_every)
            and sequence_findings.applies(*target)
            and sequence_unavailable_reason(target[0]) is None  # a release without the sessions' APIs
        ):
            started = time.perf_counter()
            ran = self.check_sequence(target, sequence)
            self.record_sequence(ran, group[0], ms=round(1000 * (time.perf_counter() - started)))
            fresh = [s for s in ran.signatures if s.is_new and s not in self.catalogue]
            if fresh and self.hunting is None:
                self.hunting, fresh_case, self.best_sequence = fresh[0], group[0], sequence
        if fresh_case is not None:
            self.best = fresh_case
            return True
        return False

    def check_relation(self, target: Target, case: Case, draw: RelationDraw) -> RelationCheck:
        entry, backend = target
        return check_relation(case, draw, runner=self.runners[target], entry=entry, backend=backend)

    def record_relation(self, checked: RelationCheck, case: Case) -> None:
        cell = self.result.relations.setdefault(checked.draw.relation, {})
        cell[checked.result] = cell.get(checked.result, 0) + 1
        for sig in checked.signatures:
            if sig in self.catalogue:
                self.catalogue.entries[sig].count += 1
            else:
                seen = Entry(sig, 1, case, "smallest seen", relation=checked.draw.key)
                self.pending.setdefault(sig, dataclasses.replace(seen, count=0)).absorb(seen)

    def check_network(self, target: Target, chain: Chain) -> NetworkCheck:
        entry, backend = target
        return check_network(
            chain, entry=entry, backend=backend, plain_runner=self.runners[target], runner=self.config.network_runner
        )

    def record_network(self, checked: NetworkCheck, *, ms: int = 0) -> None:
        cell = self.result.networks.setdefault(f"{checked.chain.api}/{checked.backend}", {})
        for result in ("checks", *checked.results):
            cell[result] = cell.get(result, 0) + 1
        cell["ms"] = cell.get("ms", 0) + ms  # the time the checks took, worker processes' start included
        case = network_findings.call_of(checked.chain, checked.result)
        for sig in checked.signatures:
            seen = Entry(sig, 1, case, "smallest seen", checked.detail(sig), network=checked.chain.to_json())
            if sig.kind == KNOWN or sig in self.catalogue:
                self.catalogue.add(seen)
            else:
                self.pending.setdefault(sig, dataclasses.replace(seen, count=0)).absorb(seen)

    def check_sequence(self, target: Target, sequence: Sequence) -> SequenceCheck:
        entry, backend = target
        return check_sequence(sequence, entry=entry, backend=backend, session=self.config.sequence_session or None)

    def record_sequence(self, checked: SequenceCheck, case: Case, *, ms: int = 0) -> None:
        cell = self.result.sequences.setdefault(f"{checked.sequence.config.entry}/{checked.backend}", {})
        for result in ("checks", checked.result):
            cell[result] = cell.get(result, 0) + 1
        cell["ms"] = cell.get("ms", 0) + ms
        for sig in checked.signatures:
            seen = self.sequence_entry(sig, checked, 1, "smallest seen")
            if sig.kind == KNOWN or sig in self.catalogue:
                self.catalogue.add(seen)
            else:
                self.pending.setdefault(sig, dataclasses.replace(seen, count=0)).absorb(seen)

    def sequence_entry(self, sig: Signature, checked: SequenceCheck, count: int, reduction: str) -> Entry:
        case = sequence_findings.entry_case(checked.sequence)
        replay = checked.run.script if sig.kind == SEQUENCE and checked.run.script else None
        detail = checked.detail(sig)
        return Entry(sig, count, case, reduction, detail, sequence=checked.sequence.to_json(), replay=replay)

    def budget_spent(self) -> bool:
        return self.budget is not None and self.result.cases >= self.budget

    def shrink_step(self, value: Example) -> bool:
        if self.stop_requested():
            self.result.stop_reason = "interrupted"
            raise _Stop
        if self.time_is_up(grace=SHRINK_GRACE_S):
            self.result.stop_reason = "time"
            raise _Stop
        self.result.shrink_calls += 1
        target, group, draw, chain, sequence = value
        if self.hunting is not None and self.hunting.kind == SEQUENCE:
            # The drawn sequence runs whether due or not; nothing else runs.
            if not sequence_findings.applies(*target):
                return False
            if self.hunting in self.check_sequence(target, sequence).signatures:
                self.best, self.best_sequence = group[0], sequence
                return True
            return False
        if self.hunting is not None and self.hunting.kind == NETWORK:
            # The drawn chain runs whether due or not (so any network_every replays it); nothing else runs.
            if not applies(*target):
                return False
            if self.hunting in self.check_network(target, chain).signatures:
                self.best, self.best_chain = group[0], chain
                return True
            return False
        if self.hunting is not None and self.hunting.kind == RELATION:
            # The drawn relation runs whether due or not (so any relation_every replays it); nothing else runs.
            if draw.relation != relation_of(self.hunting):
                return False
            if self.hunting in self.check_relation(target, group[0], draw).signatures:
                self.best, self.best_draw = group[0], draw
                return True
            return False
        for case, (_, sigs) in zip(group, self.judge_group((target, group)), strict=True):
            if self.hunting in sigs:
                self.best = case
                return True
        return False

    def describe(self, sig: Signature, case: Case) -> str:
        """What the comparator says about ``case`` for ``sig``: the mismatch, the stale deviation or the error."""
        outcome, sigs, error = self.judge(((sig.entry, sig.backend), case))
        if error:
            return error
        assert outcome is not None
        if sig not in sigs:
            return "this example no longer shows the signature when run again (flaky?)"
        if sig.kind == STALE:
            return outcome.message().splitlines()[0]
        for m in outcome.unexpected:
            if m.quantity == sig.quantity and m.deviation == sig.deviation:
                return m.describe()
        for m in outcome.verdict.mismatches:
            if m.quantity == sig.quantity:
                # A known one: what differs from the oracle is what the deviation's model predicts.
                known = f"matches the recorded deviation {sig.deviation}; against the oracle:\n"
                return (known if sig.deviation else "") + m.describe()
        return ""

    def settle(self, case: Case | None, *, reduction: str) -> None:
        """The hunted signature is done: its entry takes the pending count and the reduced case."""
        sig, self.hunting = self.hunting, None
        if sig is None or case is None:
            return
        pending = self.pending.pop(sig, None)
        count = pending.count if pending else 0
        if sig.kind == NETWORK and self.best_chain is not None:
            self.catalogue.add(self.network_entry(sig, self.best_chain, count, reduction))
            return
        if sig.kind == SEQUENCE and self.best_sequence is not None:
            checked = self.check_sequence((sig.entry, sig.backend), self.best_sequence)
            self.catalogue.add(self.sequence_entry(sig, checked, count, reduction))
            return
        if sig.kind == RELATION and self.best_draw is not None:
            detail = self.describe_relation(sig, case, self.best_draw)
            self.catalogue.add(Entry(sig, count, case, reduction, detail, relation=self.best_draw.key))
            return
        self.catalogue.add(Entry(sig, count, case, reduction, self.describe(sig, case)))

    def network_entry(self, sig: Signature, chain: Chain, count: int, reduction: str) -> Entry:
        """A network finding's entry: ``chain`` run again for its detail and the plain call BatchNorm made."""
        checked = self.check_network((sig.entry, sig.backend), chain)
        case = network_findings.call_of(checked.chain, checked.result)
        return Entry(sig, count, case, reduction, checked.detail(sig), network=checked.chain.to_json())

    def describe_relation(self, sig: Signature, case: Case, draw: RelationDraw) -> str:
        """What breaks when ``case`` runs ``draw``'s relation again: both calls and the violations."""
        checked = self.check_relation((sig.entry, sig.backend), case, draw)
        if sig not in checked.signatures:
            return "this example no longer shows the signature when run again (flaky?)"
        return checked.detail()

    # Running.
    def replay(self) -> None:
        """Yesterday's signatures first: each stored minimal example is run again (and shrunk further if it can)."""
        for sig in load_index(self.config.out):
            row: dict[str, Any] = {"signature": sig.to_dict(), "id": sig.ident}
            if (sig.entry, sig.backend) not in self.runners or sig.dtype not in self.config.dtypes:
                self.result.replays.append({**row, "status": "not selected in this run"})
                continue
            self.hunting, self.best = sig, None
            try:
                minimal = search(
                    self.strategy,
                    self.shrink_step,
                    database=_Router(self.db, lambda: self.hunting, replay=True),
                    max_examples=1,
                    phases=(Phase.reuse, Phase.shrink),
                )
            except (_Stop, KeyboardInterrupt):
                self.settle(self.best, reduction="replayed")
                raise
            if minimal is None:
                self.hunting = None
                status = "did not reproduce (fixed, or the example no longer decodes under this selection)"
            else:
                self.settle(self.best, reduction="replayed")
                status = "reproduced"
            self.result.replays.append({**row, "status": status})

    def run(self) -> WorkerResult:
        start = time.time()
        idle_chunks = 0
        try:
            if self.worker == 0:
                self.replay()
            for index in chunk_indices(
                shard_index=self.config.shard_index,
                shard_count=self.config.shard_count,
                worker=self.worker,
                workers=self.config.workers,
            ):
                if self.budget_spent():
                    self.result.stop_reason = "budget"
                    break
                if self.time_is_up():
                    self.result.stop_reason = "time"
                    break
                if idle_chunks >= MAX_IDLE_CHUNKS:
                    self.result.stop_reason = "exhausted (only repeated cases drawn)"
                    break
                self.result.chunks.append(index)
                before = self.result.cases
                # Always a whole chunk: the budget stops the search from inside (a chunk cut to a few
                # cases would draw only Hypothesis's simplest ones, which this worker has judged).
                minimal = search(
                    self.strategy,
                    self.explore,
                    database=_Router(self.db, lambda: self.hunting, replay=False),
                    max_examples=self.config.chunk_size,
                    phases=(Phase.generate, Phase.target, Phase.shrink),
                    seed_value=chunk_seed(self.config.seed, index),
                )
                if minimal is not None:
                    # shrink_step left the case of the minimal group that shows the signature in best.
                    self.settle(self.best, reduction="shrunk")
                idle_chunks = 0 if self.result.cases > before else idle_chunks + 1
        except _Stop:
            self.settle(self.best, reduction="partly shrunk")
        except KeyboardInterrupt:
            self.result.stop_reason = "interrupted"
            self.settle(self.best, reduction="partly shrunk")
        except Exception:
            # A bug in bnprops or Hypothesis: keep what ran, and say what broke.
            self.result.stop_reason = "crashed"
            self.result.error = traceback.format_exc()
            self.hunting = None
        for entry in self.pending.values():
            if entry.network is not None or entry.sequence is not None:
                pass  # its detail is the check's own: run again, the chain or sequence shows the same
            elif entry.relation is not None:
                entry.detail = self.describe_relation(entry.signature, entry.case, RelationDraw(*entry.relation))
            else:
                entry.detail = self.describe(entry.signature, entry.case)
            self.catalogue.add(entry)
        self.pending.clear()
        in_network.close_workers()
        self.result.entries = list(self.catalogue.entries.values())
        self.result.points = self.sampler.points()
        self.result.elapsed_s = time.time() - start
        self.report_progress(force=True)
        return self.result


def run_worker(
    config: Config,
    *,
    worker: int,
    targets: list[Target],
    runner_factory: RunnerFactory = runner_for,
    deadline: float | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    progress: ProgressFn | None = None,
) -> WorkerResult:
    """Run one worker's share of the campaign in this process."""
    return _Worker(
        config,
        worker=worker,
        targets=targets,
        runner_factory=runner_factory,
        deadline=deadline,
        stop_requested=stop_requested,
        progress=progress,
    ).run()


def _worker_process(
    config: Config,
    worker: int,
    targets: list[Target],
    runner_factory: RunnerFactory,
    deadline: float | None,
    stop: Any,
    messages: Any,
) -> None:
    # The parent turns Ctrl-C into the stop event, so every worker winds down and reports.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def progress(cases_run: int, failed: int, known: int, signatures: int) -> None:
        messages.put(("progress", worker, (cases_run, failed, known, signatures)))

    try:
        result = run_worker(
            config,
            worker=worker,
            targets=targets,
            runner_factory=runner_factory,
            deadline=deadline,
            stop_requested=stop.is_set,
            progress=progress,
        )
    except BaseException:
        result = WorkerResult(worker=worker, stop_reason="crashed", error=traceback.format_exc())
    messages.put(("done", worker, result))


def run_workers(
    config: Config,
    *,
    targets: list[Target],
    runner_factory: RunnerFactory = runner_for,
    deadline: float | None,
    progress: ProgressFn | None,
) -> tuple[list[WorkerResult], bool]:
    """Run the workers (in this process when there is one) and collect their results; also says if Ctrl-C came."""
    if config.workers == 1:
        result = run_worker(
            config, worker=0, targets=targets, runner_factory=runner_factory, deadline=deadline, progress=progress
        )
        return [result], result.stop_reason == "interrupted"
    # spawn, not fork: a forked MXNet (OpenMP, oneDNN thread pools) can hang.
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    messages = ctx.Queue()
    procs = {
        w: ctx.Process(
            target=_worker_process,
            args=(config, w, targets, runner_factory, deadline, stop, messages),
            name=f"bnprops-fuzz-{w}",
        )
        for w in range(config.workers)
    }
    for proc in procs.values():
        proc.start()
    latest: dict[int, tuple[int, int, int, int]] = {}
    results: dict[int, WorkerResult] = {}
    interrupted = False
    while len(results) < len(procs):
        try:
            kind, worker, payload = messages.get(timeout=0.5)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            continue
        except queue_module.Empty:
            for w, proc in procs.items():
                if w not in results and not proc.is_alive() and proc.exitcode not in (0, None):
                    # Died without a word (a crash inside MXNet): keep the others' results.
                    results[w] = WorkerResult(
                        worker=w, stop_reason="crashed", error=f"worker process exited with status {proc.exitcode}"
                    )
            continue
        if kind == "progress":
            latest[worker] = payload
            if progress is not None:
                totals = [sum(v[i] for v in latest.values()) for i in range(4)]
                progress(*totals)
        elif kind == "done":
            results[worker] = payload
    for proc in procs.values():
        with contextlib.suppress(KeyboardInterrupt):
            proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
    return [results[w] for w in sorted(results)], interrupted

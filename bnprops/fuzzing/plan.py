"""Fuzz campaigns: the property checks run for a budget of cases or seconds, with failures catalogued.

This module holds what a campaign is (CampaignConfig, chunks, shards, targets, the database index); a worker's
run is in ``worker``, what it does with each example in ``explorer`` and ``families``.

A campaign judges cases from the properties' own strategy with ``checks.check``, the judgement of
``pytest -m property``, so the fuzz job and the tests agree.  It runs seeded *chunks* (one
``hypothesis.find`` each) that stop at the first signature not seen yet and shrink it; shard I of N
runs chunks I, I + N, ..., so shards and workers never repeat a chunk and together run what one
unsharded run would.  About one example in ``relation_every``, ``network_every``, ``sequence_every`` and
``member_every`` also draws, and runs, an exact relation, a producer chain, a training sequence, a member call.  Each
new signature's minimal example is kept in ``OUT/db`` and replayed first by the next run.  The
details are in the documentation's page on the fuzz job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bnprops.base import atomic
from bnprops.base.family import MEMBER_ENTRIES
from bnprops.fuzzing.catalogue import (
    Signature,
)
from bnprops.fuzzing.causes import read_baseline
from bnprops.fuzzing.lifecycle_findings import LIFECYCLE_EVERY
from bnprops.fuzzing.member_findings import MEMBER_EVERY, MemberDraw
from bnprops.fuzzing.network_findings import NETWORK_EVERY
from bnprops.fuzzing.relation_findings import (
    RELATION_EVERY,
    RelationDraw,
)
from bnprops.fuzzing.sequence_findings import SEQUENCE_EVERY
from bnprops.judging import in_network
from bnprops.model.case import DTYPES, Case
from bnprops.mx.producers import Chain
from bnprops.mx.runners import (
    BACKENDS,
    RUNNERS,
    BackendUnavailable,
    Runner,
    entry_unavailable_reason,
    kernel_for,
)
from bnprops.search.sequences import Sequence

DEFAULT_CHUNK_SIZE = 100
#: A shrink under way when the time is up may go on this long (seconds) before its best case is kept.
SHRINK_GRACE_S = 30.0
#: Cases per example at most: same-signature cases share one stacked MXNet call (see commands.bench).
GROUP_SIZE = 32
#: Cases per worker kept for the error plot (a uniform sample of all cases run).
PLOT_SAMPLE = 50_000
#: Chunks in a row that judge nothing new before a worker gives up (the space is exhausted).
MAX_IDLE_CHUNKS = 50
INDEX_FILE = "db-index.json"
_INDEX_FORMAT = "bnprops.db-index/2"
#: Index formats whose database's examples this bnprops cannot decode, and why: their signatures are not replayed.
_UNREPLAYABLE = {
    "bnprops.db-index/1": "stored by an earlier bnprops, which drew every side family on every example; its "
    "examples decode differently now",
}

Target = tuple[str, str]
#: What a search draws: the target, a group of same-signature cases, a relation for the first one, a chain, a
#: training sequence, a family member's call and a life-cycle scenario; a side family's draw is None on an example
#: that does not run it.
Example = tuple[
    Target, list[Case], RelationDraw | None, Chain | None, Sequence | None, MemberDraw, dict[str, Any] | None
]
RunnerFactory = Callable[[str, str], Runner]
#: Called by a worker with (cases run, new-deviation cases, known-deviation cases, signatures) now and then.
ProgressFn = Callable[[int, int, int, int], None]


class UsageError(ValueError):
    """The campaign cannot run as asked (bad selection, nothing runnable): exit status 2 in the CLI."""


@dataclasses.dataclass(frozen=True)
class CampaignConfig:
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
    #: The in-network run (module:function, as bnprops.judging.in_network takes it): tests plant faults here.
    network_runner: str = in_network.DEFAULT_RUNNER
    #: One example in this many also runs its training sequence (0: none).
    sequence_every: int = SEQUENCE_EVERY
    #: A previous report (report.json or its folder) the report says what changed against; None: --out's own.
    baseline: Path | None = None
    #: The sessions a sequence runs on (module:function making one from (entry, **kwargs); '' for MXNet's own):
    #: tests plant faults here.
    sequence_session: str = ""
    #: The BatchNorm family's member entries whose calls examples draw (base.family; empty: none).
    members: tuple[str, ...] = MEMBER_ENTRIES
    #: One example in this many also runs its member call (0: none).
    member_every: int = MEMBER_EVERY
    #: One example in this many also runs a life-cycle scenario, drawn only there (0: none).
    lifecycle_every: int = LIFECYCLE_EVERY

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
        if self.member_every < 0:
            raise UsageError(f"member_every must be 0 (no member calls) or more, got {self.member_every}")
        if self.lifecycle_every < 0:
            raise UsageError(f"lifecycle_every must be 0 (no life-cycle scenarios) or more, got {self.lifecycle_every}")
        unknown_members = [m for m in self.members if m not in MEMBER_ENTRIES]
        if unknown_members:
            raise UsageError(f"unknown member entries {unknown_members}; choose from {', '.join(MEMBER_ENTRIES)}")
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
            "members": list(self.members),
            "member_every": self.member_every,
            "lifecycle_every": self.lifecycle_every,
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


def resolve_targets(config: CampaignConfig, runner_factory: RunnerFactory) -> tuple[list[Target], list[dict[str, str]]]:
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


def load_index(out: Path) -> tuple[list[Signature], str]:
    """The signatures whose minimal examples the database in ``out`` holds (none if there is no index), and why
    they cannot be replayed ('' when they can: an index of an older format whose examples no longer decode)."""
    path = out / INDEX_FILE
    if not path.exists():
        return [], ""
    try:
        data = json.loads(path.read_text())
        unreplayable = _UNREPLAYABLE.get(data.get("format"), "")
        if data.get("format") != _INDEX_FORMAT and not unreplayable:
            raise ValueError(f"format {data.get('format')!r}, expected {_INDEX_FORMAT!r}")
        return [Signature.from_dict(s) for s in data["signatures"]], unreplayable
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a bnprops database index ({exc}); move it away to start afresh") from exc


def write_index(out: Path, signatures: Iterable[Signature]) -> None:
    data = {"format": _INDEX_FORMAT, "signatures": [s.to_dict() for s in sorted(set(signatures))]}
    atomic.write_text(out / INDEX_FILE, json.dumps(data, indent=1) + "\n")

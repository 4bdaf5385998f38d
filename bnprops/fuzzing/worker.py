"""A fuzz worker's run, and the workers of a campaign: one process each (spawned), or this process for one.

A worker first replays the signatures stored in the output folder's database (worker 0), then runs
its chunks in turn (fuzzing.plan: chunk_indices), each one seeded search of at most
``chunk_size`` examples whose condition is the explorer's (fuzzing.explorer).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queue_module
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from hypothesis import Phase
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from bnprops.base import lifetime
from bnprops.fuzzing.catalogue import MEMBER
from bnprops.fuzzing.explorer import Explorer, examples
from bnprops.fuzzing.families import helpers
from bnprops.fuzzing.plan import (
    MAX_IDLE_CHUNKS,
    CampaignConfig,
    ProgressFn,
    RunnerFactory,
    Target,
    chunk_indices,
    chunk_seed,
    load_index,
)
from bnprops.fuzzing.search import Router, Stop, find
from bnprops.fuzzing.tallies import WorkerResult
from bnprops.fuzzing.time_shares import StackSampler
from bnprops.judging import fused, fused_start, in_network
from bnprops.mx.backends import runner_for


def replay(explorer: Explorer, strategy: Any, db: ExampleDatabase) -> None:
    """Yesterday's signatures first: each stored minimal example is run again (and shrunk further if it can)."""
    config, findings, result = explorer.config, explorer.findings, explorer.result
    signatures, unreplayable = load_index(config.out)
    for sig in signatures:
        row: dict[str, Any] = {"signature": sig.to_dict(), "id": sig.ident}
        if unreplayable:
            result.replays.append({**row, "status": f"not replayed: {unreplayable}"})
            continue
        selected = (sig.entry, sig.backend) in explorer.cases.runners or (
            sig.kind == MEMBER and sig.entry in config.members and MEMBER in explorer.families
        )
        if not selected or sig.dtype not in config.dtypes:
            result.replays.append({**row, "status": "not selected in this run"})
            continue
        findings.start(sig)
        try:
            minimal = find(
                strategy,
                explorer.shrink_step,
                database=Router(db, lambda: findings.hunting, replay=True),
                max_examples=1,
                phases=(Phase.reuse, Phase.shrink),
            )
        except (Stop, KeyboardInterrupt):
            explorer.settle("replayed")
            raise
        if minimal is None:
            findings.hunting = None
            status = "did not reproduce (fixed, or the example no longer decodes under this selection)"
        else:
            explorer.settle("replayed")
            status = "reproduced"
        result.replays.append({**row, "status": status})


def explore_chunks(explorer: Explorer, strategy: Any, db: ExampleDatabase, *, worker: int) -> None:
    """This worker's chunks in turn, until the budget, the time or fresh cases run out."""
    config, result = explorer.config, explorer.result
    idle_chunks = 0
    for index in chunk_indices(
        shard_index=config.shard_index, shard_count=config.shard_count, worker=worker, workers=config.workers
    ):
        if explorer.budget_spent():
            result.stop_reason = "budget"
            break
        if explorer.time_is_up():
            result.stop_reason = "time"
            break
        if idle_chunks >= MAX_IDLE_CHUNKS:
            result.stop_reason = "exhausted (only repeated cases drawn)"
            break
        result.chunks.append(index)
        before = result.cases
        # Always a whole chunk: the budget stops the search from inside (a chunk cut to a few
        # cases would draw only Hypothesis's simplest ones, which this worker has judged).
        minimal = find(
            strategy,
            explorer.explore,
            database=Router(db, lambda: explorer.findings.hunting, replay=False),
            max_examples=config.chunk_size,
            phases=(Phase.generate, Phase.target, Phase.shrink),
            seed_value=chunk_seed(config.seed, index),
        )
        if minimal is not None:
            explorer.settle("shrunk")  # shrink_step left the case of the minimal group that shows it in best
        idle_chunks = 0 if result.cases > before else idle_chunks + 1


#: A campaign shorter than this (or of fewer cases, with no time limit: the tests') starts each helper at its first
#: call: waiting for them all first could take its whole time.
HELPERS_FIRST_S = 30.0
HELPERS_FIRST_CASES = 2_000


def start_helpers(config: CampaignConfig, targets: list[Target], *, runner_factory: RunnerFactory) -> None:
    """Launch this worker's helper processes together and wait until each is ready, before the search (its time
    shares file the wait apart). They used to start at their first calls, one after the other, the search waiting
    each time: a sixth to a third of a two-minute campaign's worker time. One that fails to start is started again
    at its first call, which says why."""
    if not lifetime.lasts_at_least(
        config.time_limit, config.max_examples, seconds=HELPERS_FIRST_S, cases=HELPERS_FIRST_CASES
    ):
        return
    chosen = helpers(config, targets, runner_factory=runner_factory)
    for helper in chosen:
        with contextlib.suppress(Exception):
            helper.launch()
    for helper in chosen:
        with contextlib.suppress(Exception):
            helper.wait_ready()


def run_worker(
    config: CampaignConfig,
    *,
    worker: int,
    targets: list[Target],
    runner_factory: RunnerFactory = runner_for,
    deadline: float | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    progress: ProgressFn | None = None,
) -> WorkerResult:
    """Run one worker's share of the campaign in this process."""
    start = time.time()
    explorer = Explorer(
        config,
        worker=worker,
        targets=targets,
        runner_factory=runner_factory,
        deadline=deadline,
        stop_requested=stop_requested,
        progress=progress,
    )
    result = explorer.result
    strategy = examples(config, targets, explorer.families)
    db = DirectoryBasedExampleDatabase(config.out / "db")
    sampler = StackSampler()
    try:
        with sampler:  # where this worker's time goes
            start_helpers(config, targets, runner_factory=runner_factory)
            if worker == 0:
                replay(explorer, strategy, db)
            explore_chunks(explorer, strategy, db, worker=worker)
    except Stop:
        explorer.settle("partly shrunk")
    except KeyboardInterrupt as exc:
        result.stop_reason = lifetime.stop_reason(exc)
        explorer.settle("partly shrunk")
    except Exception:
        # A bug in bnprops or Hypothesis: keep what ran, and say what broke.
        result.stop_reason = "crashed"
        result.error = traceback.format_exc()
    result.time_samples = dict(sampler.counts)
    result.entries = explorer.findings.close(explorer.detail)
    in_network.close_workers()  # the worker processes the network checks ran in
    result.points = explorer.sampler.points()
    result.elapsed_s = time.time() - start
    explorer.report_progress(force=True)
    return result


def _worker_process(
    config: CampaignConfig,
    worker: int,
    targets: list[Target],
    runner_factory: RunnerFactory,
    deadline: float | None,
    stop: Any,
    messages: Any,
    parent: int,
    kernels_ready: Any,
) -> None:
    lifetime.die_with_parent(parent)  # killed outright, the campaign takes its workers with it
    # The parent turns Ctrl-C and SIGTERM (to it or its whole group) into the stop event, so every worker winds
    # down and reports.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fused.share_cores(config.workers)
    fused.wait_for(kernels_ready.is_set)  # the campaign compiles the kernels once; this worker loads them

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


#: How long a worker that exited with status 0 may stay silent before its result counts as lost.
_SILENT_EXIT_GRACE_S = 10.0


def run_workers(
    config: CampaignConfig,
    *,
    targets: list[Target],
    runner_factory: RunnerFactory = runner_for,
    deadline: float | None,
    progress: ProgressFn | None,
) -> tuple[list[WorkerResult], str | None]:
    """Run the workers (in this process when there is one) and collect their results; also says whether Ctrl-C
    ("interrupted") or SIGTERM ("terminated") stopped them.  The fused kernels are compiled once meanwhile, in
    a process of their own (fused_start); the workers judge on the reference engine until they are ready."""
    # spawn, not fork: a forked MXNet (OpenMP, oneDNN thread pools) can hang.
    ctx = multiprocessing.get_context("spawn")
    with fused_start.compiled_once(
        ctx, worth=fused_start.worth_compiling(config.time_limit, config.max_examples)
    ) as kernels_ready:
        if config.workers > 1:
            return _run_processes(
                config,
                ctx,
                targets=targets,
                runner_factory=runner_factory,
                deadline=deadline,
                progress=progress,
                kernels_ready=kernels_ready,
            )
        fused.wait_for(kernels_ready.is_set)
        try:
            result = run_worker(
                config, worker=0, targets=targets, runner_factory=runner_factory, deadline=deadline, progress=progress
            )
        finally:
            fused.wait_for(None)
        return [result], result.stop_reason if result.stop_reason in ("interrupted", "terminated") else None


def _run_processes(
    config: CampaignConfig,
    ctx: Any,
    *,
    targets: list[Target],
    runner_factory: RunnerFactory,
    deadline: float | None,
    progress: ProgressFn | None,
    kernels_ready: Any,
) -> tuple[list[WorkerResult], str | None]:
    stop = ctx.Event()
    messages = ctx.Queue()
    procs = {
        w: ctx.Process(
            target=_worker_process,
            args=(config, w, targets, runner_factory, deadline, stop, messages, os.getpid(), kernels_ready),
            name=f"bnprops-fuzz-{w}",
        )
        for w in range(config.workers)
    }
    results: dict[int, WorkerResult] = {}
    # Signals only record a stop, polled here: a KeyboardInterrupt landing outside the wait (in the progress
    # callback, say) used to leave this loop without setting the stop event, and interpreter exit then joined
    # workers still running to their deadline.
    with lifetime.requesting_stop() as requested:
        try:
            for proc in procs.values():
                proc.start()
            _collect(procs, results, messages=messages, stop=stop, requested=requested, progress=progress)
        finally:
            stop.set()  # a no-op after a normal end; on any exception, the workers still wind down
            for proc in procs.values():
                with contextlib.suppress(KeyboardInterrupt, AssertionError):  # AssertionError: never started
                    proc.join(timeout=10)
                if proc.is_alive():
                    proc.terminate()
    return [results[w] for w in sorted(results)], requested.reason


def _collect(
    procs: dict[int, Any],
    results: dict[int, WorkerResult],
    *,
    messages: Any,
    stop: Any,
    requested: lifetime.StopRequest,
    progress: ProgressFn | None,
) -> None:
    """Gather every worker's result into ``results``, forwarding progress and a requested stop."""
    latest: dict[int, tuple[int, int, int, int]] = {}
    silent_since: dict[int, float] = {}
    while len(results) < len(procs):
        if requested.reason is not None and not stop.is_set():
            stop.set()
        try:
            kind, worker, payload = messages.get(timeout=0.5)
        except queue_module.Empty:
            now = time.monotonic()
            for w, proc in procs.items():
                if w in results or proc.is_alive():
                    continue
                # Died without a word (a crash inside MXNet), or exited without its result reaching the queue
                # (after a grace period for a message still in flight): keep the others' results.
                silent_since.setdefault(w, now)
                if proc.exitcode not in (0, None) or now - silent_since[w] > _SILENT_EXIT_GRACE_S:
                    error = (
                        f"worker process exited with status {proc.exitcode}"
                        if proc.exitcode
                        else "worker process exited without sending its result (could it be pickled? see its stderr)"
                    )
                    results[w] = WorkerResult(worker=w, stop_reason="crashed", error=error)
            continue
        if kind == "progress":
            latest[worker] = payload
            if progress is not None:
                totals = [sum(v[i] for v in latest.values()) for i in range(4)]
                progress(*totals)
        elif kind == "done":
            results[worker] = payload

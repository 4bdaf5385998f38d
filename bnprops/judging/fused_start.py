"""The fused kernels compiled once per campaign, not once per worker, while the workers judge on the reference
engine.

One background process compiles them into numba's disk cache; each worker takes the fused engine once they are
ready, loading them from the cache.

Compiling the kernels costs about a minute of one core; every worker used to pay it, each at its first large case,
so a first campaign judged a sixth of what later ones did.  Both engines give the same verdicts (the fused one
hands any close decision to the reference), so which one judges a case while the kernels compile changes only
the speed.  The compiling process runs at a lower priority: the workers' judging comes first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from bnprops.base import lifetime
from bnprops.judging import fused
from bnprops.judging.judgement import judge
from bnprops.model.case import Case
from bnprops.model.evaluation import evaluate

#: The compiling process's niceness, the lowest: at 10 it cost a cold minute over a quarter of its cases.
NICE = 19


def _sample(dtype: str, *, seed: int) -> Case:
    rng = np.random.default_rng(seed)
    shape, channels = (4, 3, 5, 7), 3
    return Case(
        x=rng.standard_normal(shape).astype(dtype),
        dy=rng.standard_normal(shape).astype(dtype),
        gamma=rng.standard_normal(channels).astype("float32"),
        beta=rng.standard_normal(channels).astype("float32"),
        moving_mean=np.zeros(channels, dtype="float32"),
        moving_var=np.ones(channels, dtype="float32"),
        fix_gamma=False,
    )


def compile_kernels() -> None:
    """Judge a small case on the fused path, once as the oracle computes it and once with an error planted in
    y and dx: every kernel is compiled for the one signature the engine calls it with (its inputs always
    float32, contiguous, read-only), and written to numba's disk cache."""
    case = _sample("float32", seed=0)
    with fused.forced("always"):
        exact = evaluate(case)
        outputs = {q: np.asarray(exact.expected[q], dtype=np.float32) for q in ("y", "dx")}
        judge(case, outputs, entry="sym", kernel="onednn", checked=list(outputs), evaluation=exact)
        planted = {q: (v * np.float32(1.005)).astype(np.float32) for q, v in outputs.items()}
        judge(case, planted, entry="sym", kernel="onednn", checked=list(planted), evaluation=evaluate(case))


def _compile_process(done: Any, parent: int) -> None:
    lifetime.die_with_parent(parent)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    compile_kernels()
    done.set()


#: A campaign shorter than this does not compile the kernels: measured, a minute's campaign judged as many cases
#: on the reference engine alone as with the kernels, and a compilation's CPU cost it a quarter of them.
WORTH_COMPILING_S = 600.0
#: Nor does one with a budget of fewer cases and no time limit (the tests' campaigns: minutes at ~100 cases/s).
WORTH_COMPILING_CASES = 50_000


def worth_compiling(time_limit: float | None, max_examples: int | None) -> bool:
    """Is a campaign of ``time_limit`` seconds and ``max_examples`` cases long enough to gain from the kernels?"""
    return lifetime.lasts_at_least(time_limit, max_examples, seconds=WORTH_COMPILING_S, cases=WORTH_COMPILING_CASES)


@contextlib.contextmanager
def compiled_once(ctx: Any, *, worth: bool = True) -> Iterator[Any]:
    """Start the one compilation of a campaign (``ctx``: a multiprocessing context); yields the event that is set
    when the kernels are in the cache (set at once, with no process, where they are cached already, numba is
    missing or BNPROPS_FUSED is "never"; never set, with no process, where the campaign is not ``worth``
    compiling for: see worth_compiling).  The process is ended with the block."""
    done = ctx.Event()
    if not fused.available() or fused.mode() == "never" or fused.kernels().cached():
        done.set()
        yield done
        return
    if not worth:
        yield done
        return
    proc = ctx.Process(target=_compile_process, args=(done, os.getpid()), name="bnprops-compile", daemon=True)
    proc.start()
    try:
        yield done
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(timeout=10)

"""A cold campaign compiles the fused kernels once, in one process, not once in every worker: a worker judges on
the reference engine until the campaign's compilation is done, and compiles nothing itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnprops.judging import fused, fused_start
from bnprops.model.case import Case
from bnprops.model.evaluation import evaluate

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed")

_WORKER = """
import json, sys
import numpy as np
from bnprops.judging import fused
from bnprops.judging.judgement import judge
from bnprops.model.case import Case
from bnprops.model.evaluation import evaluate
rng = np.random.default_rng(1)
shape = (8, 4, 30, 30)
case = Case(x=rng.standard_normal(shape).astype("float32"), dy=rng.standard_normal(shape).astype("float32"),
            gamma=np.ones(4, "float32"), beta=np.zeros(4, "float32"), moving_mean=np.zeros(4, "float32"),
            moving_var=np.ones(4, "float32"), fix_gamma=False)
fused.wait_for(lambda: False)  # as a fuzz worker while the campaign compiles
ev = evaluate(case)
outputs = {q: np.asarray(ev.expected[q], dtype=np.float32) for q in ("y", "dx")}
outcome = judge(case, outputs, entry="sym", kernel="onednn", checked=list(outputs), evaluation=ev)
k = fused.kernels()
names = ("raw_sums", "centred_sums", "xhat_sums", "materialise", "compare")
compiled = {n: len(getattr(k, n).signatures) for n in names}
print(json.dumps({"engine": ev.engine, "ok": outcome.ok, "compiled": compiled}))
"""


def test_a_worker_waiting_for_the_campaigns_compilation_compiles_no_kernel(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "BNPROPS_FUSED": "auto"}
    done = subprocess.run(
        [sys.executable, "-c", _WORKER], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"expected the worker to judge, got status {done.returncode}: {done.stderr[-2000:]}"
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["engine"] == "reference", f"expected the reference engine while waiting, got {found}"
    assert found["ok"], f"expected the oracle's own outputs to pass, got {found}"
    assert found["compiled"] == dict.fromkeys(found["compiled"], 0), f"expected no kernel compiled, got {found}"
    cache = tmp_path / "cache"
    written = list(cache.rglob("*.nbi")) if cache.exists() else []
    assert written == [], f"expected nothing in numba's cache from a waiting worker, got {written}"


def _large() -> Case:
    rng = np.random.default_rng(3)
    shape = (8, 4, 30, 30)
    return Case(
        x=rng.standard_normal(shape).astype("float32"),
        dy=rng.standard_normal(shape).astype("float32"),
        gamma=np.ones(4, "float32"),
        beta=np.zeros(4, "float32"),
        moving_mean=np.zeros(4, "float32"),
        moving_var=np.ones(4, "float32"),
        fix_gamma=False,
    )


def test_auto_takes_the_fused_engine_once_the_kernels_are_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fused.ENV, "auto")
    compiled = threading.Event()
    fused.wait_for(compiled.is_set)
    try:
        assert evaluate(_large()).engine == "reference"
        compiled.set()
        assert evaluate(_large()).engine == "fused"
    finally:
        fused.wait_for(None)


class _Context:
    """A multiprocessing context that records the processes asked of it instead of starting them."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def Event(self) -> threading.Event:
        return threading.Event()

    def Process(self, *, name: str, **kwargs: Any) -> Any:
        started = self.started

        class _Process:
            def start(self) -> None:
                started.append(name)

            def is_alive(self) -> bool:
                return False

            def join(self, timeout: float) -> None:
                pass

        return _Process()


def test_a_campaign_starts_one_compilation_and_none_where_the_kernels_are_cached_or_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = _Context()
    monkeypatch.setenv(fused.ENV, "auto")
    monkeypatch.setattr(fused.kernels(), "cached", lambda: False)
    with fused_start.compiled_once(ctx) as ready:
        assert not ready.is_set()
    assert ctx.started == ["bnprops-compile"]
    monkeypatch.setenv(fused.ENV, "never")
    with fused_start.compiled_once(ctx) as ready:
        assert ready.is_set()
    monkeypatch.setenv(fused.ENV, "auto")
    monkeypatch.setattr(fused.kernels(), "cached", lambda: True)  # a warm machine: nothing to compile
    with fused_start.compiled_once(ctx) as ready:
        assert ready.is_set()
    assert ctx.started == ["bnprops-compile"]
    monkeypatch.setattr(fused.kernels(), "cached", lambda: False)
    with fused_start.compiled_once(ctx, worth=False) as ready:  # too short to gain from the kernels
        assert not ready.is_set()
    assert ctx.started == ["bnprops-compile"]


def test_only_a_long_campaign_is_worth_compiling_for() -> None:
    assert not fused_start.worth_compiling(60, None)
    assert fused_start.worth_compiling(3000, None)
    assert not fused_start.worth_compiling(None, 500)
    assert fused_start.worth_compiling(None, 1_000_000)


def test_the_cache_is_cold_until_the_kernels_are_compiled_into_it(tmp_path: Path) -> None:
    probe = "from bnprops.judging import fused; print(fused.kernels().cached())"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    found = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False", f"expected an empty cache to be cold, got {found.stdout!r}"

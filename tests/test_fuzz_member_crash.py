"""A family member's call that kills its process: made in a helper process, it is a finding of its own
("crashed:SIGSEGV") with a reproducer that runs the call in a subprocess, and the fuzz worker goes on."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnprops.base import reproduction
from bnprops.base.family import spec_of
from bnprops.fuzzing import member_findings, plan
from bnprops.fuzzing.catalogue import MEMBER, Entry
from bnprops.fuzzing.explorer import Explorer
from bnprops.fuzzing.member_findings import HelperRunner, check_member, crash_signal, member_runner
from bnprops.fuzzing.relation_findings import RelationDraw
from bnprops.model.case import Case
from bnprops.mx import family as mx_family
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND, Runner

ENTRY = "int8-sym"
PLANTED = "tests.planted_members:segfaults"
#: What the reproducer's subprocess runs in the planted tests: MXNet's own handler takes the SIGSEGV (exit 255).
SEGFAULT_CALL = "import mxnet, os, signal\nos.kill(os.getpid(), signal.SIGSEGV)"

pytestmark = pytest.mark.skipif(
    mx_family.skip_reason(ENTRY, IN_PROCESS_BACKEND) is not None or IN_PROCESS_BACKEND != "onednn",
    reason=f"{ENTRY} cannot run here: {mx_family.skip_reason(ENTRY, IN_PROCESS_BACKEND)}",
)


def int8_case() -> Case:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    return Case(
        x=x,
        dy=np.zeros_like(x),
        gamma=np.array([1.5, 0.5], np.float32),
        beta=np.array([0.25, -0.5], np.float32),
        moving_mean=np.array([0.1, -0.2], np.float32),
        moving_var=np.array([1.0, 2.0], np.float32),
        eps=1e-3,
        fix_gamma=False,
        is_train=False,
        regime="reproducer",
    )


def planted_crash(entry: str, backend: str) -> Runner:
    return HelperRunner(entry, backend, function=PLANTED) if entry == ENTRY else runner_for(entry, backend)


def explorer(tmp_path: Path) -> Explorer:
    config = plan.CampaignConfig(
        out=tmp_path,
        entries=("sym",),
        backends=(IN_PROCESS_BACKEND,),
        dtypes=("float32",),
        max_examples=100,
        network_every=0,
        sequence_every=0,
        relation_every=0,
        lifecycle_every=0,
        member_every=1,
        members=(ENTRY,),
    )
    return Explorer(
        config,
        worker=0,
        targets=[("sym", IN_PROCESS_BACKEND)],
        runner_factory=planted_crash,
        deadline=None,
        stop_requested=lambda: False,
        progress=None,
    )


def example(case: Case) -> plan.Example:
    return (
        ("sym", IN_PROCESS_BACKEND),
        [case],
        RelationDraw("repeat", 0),
        None,
        None,
        (ENTRY, IN_PROCESS_BACKEND, case),
    )


def test_a_member_call_that_kills_its_helper_is_a_crashed_finding_and_the_worker_goes_on(tmp_path: Path) -> None:
    w = explorer(tmp_path)
    assert w.explore(example(int8_case()))  # found: the search would now shrink it
    sig = w.findings.hunting
    assert sig is not None and (sig.kind, sig.quantity) == (MEMBER, "int8 BatchNorm/crashed:SIGSEGV"), sig
    assert "died (exit status 255)" in w.findings.pending[sig].detail, w.findings.pending[sig].detail
    member_counts = {k: v for k, v in w.result.members[f"{ENTRY}/{IN_PROCESS_BACKEND}"].items() if k != "ms"}
    assert member_counts == {"checks": 1, "error": 1}, member_counts
    # The helper process that died is replaced: the member's own call runs there next.
    outputs = HelperRunner(ENTRY, IN_PROCESS_BACKEND)(int8_case())
    assert outputs["y"].shape == (2, 2, 3, 3)


def crash_entry(tmp_path: Path) -> Entry:
    checked = check_member((ENTRY, IN_PROCESS_BACKEND, int8_case()), runner=planted_crash(ENTRY, IN_PROCESS_BACKEND))
    [sig] = checked.signatures
    return Entry(sig, 1, checked.case, "smallest seen", checked.detail(sig))


def test_a_crash_findings_reproducer_runs_the_call_in_a_subprocess_and_persists_while_it_crashes(
    tmp_path: Path,
) -> None:
    text = member_findings.script(crash_entry(tmp_path))
    assert "quantize_model_mkldnn(" in text and "import bnprops" not in text
    # MXNet itself does not crash on this call: the finding is gone (the crash was planted in the helper).
    done = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == reproduction.GONE, done.stdout[-2000:] + done.stderr[-2000:]
    # The very same check on a call that segfaults: it persists, exit status 1.
    namespace: dict[str, object] = {"__name__": "reproducer"}
    exec(compile(text, "reproducer.py", "exec"), namespace)
    main = namespace["main"]
    assert callable(main)
    assert main(call=SEGFAULT_CALL) == reproduction.PERSISTS
    assert main(call="import os\nos.abort()") == reproduction.PERSISTS
    assert main(call="raise ValueError('an exception is not a crash')") == reproduction.GONE


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("the onednn process died (exit status -11); its stderr ends:\n", "SIGSEGV"),
        ("the onednn process died (exit status 255); its stderr ends:\n\nSegmentation fault: 11\n", "SIGSEGV"),
        ("the native worker (pid 7) died (exit status -6) running sym-v1 on ...; its stderr ends:\n", "SIGABRT"),
        ("the onednn process hung for 300 s; its stderr ends:\n", "hung"),
        ("the onednn process died (exit status 3); its stderr ends:\n", "exit 3"),
    ],
)
def test_a_crash_is_named_by_the_signal_that_killed_the_process(message: str, expected: str) -> None:
    assert crash_signal(message) == expected, f"expected {expected} for {message!r}"


def test_only_a_member_that_may_crash_goes_through_a_helper_and_planted_runners_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not isinstance(member_runner(ENTRY, IN_PROCESS_BACKEND, runner_factory=runner_for), HelperRunner)
    assert isinstance(member_runner(ENTRY, IN_PROCESS_BACKEND, runner_factory=runner_for, isolate=True), HelperRunner)
    isolated = dataclasses.replace(spec_of(ENTRY), isolated=True)
    monkeypatch.setattr(member_findings, "spec_of", lambda entry: isolated)
    assert member_runner(ENTRY, IN_PROCESS_BACKEND, runner_factory=runner_for) == HelperRunner(
        ENTRY, IN_PROCESS_BACKEND
    )

    def planted(entry: str, backend: str) -> Runner:
        return runner_for(entry, backend)

    assert not isinstance(member_runner(ENTRY, IN_PROCESS_BACKEND, runner_factory=planted), HelperRunner)

"""BatchNorm through a model's life: every check catches a 0.5% error planted in the model's gradient, the fuzz
job runs the checks as a family of their own (findings, counts, reproducers), and a release that lacks what
a check needs notes it instead of failing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import find

from bnprops.base import reproduction
from bnprops.fuzzing import campaign, lifecycle_findings, plan
from bnprops.fuzzing.catalogue import KNOWN, LIFECYCLE
from bnprops.fuzzing.report.model import Report
from bnprops.judging import lifecycle
from bnprops.judging.known_deviations import LIFECYCLE_DEVIATIONS
from bnprops.model.case import Case, Outputs
from bnprops.mx import lifecycle_kernel, mxversion
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND, Runner

ROOT = Path(__file__).resolve().parent.parent
#: The quantity each check's planted fault shows in (export-import has no plain call: its twin's dgamma).
PLANTED_IN = "dgamma"


def _half_percent(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.float64) * 1.005).astype(values.dtype)


def model_dgamma_off(run: Any) -> Any:
    """The life-cycle kernel with the model's dgamma 0.5% off in every step (and in the imported twin)."""

    def planted(spec: dict[str, Any]) -> dict[str, list[Any]]:
        ran = run(spec)
        for step in ran["steps"]:
            if PLANTED_IN in step["model"]:
                step["model"][PLANTED_IN] = _half_percent(step["model"][PLANTED_IN])
        for _, _, again in ran["twins"]:
            for name in [n for n in again if n.endswith("gamma") and "running" not in n]:
                again[name] = _half_percent(again[name])
        return ran

    return planted


@pytest.mark.parametrize("check", lifecycle.CHECKS)
def test_each_check_catches_a_half_percent_error_in_the_models_dgamma(
    check: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = lifecycle.spec(check, channels=4, seed=3)
    clean = lifecycle.unexplained(lifecycle.check(scenario))
    assert clean == [], [str(p) for p in clean]
    monkeypatch.setattr(lifecycle_kernel, "run", model_dgamma_off(lifecycle_kernel.run))
    found = lifecycle.check(scenario)
    assert any(p.what == f"differs:{PLANTED_IN}" for p in found), [p.what for p in found]


def test_a_scenario_that_raises_is_a_problem_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec: dict[str, Any]) -> dict[str, list[Any]]:
        raise RuntimeError("planted")

    monkeypatch.setattr(lifecycle_kernel, "run", broken)
    [problem] = lifecycle.check(lifecycle.spec("export-import"))
    assert problem.what == "raises:RuntimeError" and "planted" in problem.message


def test_the_recorded_deviation_explains_only_its_check_and_release(monkeypatch: pytest.MonkeyPatch) -> None:
    [d] = [d for d in LIFECYCLE_DEVIATIONS if d.what == "raises:infer_shape_partial"]
    message = "infer_shape_partial() raised: Error in operator bn: Check failed"
    monkeypatch.setattr(mxversion, "running", lambda: "1.7.0")
    assert d.explains(check="symbolic-inference", what=d.what, message=message)
    assert not d.explains(check="export-import", what=d.what, message=message)
    monkeypatch.setattr(mxversion, "running", lambda: "1.9.1")
    assert not d.explains(check="symbolic-inference", what=d.what, message=message)
    assert d.explains(check="symbolic-inference", what=d.what, message=message, scoped=False)
    assert not d.releases.contradictions()


def test_the_release_probe_of_the_recorded_deviation_follows_the_release() -> None:
    [d] = LIFECYCLE_DEVIATIONS
    status, detail = lifecycle.probe(d)
    assert status == ("present" if d.holds_in(mxversion.running()) else "absent"), detail


def test_a_check_this_release_lacks_is_noted_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(lifecycle_kernel.nn.HybridBlock, "export")
    assert "HybridBlock.export" in (lifecycle_kernel.lacks("export-import") or "")
    checked = lifecycle_findings.check_lifecycle(lifecycle.spec("export-import"), runner_factory=runner_for)
    assert checked.result == "lacks" and not checked.signatures
    assert [s["entry"] for s in lifecycle_findings.lacking()] == ["life cycle: export-import"]


def test_a_scenario_comes_up_one_example_in_every_and_draws_a_check_the_dtypes_allow() -> None:
    assert lifecycle_findings.chance(every=16) == pytest.approx(1 / 16) and lifecycle_findings.chance(every=0) == 0
    for dtypes in (("float32",), ("float16",), ("float64",)):
        scenario = find(lifecycle_findings.lifecycle_draws(dtypes), lambda _: True)
        assert scenario["check"] in lifecycle.CHECKS and lifecycle_findings.dtype_of(scenario) in dtypes


def gamma_gradient_off(entry: str, backend: str) -> Runner:
    """The plain calls the life-cycle checks make (gluon, sym) 0.5% off in dgamma; nd, the cases' entry, is clean."""
    runner = runner_for(entry, backend)
    if entry == "nd":
        return runner

    def run(case: Case) -> Outputs:
        out = dict(runner(case))
        if "dgamma" in out:
            out["dgamma"] = _half_percent(out["dgamma"])
        return out

    return run


@pytest.fixture(scope="module")
def lifecycle_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("lifecycle")
    config = plan.CampaignConfig(
        out=out,
        entries=("nd",),
        backends=(IN_PROCESS_BACKEND,),
        dtypes=("float32", "float16"),
        max_examples=300,
        time_limit=10,
        chunk_size=100,
        seed=5,
        relation_every=0,
        network_every=0,
        sequence_every=0,
        member_every=0,
        lifecycle_every=1,
    )
    return out, campaign.run(config, runner_factory=gamma_gradient_off)


def test_a_planted_fault_is_a_lifecycle_finding_with_counts_and_a_report_line(lifecycle_run) -> None:  # type: ignore[no-untyped-def]
    out, report = lifecycle_run
    found = [e for e in report.new if e.signature.kind == LIFECYCLE]
    assert found, [e.signature.describe() for e in report.new]
    assert all(e.signature.quantity.endswith("/differs:dgamma") for e in found), [e.signature.quantity for e in found]
    assert not [e for e in report.new if e.signature.kind != LIFECYCLE], "the cases' own entry has no fault"
    assert sum(c.get("failed", 0) for c in report.lifecycle_checks.values()) > 0, report.lifecycle_checks
    assert "## BatchNorm through a model's life" in (out / "report.md").read_text()
    assert "Life cycle (scenarios run" in (out / "summary.md").read_text()


def lifecycle_finding(report: Report) -> str:
    """The ident whose files stand for the first new life-cycle cause (a cause's files are its smallest example's)."""
    return next(c for c in report.causes() if c.new and c.smallest.signature.kind == LIFECYCLE).smallest.signature.ident


def test_a_lifecycle_findings_reproducer_keeps_the_contract(lifecycle_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, report = lifecycle_run
    script = out / "findings" / f"{lifecycle_finding(report)}.py"
    text = script.read_text()
    assert "import bnprops" not in text and "from bnprops" not in text
    # The fault was planted in bnprops's plain call: MXNet alone does not show it, so the reproducer says gone.
    gone = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert gone.returncode == reproduction.GONE, gone.stdout + gone.stderr
    assert gone.stdout.strip().splitlines()[-1].startswith(reproduction.GONE_LINE)
    # The same main on a model whose dgamma is 0.5% off: it persists.
    planted = tmp_path / "planted.py"
    planted.write_text(
        text.replace("if __name__ == '__main__':", "if False:")
        + textwrap.dedent(
            """
            def planted(spec):
                ran = run(spec)
                for step in ran['steps']:
                    model = step['model']
                    if 'dgamma' in model:
                        model['dgamma'] = (model['dgamma'] * 1.005).astype(model['dgamma'].dtype)
                return ran

            sys.exit(main(run_scenario=planted))
            """
        )
    )
    persists = subprocess.run([sys.executable, str(planted)], capture_output=True, text=True, timeout=300, check=False)
    assert persists.returncode == reproduction.PERSISTS, persists.stdout + persists.stderr
    assert persists.stdout.strip().splitlines()[-1].startswith(reproduction.PERSISTS_LINE)


def test_bnprops_repro_runs_a_lifecycle_findings_scenario_again(lifecycle_run) -> None:  # type: ignore[no-untyped-def]
    out, report = lifecycle_run
    ident = lifecycle_finding(report)
    entry = next(e for e in report.new if e.signature.ident == ident)
    finding = out / "findings" / f"{ident}.json"
    assert lifecycle_findings.load_scenario(finding) == lifecycle_findings.scenario_of(entry)
    proc = subprocess.run(
        [sys.executable, "-m", "bnprops", "repro", str(finding)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    # The fault was in bnprops's plain call, which repro does not plant: on MXNet alone the finding is gone.
    assert proc.returncode == 0 and "is gone" in proc.stdout, proc.stdout + proc.stderr
    assert "scenario: " in proc.stdout


def test_a_recorded_lifecycle_deviations_finding_is_known_and_its_reproducer_follows_the_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [d] = LIFECYCLE_DEVIATIONS
    problem = lifecycle.Problem(d.what, f"infer_shape_partial() raised: {d.signature}: ...", deviation=d.id)
    scenario = dict(d.reproducer())
    sig = lifecycle_findings._signature(scenario, problem)
    assert sig.kind == KNOWN and sig.deviation == d.id and sig.quantity == f"{d.check}/{d.what}"
    from bnprops.fuzzing.catalogue import Entry

    entry = Entry(sig, 1, Case.from_dict(_tiny_case()), "shrunk", "", lifecycle=lifecycle_findings.kept(scenario, []))
    text = lifecycle_findings.script(entry)
    assert f"SIGNATURE = {d.signature!r}" in text and "THRESHOLD = float('nan')" in text
    run = subprocess.run([sys.executable, "-c", text], capture_output=True, text=True, timeout=300, check=False)
    present = d.holds_in(mxversion.running())
    assert run.returncode == (reproduction.PERSISTS if present else reproduction.GONE), run.stdout + run.stderr


def _tiny_case() -> dict[str, Any]:
    from bnprops.judging.declarations import minimal

    return minimal([0.0, 1.0], "float32").to_dict()


def test_the_fuzz_cli_takes_lifecycle() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bnprops", "fuzz", "--help"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert "--lifecycle N" in proc.stdout
    with pytest.raises(plan.UsageError, match="lifecycle_every"):
        plan.CampaignConfig(out=ROOT, max_examples=1, lifecycle_every=-1)


def test_train_evaluate_train_judges_batchnorm_on_the_input_it_received(monkeypatch: pytest.MonkeyPatch) -> None:
    # As mxnet-mkl 1.3/1.4 under NaiveEngine (apache/mxnet#15089): after a convolution's first inference call,
    # its later calls compute from other weights, so a second call is not what BatchNorm received.
    made = lifecycle_kernel._model

    def drifting(*args: Any) -> Any:
        net, conv, norm = made(*args)
        inner = conv.forward

        def forward(x: Any, *rest: Any) -> Any:
            out = inner(x, *rest)
            if not lifecycle_kernel.mx.autograd.is_recording():
                conv.weight.set_data(conv.weight.data() * 1.1)
            return out

        monkeypatch.setattr(conv, "forward", forward)
        return net, conv, norm

    monkeypatch.setattr(lifecycle_kernel, "_model", drifting)
    scenario = lifecycle.spec("train-evaluate-train", channels=4, hybridize=False, seed=3)
    assert lifecycle.check(scenario) == []
    monkeypatch.setattr(lifecycle_kernel, "run", model_dgamma_off(lifecycle_kernel.run))
    assert any(p.what == f"differs:{PLANTED_IN}" for p in lifecycle.check(scenario))


def test_a_findings_reproducer_threshold_is_its_own_signatures_worst_difference() -> None:
    scenario = lifecycle.spec("train-evaluate-train", channels=4)
    problems = [lifecycle.Problem("differs:y", "step 1: y", error=4.0), lifecycle.Problem("differs:dgamma", "g", 38.0)]
    checked = lifecycle_findings.LifecycleCheck(scenario, "failed", tuple(problems))
    y = lifecycle_findings._signature(scenario, problems[0])
    assert checked.showing(y) == problems[:1]
    assert '"error": 4.0' in lifecycle_findings.kept(scenario, checked.showing(y))

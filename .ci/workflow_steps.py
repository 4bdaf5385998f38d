#!/usr/bin/env python3
"""Run a GitHub workflow's jobs here, step by step, the way a runner would.

Container-based runners (act and the like) cannot pull their images on this machine, so this script
executes each job's own ``run:`` steps, in order, with the same commands, matrix and artifact folders:

* ``actions/checkout``        a fresh ``git clone`` of the repository into the job instance's work folder
* ``actions/setup-python``    checks that ``python3 --version`` is the requested version (no install)
* ``actions/upload-artifact`` copies ``with.path`` into ``OUT/night-N/artifacts/NAME``
* ``actions/download-artifact`` copies the artifacts named by ``with.name``/``with.pattern`` into ``with.path``
* ``run:``                    ``bash --noprofile --norc -eo pipefail -c`` in the work folder, with the
  workflow/job/step env, ``GITHUB_STEP_SUMMARY`` (one file per job), ``RUNNER_TEMP``, ``GITHUB_WORKSPACE``
  and ``${{ ... }}`` substituted

A fake ``gh`` on PATH answers the two calls the nightly workflow makes (``gh run list ... --json databaseId``:
the previous night's id; ``gh run download ID --name NAME --dir DIR``: that night's artifact). ``--nights 2``
runs the whole workflow twice, the second night restoring the first's artifacts.

Output: progress per step on stdout, ``OUT/summary.json`` (per night, per job: status and steps with exit
status and seconds), each job instance's folder ``OUT/night-N/jobs/ID`` (work/, temp/, step-summary.md,
one log per step). Exit status: 0 when every job that ran succeeded, 1 when one failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
DEFAULT_WORKFLOW = HERE.parent.parent / ".github" / "workflows" / "nightly-fuzz.yml"
DEFAULT_EVENT = 'schedule:"17 2 * * *"'
FAKE_TOKEN = "ghs_workflow_steps_fake_token"


class UsageError(Exception):
    """A bad argument or a workflow this runner cannot run: exit status 2."""


# --------------------------------------------------------------------------------------------------
# Expressions: the subset of GitHub's expression language that workflows here use.
# --------------------------------------------------------------------------------------------------


class ExpressionError(ValueError):
    pass


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op>==|!=|&&|\|\||<=|>=|[()!<>,])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*(?:\.(?:[A-Za-z_][A-Za-z0-9_-]*|\*))*))"
)

STATUS_FUNCTIONS = ("always", "success", "failure", "cancelled")


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"cannot read the expression at {text[pos:]!r} (in {text!r})")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


@dataclass
class Context:
    """What an expression can read: the contexts by name, and the status functions' answers."""

    values: dict[str, Any]
    # success(): nothing failed so far (the job's earlier steps, or the jobs in needs); failure(): the opposite
    succeeded: bool = True


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if isinstance(node, Mapping):
            # GitHub's property access is case-insensitive; a missing property is null, not an error
            match = next((v for k, v in node.items() if str(k).lower() == part.lower()), None)
            node = match
        else:
            return None
    return node


def _to_number(v: Any) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        if v.strip() == "":
            return 0.0
        try:
            return float(v.strip())
        except ValueError:
            return float("nan")
    return float("nan")


def loose_equal(a: Any, b: Any) -> bool:
    """GitHub's ==: strings compare case-insensitively; values of different types are compared as numbers."""
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    if a is None and b is None:
        return True
    if type(a) is type(b) and not isinstance(a, int | float):
        return bool(a == b)
    return _to_number(a) == _to_number(b)


def truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v != 0 and v == v
    if isinstance(v, str):
        return v != ""
    return True


class _Parser:
    def __init__(self, text: str, ctx: Context | None) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.ctx = ctx  # None: parse only (check the syntax)
        self.functions: set[str] = set()

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise ExpressionError(f"expected {value or 'a value'} in {self.text!r}, got {tok[1] if tok else 'the end'}")
        self.pos += 1
        return tok

    def parse(self) -> Any:
        v = self.or_()
        if self.peek() is not None:
            raise ExpressionError(f"unexpected {self.peek()[1]!r} in {self.text!r}")  # type: ignore[index]
        return v

    # || and && return one of their operands, as GitHub's do (so `inputs.x || 'default'` works)
    def or_(self) -> Any:
        v = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            w = self.and_()
            v = v if truthy(v) else w
        return v

    def and_(self) -> Any:
        v = self.comparison()
        while self.peek() == ("op", "&&"):
            self.take()
            w = self.comparison()
            v = w if truthy(v) else v
        return v

    def comparison(self) -> Any:
        v = self.unary()
        while (tok := self.peek()) is not None and tok[1] in ("==", "!=", "<", ">", "<=", ">="):
            op = self.take()[1]
            w = self.unary()
            if op == "==":
                v = loose_equal(v, w)
            elif op == "!=":
                v = not loose_equal(v, w)
            else:
                x, y = _to_number(v), _to_number(w)
                v = {"<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]
        return v

    def unary(self) -> Any:
        if self.peek() == ("op", "!"):
            self.take()
            return not truthy(self.unary())
        return self.primary()

    def primary(self) -> Any:
        kind, value = self.take()
        if kind == "str":
            return value[1:-1].replace("''", "'")
        if kind == "num":
            return float(value) if "." in value else int(value)
        if (kind, value) == ("op", "("):
            v = self.or_()
            self.take(")")
            return v
        if kind != "name":
            raise ExpressionError(f"unexpected {value!r} in {self.text!r}")
        if self.peek() == ("op", "("):
            return self.call(value)
        lowered = value.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered == "null":
            return None
        return None if self.ctx is None else _lookup(self.ctx.values, value)

    def call(self, name: str) -> Any:
        self.take("(")
        args: list[Any] = []
        while self.peek() != ("op", ")"):
            args.append(self.or_())
            if self.peek() == ("op", ","):
                self.take()
        self.take(")")
        fn = name.lower()
        self.functions.add(fn)
        if fn in STATUS_FUNCTIONS:
            if args:
                raise ExpressionError(f"{name}() takes no argument (in {self.text!r})")
            if self.ctx is None:
                return True
            return {
                "always": True,
                "success": self.ctx.succeeded,
                "failure": not self.ctx.succeeded,
                "cancelled": False,
            }[fn]
        if fn in ("contains", "startswith", "endswith") and len(args) == 2:
            a, b = ("" if x is None else str(x).lower() for x in args)
            return {"contains": b in a, "startswith": a.startswith(b), "endswith": a.endswith(b)}[fn]
        if fn == "format" and args:
            return re.sub(r"\{(\d+)\}", lambda m: to_string(args[int(m.group(1)) + 1]), str(args[0]))
        raise ExpressionError(f"unsupported function {name}() in {self.text!r}")


def strip_braces(text: str) -> str:
    text = text.strip()
    if text.startswith("${{") and text.endswith("}}"):
        return text[3:-2].strip()
    return text


def evaluate(expression: str, ctx: Context) -> Any:
    return _Parser(strip_braces(expression), ctx).parse()


def check_syntax(expression: str) -> set[str]:
    """Parse without evaluating; returns the functions called. Raises ExpressionError."""
    parser = _Parser(strip_braces(expression), None)
    parser.parse()
    return parser.functions


def evaluate_if(condition: Any, ctx: Context) -> bool:
    """A job's or step's `if:`: without a status function it means `success() && (...)`, as on GitHub."""
    if condition is None:
        return ctx.succeeded
    if isinstance(condition, bool):
        return condition and ctx.succeeded
    text = strip_braces(str(condition))
    if not check_syntax(text) & set(STATUS_FUNCTIONS):
        text = f"success() && ({text})"
    return truthy(evaluate(text, ctx))


def to_string(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, dict | list):
        return json.dumps(v)
    return str(v)


_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def substitute(text: str, ctx: Context) -> str:
    """Replace every ${{ expr }} in text by its value, as the runner does before the shell sees it."""
    return _TEMPLATE.sub(lambda m: to_string(evaluate(m.group(1), ctx)), text)


def template_expressions(text: str) -> list[str]:
    return [m.group(1).strip() for m in _TEMPLATE.finditer(text)]


# --------------------------------------------------------------------------------------------------
# Jobs: order by needs, matrix expansion.
# --------------------------------------------------------------------------------------------------


def needs_of(job: Mapping[str, Any]) -> list[str]:
    needs = job.get("needs") or []
    return [needs] if isinstance(needs, str) else list(needs)


def job_order(jobs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Jobs in an order where every job comes after its needs (file order among equals)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in jobs:
            raise UsageError(f"job {path[-1]!r} needs {name!r}, which the workflow does not define")
        if name in visiting:
            raise UsageError(f"jobs need each other in a cycle: {' -> '.join((*path, name))}")
        visiting.add(name)
        for dep in needs_of(jobs[name]):
            visit(dep, (*path, name))
        visiting.discard(name)
        order.append(name)

    for name in jobs:
        visit(name, (name,))
    return order


def expand_matrix(matrix: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The matrix's combinations in GitHub's order (first key outermost), with include/exclude."""
    if not matrix:
        return [{}]
    if isinstance(matrix, str):
        raise UsageError(f"a matrix given as an expression ({matrix!r}) is not supported")
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"matrix axis {key!r} must be a non-empty list, got {values!r}")
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] if axes else []
    for ex in matrix.get("exclude") or []:
        combos = [c for c in combos if not all(loose_equal(c.get(k), v) for k, v in ex.items())]
    for inc in matrix.get("include") or []:
        # an include that matches existing combinations on the original axes extends them; else it is new
        matched = False
        for c in combos:
            if all(loose_equal(c[k], v) for k, v in inc.items() if k in axes):
                c.update({k: v for k, v in inc.items() if k not in axes})
                matched = True
        if not matched:
            combos.append(dict(inc))
    return combos or [{}]


def instance_id(job: str, combo: Mapping[str, Any]) -> str:
    suffix = "-".join(f"{k}-{to_string(v)}" for k, v in combo.items())
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{job}-{suffix}" if suffix else job)


# --------------------------------------------------------------------------------------------------
# Artifacts and the fake gh.
# --------------------------------------------------------------------------------------------------


def night_dir(out: Path, night: int) -> Path:
    return out / f"night-{night}"


def _copy_into(src: Path, dest: Path, *, hidden: bool = True) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        ignore = None if hidden else shutil.ignore_patterns(".*")
        shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True, ignore=ignore)
    elif hidden or not src.name.startswith("."):
        shutil.copy2(src, dest / src.name)


def upload_artifact(
    store: Path, name: str, workspace: Path, paths: str, if_no_files: str = "warn", *, hidden: bool = False
) -> str:
    """Copy paths (one per line, relative to the workspace) into store/NAME; returns a message.

    As upload-artifact@v4 (since 4.4) does, files and folders whose name starts with a dot are left out
    unless include-hidden-files is true. Raises RuntimeError where it fails: a name uploaded twice, or no
    files with if-no-files-found: error.
    """
    if not name:
        name = "artifact"
    dest = store / name
    if dest.exists():
        raise RuntimeError(f"an artifact named {name!r} was already uploaded in this run (v4 refuses duplicates)")
    sources = [workspace / p.strip() for p in paths.splitlines() if p.strip()]
    for p in sources:
        if any(ch in str(p) for ch in "*?["):
            raise RuntimeError(f"glob paths are not supported by this runner: {p}")
    found = [p for p in sources if p.exists() and (p.is_file() or any(p.iterdir()))]
    if not found:
        msg = f"no files found at {paths.strip()!r}: no artifact uploaded"
        if if_no_files == "error":
            raise RuntimeError(msg)
        return ("warning: " if if_no_files == "warn" else "") + msg
    for p in found:
        _copy_into(p, dest, hidden=hidden)
    files = sum(1 for f in dest.rglob("*") if f.is_file())
    left_out = 0 if hidden else sum(1 for p in found if p.is_dir() for f in p.rglob(".*"))
    return f"uploaded artifact {name!r}: {files} files" + (f" ({left_out} hidden left out)" if left_out else "")


def download_artifacts(
    store: Path, workspace: Path, *, name: str | None, pattern: str | None, path: str | None, merge: bool = False
) -> str:
    """download-artifact@v4: by name into path; by pattern (or all) one sub-folder per artifact."""
    dest = workspace / (path or ".")
    available = sorted(p.name for p in store.iterdir()) if store.exists() else []
    if name:
        if name not in available:
            raise RuntimeError(f"artifact {name!r} not found (this run has: {', '.join(available) or 'none'})")
        _copy_into(store / name, dest)
        return f"downloaded {name!r} into {path or '.'}"
    chosen = [a for a in available if pattern is None or fnmatch.fnmatchcase(a, pattern)]
    for a in chosen:
        _copy_into(store / a, dest if merge else dest / a)
    return f"downloaded {len(chosen)} artifacts ({', '.join(chosen) or 'none'}) into {path or '.'}"


def completed_runs(out: Path, night: int, branch: str | None) -> list[int]:
    """The completed earlier nights (on the branch, when given), newest first: what `gh run list` lists."""
    runs = []
    for n in range(night - 1, 0, -1):
        meta = night_dir(out, n) / "run.json"
        if not meta.exists():
            continue
        info = json.loads(meta.read_text())
        if info.get("completed") and (branch is None or info.get("branch") == branch):
            runs.append(n)
    return runs


def fake_gh(argv: list[str], out: Path, night: int) -> int:
    """The two gh calls of the nightly workflow; anything else is refused (exit 2) so it shows."""
    if not os.environ.get("GH_TOKEN") and not os.environ.get("GITHUB_TOKEN"):
        print("gh: in a GitHub Actions workflow, set the GH_TOKEN environment variable", file=sys.stderr)
        return 4
    parser = argparse.ArgumentParser(prog="gh", add_help=False, exit_on_error=False)
    parser.add_argument("group")
    parser.add_argument("command")
    parser.add_argument("run_id", nargs="?")
    for opt in ("--workflow", "--branch", "--status", "--limit", "--json", "--jq", "--name", "--dir", "--repo"):
        parser.add_argument(opt)
    try:
        args = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:
        print(f"gh (fake): cannot parse {argv}: {e}", file=sys.stderr)
        return 2
    if (args.group, args.command) == ("run", "list"):
        limit = int(args.limit or 20)
        rows = [{"databaseId": n} for n in completed_runs(out, night, args.branch)][:limit]
        if args.json != "databaseId":
            print(f"gh (fake): only --json databaseId is implemented, got {args.json!r}", file=sys.stderr)
            return 2
        if args.jq is None:
            print(json.dumps(rows))
        elif args.jq.replace(" ", "") in (".[0].databaseId//empty", ".[0].databaseId"):
            if rows:
                print(rows[0]["databaseId"])
            elif "empty" not in args.jq:
                print("null")
        elif args.jq.replace(" ", "") == ".[].databaseId":
            for row in rows:
                print(row["databaseId"])
        else:
            print(f"gh (fake): jq filter {args.jq!r} is not implemented", file=sys.stderr)
            return 2
        return 0
    if (args.group, args.command) == ("run", "download"):
        if not args.run_id or not args.name:
            print("gh (fake): run download needs RUN_ID and --name", file=sys.stderr)
            return 2
        try:
            run = int(args.run_id)
        except ValueError:
            print(f"gh (fake): run id {args.run_id!r} is not a number", file=sys.stderr)
            return 1
        src = night_dir(out, run) / "artifacts" / args.name
        if not src.is_dir():
            print(f"no artifact matches any of the names or patterns provided ({args.name})", file=sys.stderr)
            return 1
        _copy_into(src, Path(args.dir or "."))
        return 0
    print(f"gh (fake): 'gh {' '.join(argv)}' is not implemented", file=sys.stderr)
    return 2


def install_fake_gh(out: Path) -> Path:
    """A bin folder with `gh` calling this script's fake (the night comes from WORKFLOW_STEPS_NIGHT)."""
    bin_dir = out / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    gh = bin_dir / "gh"
    gh.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE}" --fake-gh "$@"\n')
    gh.chmod(0o755)
    return bin_dir


# --------------------------------------------------------------------------------------------------
# Running a night.
# --------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    name: str
    status: str  # success, failure, skipped
    exit: int | None
    seconds: float
    note: str = ""
    log: str | None = None


@dataclass
class InstanceResult:
    id: str
    name: str
    matrix: dict[str, Any]
    status: str
    seconds: float
    steps: list[StepResult] = field(default_factory=list)
    step_summary: str | None = None


@dataclass
class Options:
    workflow: Path
    repo: Path
    out: Path
    event: dict[str, Any]
    event_name: str
    inputs: dict[str, str]
    shards: int | None
    show_output: bool
    print: Callable[[str], None] = print


def _clean_env(fake_bin: Path) -> dict[str, str]:
    env = dict(os.environ)
    # the caller's virtualenv must not leak into the steps: they make their own
    venv = env.pop("VIRTUAL_ENV", None)
    for var in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(var, None)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not (venv and p.startswith(venv))]
    env["PATH"] = os.pathsep.join([str(fake_bin), *path])
    env.update({"CI": "true", "GITHUB_ACTIONS": "true"})
    return env


def step_label(step: Mapping[str, Any], index: int, ctx: Context) -> str:
    if "name" in step:
        return substitute(str(step["name"]), ctx)
    if "uses" in step:
        return f"Run {step['uses']}"
    first = str(step.get("run", "")).strip().splitlines()
    return f"Run {first[0][:60]}" if first else f"step {index}"


def run_shell(script: str, cwd: Path, env: dict[str, str], log: Path, timeout: float | None, show: bool) -> int | None:
    """Run script under bash -eo pipefail; returns the exit status (None on timeout, the group killed)."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout ends every child too
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            timed_out = _pump(proc, fh, deadline, show)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)  # the runner stops (Ctrl-C, SIGTERM): the step stops with it
            raise
        proc.wait()
        return None if timed_out else proc.returncode


def _pump(proc: subprocess.Popen[bytes], fh: Any, deadline: float | None, show: bool) -> bool:
    """Copy the step's output to its log (and the console) until it ends; True if its deadline passed."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            wait = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
            if wait <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                return True
            if sel.select(timeout=wait):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    return False
                fh.write(chunk)
                fh.flush()
                if show:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()


def tail(path: Path, n: int) -> list[str]:
    if n <= 0:
        return []
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def run_instance(
    opts: Options,
    night: int,
    job_key: str,
    job: Mapping[str, Any],
    combo: dict[str, Any],
    base_values: dict[str, Any],
    base_env: dict[str, str],
    workflow_env: dict[str, str],
) -> InstanceResult:
    iid = instance_id(job_key, combo)
    root = night_dir(opts.out, night) / "jobs" / iid
    if root.exists():
        shutil.rmtree(root)
    work, temp, logs = root / "work", root / "temp", root / "logs"
    # the workspace exists, empty, before any step (checkout clones into it)
    for d in (work, temp, logs):
        d.mkdir(parents=True)
    summary_file = root / "step-summary.md"
    summary_file.touch()
    store = night_dir(opts.out, night) / "artifacts"
    store.mkdir(parents=True, exist_ok=True)

    values = {**base_values, "matrix": combo, "runner": {"temp": str(temp), "os": "Linux"}}
    env_ctx: dict[str, str] = dict(workflow_env)  # the env context: the workflow's, then the job's, the step's
    ctx = Context(values={**values, "env": env_ctx})
    for k, v in (job.get("env") or {}).items():
        env_ctx[k] = substitute(to_string(v), ctx)
    name = substitute(str(job.get("name", job_key)), ctx)
    label = name if name == job_key else f"{job_key} ({name})"
    result = InstanceResult(id=iid, name=name, matrix=combo, status="success", seconds=0.0)
    t_job = time.monotonic()
    deadline = None
    if job.get("timeout-minutes") is not None:
        deadline = t_job + float(job["timeout-minutes"]) * 60
    ctx.succeeded = True
    opts.print(f"[night {night}] {label}: job started in {root}")

    for index, step in enumerate(job.get("steps") or [], 1):
        step_env = dict(env_ctx)
        sctx = Context(values={**values, "env": step_env}, succeeded=ctx.succeeded)
        for k, v in (step.get("env") or {}).items():
            step_env[k] = substitute(to_string(v), sctx)
        title = step_label(step, index, sctx)
        if not evaluate_if(step.get("if"), sctx):
            result.steps.append(StepResult(title, "skipped", None, 0.0))
            opts.print(f"[night {night}] {label} | {title}: skipped")
            continue
        t0 = time.monotonic()
        log = logs / f"{index:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', title).strip('-')[:50]}.log"
        code: int | None = 0
        note = ""
        try:
            if "uses" in step:
                code, note = run_action(opts, str(step["uses"]), step.get("with") or {}, sctx, work, store)
                log.write_text(note + "\n")
            else:
                env = {
                    **base_env,
                    **step_env,
                    "GITHUB_WORKSPACE": str(work),
                    "RUNNER_TEMP": str(temp),
                    "GITHUB_STEP_SUMMARY": str(summary_file),
                    "GITHUB_JOB": job_key,
                    "WORKFLOW_STEPS_NIGHT": str(night),
                    "WORKFLOW_STEPS_OUT": str(opts.out.resolve()),
                }
                script = substitute(str(step["run"]), sctx)
                cwd = work / substitute(str(step.get("working-directory", ".")), sctx)
                if not cwd.is_dir():
                    raise RuntimeError(f"the working directory {cwd} does not exist (did checkout run?)")
                timeout = None
                if step.get("timeout-minutes") is not None:
                    timeout = float(step["timeout-minutes"]) * 60
                if deadline is not None:
                    left = deadline - time.monotonic()
                    timeout = left if timeout is None else min(timeout, left)
                code = run_shell(script, cwd, env, log, timeout, opts.show_output)
                if code is None:
                    note = "timed out (the job's or step's timeout-minutes)"
        except (RuntimeError, OSError, subprocess.SubprocessError, ExpressionError) as e:
            code, note = 1, f"error: {e}"
            log.write_text(note + "\n")
        seconds = time.monotonic() - t0
        ok = code == 0
        if not ok and step.get("continue-on-error") is True:
            note = (note + "; " if note else "") + "continue-on-error"
            ok = True
        status = "success" if code == 0 else "failure"
        result.steps.append(StepResult(title, status, code, round(seconds, 1), note, str(log)))
        shown = "timed out" if code is None else f"exit {code}"
        opts.print(f"[night {night}] {label} | {title}: {shown} in {seconds:.1f}s" + (f" ({note})" if note else ""))
        for line in tail(log, 0 if "uses" in step else 3 if code == 0 else 25):
            opts.print(f"    {line}")
        if not ok:
            ctx.succeeded = False
            if code is None and deadline is not None:
                deadline = time.monotonic() + 300  # a timed-out job still runs its always() steps: a grace period
    result.seconds = round(time.monotonic() - t_job, 1)
    result.status = "success" if ctx.succeeded else "failure"
    result.step_summary = str(summary_file)
    opts.print(f"[night {night}] {label}: job {result.status} in {result.seconds:.1f}s")
    return result


def run_action(
    opts: Options, uses: str, with_: Mapping[str, Any], ctx: Context, work: Path, store: Path
) -> tuple[int, str]:
    action, _, _version = uses.partition("@")
    w = {k: substitute(to_string(v), ctx) for k, v in with_.items()}
    if action == "actions/checkout":
        proc = subprocess.run(
            ["git", "clone", "--quiet", str(opts.repo), str(work)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            return proc.returncode, f"git clone failed: {proc.stderr.strip()}"
        head = subprocess.run(["git", "-C", str(work), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return 0, f"cloned {opts.repo} at {head.stdout.strip()}"
    if action == "actions/setup-python":
        wanted = w.get("python-version", "")
        proc = subprocess.run(["python3", "--version"], capture_output=True, text=True, check=False)
        have = (proc.stdout or proc.stderr).strip().removeprefix("Python ")
        if wanted and not (have == wanted or have.startswith(wanted + ".")):
            return 1, f"python3 is {have}, the workflow asks for {wanted} (this runner installs nothing)"
        return 0, f"python3 {have} (asked for {wanted or 'any'})"
    if action == "actions/upload-artifact":
        if "path" not in w:
            return 1, "upload-artifact needs with.path"
        try:
            return 0, upload_artifact(
                store,
                w.get("name", ""),
                work,
                w["path"],
                w.get("if-no-files-found", "warn"),
                hidden=w.get("include-hidden-files", "false").lower() == "true",
            )
        except RuntimeError as e:
            return 1, str(e)
    if action == "actions/download-artifact":
        try:
            return 0, download_artifacts(
                store,
                work,
                name=w.get("name") or None,
                pattern=w.get("pattern") or None,
                path=w.get("path") or None,
                merge=w.get("merge-multiple", "false").lower() == "true",
            )
        except RuntimeError as e:
            return 1, str(e)
    return 1, f"action {uses} is not supported by this runner"


def run_night(opts: Options, workflow: Mapping[str, Any], night: int) -> dict[str, Any]:
    ndir = night_dir(opts.out, night)
    if ndir.exists():
        shutil.rmtree(ndir)
    ndir.mkdir(parents=True)
    branch = repo_branch(opts.repo)
    (ndir / "run.json").write_text(json.dumps({"night": night, "branch": branch, "completed": False}))
    fake_bin = install_fake_gh(opts.out)
    base_env = _clean_env(fake_bin)
    github = {
        "event_name": opts.event_name,
        "event": {**opts.event, "inputs": dict(opts.inputs)} if opts.inputs else dict(opts.event),
        "ref_name": branch,
        "ref": f"refs/heads/{branch}",
        "token": FAKE_TOKEN,
        "run_id": str(night),
        "run_number": str(night),
        "workflow": workflow.get("name", ""),
    }
    jobs: Mapping[str, Mapping[str, Any]] = workflow.get("jobs") or {}
    wf_env_ctx: dict[str, str] = {}
    wctx = Context(values={"github": github, "env": wf_env_ctx})
    for k, v in (workflow.get("env") or {}).items():
        wf_env_ctx[k] = substitute(to_string(v), wctx)
    if opts.shards is not None and "SHARDS" in wf_env_ctx:
        wf_env_ctx["SHARDS"] = str(opts.shards)

    t0 = time.monotonic()
    results: dict[str, Any] = {}
    for job_key in job_order(jobs):
        job = jobs[job_key]
        needs = needs_of(job)
        needs_ctx = {n: {"result": results[n]["status"]} for n in needs}
        ctx = Context(
            values={"github": github, "needs": needs_ctx, "env": wf_env_ctx, "inputs": opts.inputs},
            succeeded=all(results[n]["status"] == "success" for n in needs),
        )
        try:
            run_it = evaluate_if(job.get("if"), ctx)
        except ExpressionError as e:
            raise UsageError(f"job {job_key}: {e}") from e
        if not run_it:
            results[job_key] = {"status": "skipped", "instances": []}
            opts.print(f"[night {night}] {job_key}: skipped (if: {job.get('if', 'success()')})")
            continue
        matrix = dict((job.get("strategy") or {}).get("matrix") or {})
        if opts.shards is not None and "shard" in matrix:
            matrix["shard"] = list(range(1, opts.shards + 1))
        fail_fast = (job.get("strategy") or {}).get("fail-fast", True) is not False
        instances: list[InstanceResult] = []
        for combo in expand_matrix(matrix):
            if fail_fast and any(i.status == "failure" for i in instances):
                instances.append(InstanceResult(instance_id(job_key, combo), job_key, combo, "cancelled", 0.0))
                continue
            values = {"github": github, "needs": needs_ctx, "inputs": opts.inputs}
            instances.append(run_instance(opts, night, job_key, job, combo, values, base_env, wf_env_ctx))
        statuses = {i.status for i in instances}
        status = "failure" if "failure" in statuses else "cancelled" if "cancelled" in statuses else "success"
        results[job_key] = {"status": status, "instances": [_as_dict(i) for i in instances]}
    wall = round(time.monotonic() - t0, 1)
    (ndir / "run.json").write_text(json.dumps({"night": night, "branch": branch, "completed": True}))
    return {"night": night, "wall_seconds": wall, "jobs": results}


def _as_dict(i: InstanceResult) -> dict[str, Any]:
    return {
        "id": i.id,
        "name": i.name,
        "matrix": i.matrix,
        "status": i.status,
        "seconds": i.seconds,
        "step_summary": i.step_summary,
        "steps": [s.__dict__ for s in i.steps],
    }


def repo_branch(repo: Path) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "main"


def iter_job_steps(workflow: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    for key, job in (workflow.get("jobs") or {}).items():
        for step in job.get("steps") or []:
            yield key, job, step


def load_workflow(path: Path) -> dict[str, Any]:
    import yaml  # only the workflow parsing needs PyYAML (the fake gh does not)

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read the workflow {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
        raise UsageError(f"{path} is not a workflow (no jobs)")
    # YAML 1.1 reads the key `on` as True
    if True in data:
        data["on"] = data.pop(True)
    return data


def parse_event(text: str, workflow: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    triggers = workflow.get("on") or {}
    if isinstance(triggers, str | list):
        triggers = {t: None for t in ([triggers] if isinstance(triggers, str) else triggers)}
    kind, _, arg = text.partition(":")
    arg = arg.strip().strip("\"'")
    if kind not in triggers:
        raise UsageError(f"the workflow has no {kind!r} trigger (it has: {', '.join(map(str, triggers))})")
    if kind == "schedule":
        crons = [s.get("cron") for s in triggers["schedule"] or []]
        if arg not in crons:
            raise UsageError(f"no schedule {arg!r} in the workflow (it has: {', '.join(map(repr, crons))})")
        return kind, {"schedule": arg}
    if arg:
        raise UsageError(f"--event {kind} takes no argument")
    return kind, {}


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--fake-gh"]:
        return fake_gh(argv[1:], Path(os.environ["WORKFLOW_STEPS_OUT"]), int(os.environ["WORKFLOW_STEPS_NIGHT"]))
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Runs each job's steps in a clean clone, with a fake gh.",
        epilog="example: python3 .ci/workflow_steps.py --nights 2 --seconds 60 --shards 2 --out /tmp/nightly",
    )
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="workflow file (default: %(default)s)")
    parser.add_argument(
        "--event",
        default=DEFAULT_EVENT,
        help=f'the trigger: schedule:"CRON" or workflow_dispatch (default: {DEFAULT_EVENT})',
    )
    parser.add_argument("--input", action="append", default=[], metavar="KEY=VALUE", help="github.event.inputs.KEY")
    parser.add_argument("--seconds", type=int, help="the workflow_dispatch input `seconds` (exploration per shard)")
    parser.add_argument("--shards", type=int, help="override the shard matrix (and env SHARDS) with 1..K")
    parser.add_argument("--nights", type=int, default=1, help="run the workflow this many times in a row (default 1)")
    parser.add_argument("--repo", type=Path, help="repository to clone (default: the one holding this script)")
    parser.add_argument("--out", type=Path, default=Path("workflow-steps-out"), help="output folder (%(default)s)")
    parser.add_argument("--show-output", action="store_true", help="stream every step's output, not just its tail")
    args = parser.parse_args(argv)
    try:
        if args.nights < 1:
            raise UsageError("--nights must be at least 1")
        if args.shards is not None and args.shards < 1:
            raise UsageError("--shards must be at least 1")
        if args.seconds is not None and args.seconds < 1:
            raise UsageError("--seconds must be at least 1")
        repo = (args.repo or HERE.parent.parent).resolve()
        if not (repo / ".git").exists() and not (repo / "HEAD").exists():
            raise UsageError(f"{repo} is not a git repository")
        workflow = load_workflow(args.workflow)
        event_name, event = parse_event(args.event, workflow)
        inputs: dict[str, str] = {}
        if event_name == "workflow_dispatch":
            declared = (workflow["on"].get("workflow_dispatch") or {}).get("inputs") or {}
            inputs = {k: to_string(v.get("default", "")) for k, v in declared.items()}
        for item in args.input:
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise UsageError(f"--input wants KEY=VALUE, got {item!r}")
            inputs[key] = value
        if args.seconds is not None:
            inputs["seconds"] = str(args.seconds)
        if args.shards is not None and not any(
            "shard" in ((j.get("strategy") or {}).get("matrix") or {}) for j in workflow["jobs"].values()
        ):
            raise UsageError("--shards: no job of the workflow has a `shard` matrix")
        job_order(workflow["jobs"])
    except UsageError as e:
        print(f"workflow_steps: {e}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    previous_handler = signal.signal(signal.SIGTERM, _terminate)  # `kill RUNNER` ends the running step too
    try:
        return _run(args, opts_of(args, repo, out, event, event_name, inputs), workflow)
    except KeyboardInterrupt:
        print("workflow_steps: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def opts_of(
    args: argparse.Namespace, repo: Path, out: Path, event: dict[str, Any], event_name: str, inputs: dict[str, str]
) -> Options:
    return Options(args.workflow, repo, out, event, event_name, inputs, args.shards, args.show_output)


def _run(args: argparse.Namespace, opts: Options, workflow: dict[str, Any]) -> int:
    repo, out, event, event_name, inputs = opts.repo, opts.out, opts.event, opts.event_name, opts.inputs
    nights: list[dict[str, Any]] = []
    summary = {
        "workflow": str(args.workflow),
        "repo": str(repo),
        "event": {"name": event_name, **event},
        "inputs": inputs,
        "nights": nights,
    }
    for night in range(1, args.nights + 1):
        try:
            nights.append(run_night(opts, workflow, night))
        except UsageError as e:
            print(f"workflow_steps: {e}", file=sys.stderr)
            return 2
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        statuses = ", ".join(f"{k} {v['status']}" for k, v in nights[-1]["jobs"].items())
        print(f"[night {night}] done in {nights[-1]['wall_seconds']:.0f}s: {statuses}")
    print(f"summary: {out / 'summary.json'}")
    failed = any(j["status"] in ("failure", "cancelled") for n in nights for j in n["jobs"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

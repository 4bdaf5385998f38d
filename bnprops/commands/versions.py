"""``bnprops versions``: which deviations are in which MXNet release, as a matrix of deviation x release.

Per release (mx.releases makes its environment), two processes run there with this source tree:
the recorded deviations' reproducers (judging.release_probe: present / absent / not applicable) and a
fuzz campaign of the given budget (``python -m bnprops fuzz``, the same catalogue as ever, so every
distinct deviation is found, not only the first).  The matrix has a row per recorded deviation and per
new finding (grouped by kind and quantity across releases; each release's own reproducers are in its
folder), and notes the entry points and backends each release lacks.  ``versions.md`` and
``versions.json`` are written atomically into the output folder after every release, so an interrupted
run still leaves the matrix of what ran.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from bnprops.base import atomic
from bnprops.judging import deviations
from bnprops.mx import mxversion, releases

VERSIONS_FORMAT = "bnprops.versions/2"
SUITE_TIMEOUT_S = 3600
NOT_RUN = "not run"
#: A new finding the campaign did not hit in a release: a fuzz campaign is a sample, so not "absent".
NOT_FOUND = "not found"
#: A deviation not probed in a build (a training sequence): what its declaration's release scope says.
RECORDED_SCOPE = "not probed, scope"

Progress = Callable[[str], None]


@dataclasses.dataclass
class ReleaseResult:
    """Everything one release contributed: its environment, its probes, its campaign, and how long each took."""

    release: str
    install: dict[str, Any]
    probe: dict[str, Any] | None = None
    fuzz: dict[str, Any] | None = None
    pytest: dict[str, Any] | None = None
    probe_s: float = 0.0
    problems: list[str] = dataclasses.field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleaseResult:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def summarise_fuzz(out: Path, *, exit_status: int, seconds: float) -> dict[str, Any]:
    """What a release's campaign found, from its report.json (new findings and known deviations hit)."""
    path = out / "report.json"
    if not path.exists():
        return {"ok": False, "reason": f"no report.json (exit status {exit_status})", "seconds": seconds}
    data = json.loads(path.read_text())
    catalogue = data.get("catalogue", {})
    new = [
        {
            "row": f"{e['signature']['kind']}: {e['signature']['quantity']}",
            "id": e["id"],
            "entry": e["signature"]["entry"],
            "backend": e["signature"]["backend"],
            "dtype": e["signature"]["dtype"],
            "count": e["count"],
            "case": e.get("case_summary", ""),
            "reproducer": e.get("reproducer"),
        }
        for e in catalogue.get("new", [])
    ]
    known: dict[str, int] = {}
    for e in catalogue.get("known", []):
        known[e["signature"]["deviation"]] = known.get(e["signature"]["deviation"], 0) + int(e["count"])
    params = data.get("parameters", {})
    return {
        "ok": exit_status in (0, 1),
        "reason": "" if exit_status in (0, 1) else f"exit status {exit_status}",
        "seconds": seconds,
        "cases": data.get("cases", 0),
        "cases_per_s": data.get("cases_per_s", 0.0),
        "stop_reason": data.get("stop_reason", ""),
        "new": new,
        "known": known,
        "skipped": data.get("skipped_targets", []),
        "environment": {k[: -len("_version")]: v for k, v in params.items() if k.endswith("_version")},
    }


#: The pytest step's selections (besides "none"): the properties (CI's `pytest -m property`), the whole suite.
SUITES = {"property": ["-m", "property"], "all": []}


def summarise_junit(path: Path, *, exit_status: int, seconds: float) -> dict[str, Any]:
    """Counts and the failing tests' ids from pytest's JUnit XML (the only format every pytest writes)."""
    if not path.exists():
        return {"ok": False, "reason": f"no {path.name} (exit status {exit_status})", "seconds": seconds}
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    attributes = {} if suite is None else suite.attrib
    counts = {k: int(attributes.get(k) or 0) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return {
        "ok": exit_status in (0, 5) and not failed,
        "reason": "" if exit_status in (0, 5) else f"exit status {exit_status}",
        "seconds": round(seconds, 1),
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": failed,
        "skipped": counts["skipped"],
    }


def run_suite(python: Path, *, suite: str, workers: int, folder: Path, run: releases.Run) -> dict[str, Any]:
    """bnprops's own test suite (``suite``: a SUITES key) under the build's interpreter, from this source tree,
    with CI's derandomised Hypothesis profile, so that every build runs the same examples."""
    junit = folder / "pytest.xml"
    junit.unlink(missing_ok=True)
    command = [str(python), "-W", "ignore", "-m", "pytest", *SUITES[suite], "-q", "-p", "no:cacheprovider"]
    command += [*(["-n", str(workers)] if workers > 1 else []), f"--junitxml={junit}"]
    t0 = time.monotonic()
    try:
        proc = run(
            command,
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT_S,
            cwd=releases.project_root(),
            env=releases.child_env({"CI": "1", "BNPROPS_PROFILE": "ci"}),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"timed out after {SUITE_TIMEOUT_S} s", "seconds": SUITE_TIMEOUT_S}
    (folder / "pytest.log").write_text(proc.stdout + proc.stderr)
    return summarise_junit(junit, exit_status=proc.returncode, seconds=time.monotonic() - t0)


def run_release(
    release: str,
    *,
    cache: Path,
    out: Path,
    time_s: float,
    workers: int,
    seed: int,
    progress: Progress,
    suite: str = "property",
    run: releases.Run = subprocess.run,
) -> ReleaseResult:
    """Prepare the release's environment, probe the recorded deviations there, then fuzz it."""
    t0 = time.monotonic()
    folder = out / release
    folder.mkdir(parents=True, exist_ok=True)
    progress(f"[{release}] environment in {cache / release} ...")
    env = releases.prepare(release, cache=cache, log=folder / "install.log", run=run)
    result = ReleaseResult(release, env.to_dict())
    if not env.ok:
        progress(f"[{release}] install failed: {env.reason}")
        result.wall_s = time.monotonic() - t0
        return result
    progress(f"[{release}] {'reused' if env.reused else f'installed in {env.install_s:.0f} s'}; probing reproducers")
    t_probe = time.monotonic()
    probe_file = folder / "probe.json"
    proc = run(
        [str(env.python), "-W", "ignore", "-m", "bnprops.judging.release_probe", str(probe_file)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=releases.child_env(),
        check=False,
    )
    if proc.returncode == 0 and probe_file.exists():
        result.probe = json.loads(probe_file.read_text())
    else:
        result.problems.append(f"probe failed (exit {proc.returncode}): {releases._tail(proc.stderr)}")
    result.probe_s = time.monotonic() - t_probe
    if suite != "none":
        progress(f"[{release}] pytest {' '.join(SUITES[suite]) or '(the whole suite)'} with {workers} worker(s)")
        result.pytest = run_suite(env.python, suite=suite, workers=workers, folder=folder, run=run)
    progress(f"[{release}] fuzzing for {time_s:g} s with {workers} worker(s)")
    t1 = time.monotonic()
    command = [str(env.python), "-W", "ignore", "-m", "bnprops", "fuzz", "--time", f"{time_s:g}"]
    command += ["--workers", str(workers), "--seed", str(seed), "--out", str(folder / "fuzz")]
    # A campaign may overrun its budget by a shrink (30 s) and the report; a hung one must not stop the others.
    try:
        proc = run(command, capture_output=True, text=True, timeout=time_s + 900, env=releases.child_env(), check=False)
        (folder / "fuzz.log").write_text(proc.stdout + proc.stderr)
        result.fuzz = summarise_fuzz(folder / "fuzz", exit_status=proc.returncode, seconds=time.monotonic() - t1)
    except subprocess.TimeoutExpired:
        result.fuzz = {"ok": False, "reason": "timed out", "seconds": time.monotonic() - t1}
    result.wall_s = time.monotonic() - t0
    found = len(result.fuzz.get("new", [])) if result.fuzz else 0
    progress(f"[{release}] done in {result.wall_s:.0f} s: {found} new signature(s)")
    return result


def cell(result: ReleaseResult, deviation: str) -> str:
    """A recorded deviation's status in one release: the probe's, with the campaign's hits beside it."""
    if not result.install.get("ok"):
        return NOT_RUN
    row = (result.probe or {}).get("deviations", {}).get(deviation)
    status = row["status"] if row else NOT_RUN
    entries = (row or {}).get("entries", {}).values()
    lacking = [str(v["detail"]) for v in entries if str(v.get("detail", "")).startswith("n/a")]
    if lacking and len(lacking) == len(entries):  # family members this release lacks: n/a, with the reason
        status = lacking[0]
    hits = (result.fuzz or {}).get("known", {}).get(deviation, 0)
    return f"{status} (fuzz: {hits})" if hits else status


def _scope_cell(scope: mxversion.Releases, result: ReleaseResult) -> str:
    if not result.install.get("ok"):
        return NOT_RUN
    return f"{RECORDED_SCOPE}: " + ("holds" if scope.holds(releases.split(result.release)[1]) else "absent")


def matrix(results: Sequence[ReleaseResult]) -> dict[str, Any]:
    """The deviation x release matrix: recorded deviations (probed), then new findings (fuzzed)."""
    ids: list[str] = []
    for r in results:
        for name in (r.probe or {}).get("deviations", {}):
            if name not in ids:
                ids.append(name)
    recorded = {name: {r.release: cell(r, name) for r in results} for name in ids}
    new_rows: dict[str, dict[str, str]] = {}
    for r in results:
        for finding in (r.fuzz or {}).get("new", []):
            new_rows.setdefault(finding["row"], {})
    for row, cells in new_rows.items():
        for r in results:
            hits = [f for f in (r.fuzz or {}).get("new", []) if f["row"] == row]
            if not r.install.get("ok") or not (r.fuzz or {}).get("ok"):
                cells[r.release] = NOT_RUN
            elif hits:
                where = sorted({f"{f['entry']}/{f['dtype']}" for f in hits})
                cells[r.release] = f"found x{sum(f['count'] for f in hits)} ({', '.join(where)})"
            else:
                cells[r.release] = NOT_FOUND
    # A sequence deviation the probe cannot run (it needs another engine) shows its recorded scope.
    for d in deviations.SEQUENCE_DEVIATIONS:
        if d.id not in recorded:
            recorded[d.id] = {r.release: _scope_cell(d.releases, r) for r in results}
    lacks: dict[str, dict[str, str]] = {}
    for r in results:
        probe = r.probe or {}
        missing = {f"entry {k}": v for k, v in probe.get("entries", {}).items() if v}
        missing |= {f"member {k}": v for k, v in probe.get("members", {}).items() if v}
        missing |= {f"backend {k}": v for k, v in probe.get("backends", {}).items() if v and k in ("onednn", "native")}
        lacks[r.release] = missing
    return {"releases": [r.release for r in results], "recorded": recorded, "new": new_rows, "lacks": lacks}


def _table(rows: dict[str, dict[str, str]], releases_: list[str], title: str) -> list[str]:
    lines = [f"| {title} | " + " | ".join(releases_) + " |", "|---|" + "---|" * len(releases_)]
    for name, cells in rows.items():
        lines.append(f"| `{name}` | " + " | ".join(cells.get(r, NOT_RUN) for r in releases_) + " |")
    return lines


def markdown(results: Sequence[ReleaseResult], *, time_s: float) -> str:
    m = matrix(results)
    rel = m["releases"]
    lines = [
        "# bnprops versions: deviations by MXNet release",
        "",
        f"Per release: the recorded deviations' reproducers (present / absent / not applicable: probed, not "
        f"assumed), then a fuzz campaign of {time_s:g} s. `(fuzz: N)` counts the campaign's cases that matched "
        f"the deviation's model; '{NOT_FOUND}' means the campaign did not hit a finding (a sample, not a proof).",
        "",
        "## Releases",
        "",
        "| build | mxnet | oneDNN | install | probes | pytest | fuzz cases | new signatures | wall time | lacks |",
        "|---|---|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in results:
        env = (r.probe or {}).get("environment", {})
        install = "reused" if r.install.get("reused") else f"{r.install.get('install_s', 0):.0f} s"
        if not r.install.get("ok"):
            install = f"**failed**: {r.install.get('reason', '')}"
        fuzz = r.fuzz or {}
        lacks = "; ".join(f"{k}: {v}" for k, v in m["lacks"].get(r.release, {}).items()) or "nothing"
        lines.append(
            f"| {r.release} | {env.get('mxnet', '?')} | {env.get('onednn', '?')} | {install} | {r.probe_s:.0f} s | "
            f"{_pytest_cell(r.pytest)} | {fuzz.get('cases', '-')} | "
            f"{len(fuzz.get('new', [])) if fuzz.get('ok') else '-'} | {r.wall_s:.0f} s | {lacks} |"
        )
    lines += ["", "## Recorded deviations", "", *_table(m["recorded"], rel, "deviation")]
    lines += ["", "Each deviation's recorded scope and the upstream change that introduced or fixed it:", ""]
    for name in m["recorded"]:
        try:
            declared = deviations.by_id(name)
        except KeyError:  # a deviation this tree no longer declares (a results file from an older tree)
            continue
        lines.append(f"- `{name}` ({declared.releases.describe()}): {declared.upstream}")
    lines += ["", "## New findings of the campaigns", ""]
    if m["new"]:
        lines += _table(m["new"], rel, "finding (kind: quantity)")
        lines += ["", "Each release's findings, with their reproducers, are in `RELEASE/fuzz/report.md`:", ""]
        listed: set[str] = set()
        for r in results:
            for f in (r.fuzz or {}).get("new", []):
                repro = f"`{r.release}/fuzz/{f['reproducer']}`" if f.get("reproducer") else "no reproducer"
                line = f"- {r.release}: {f['row']} via {f['entry']}/{f['backend']}, {f['dtype']}: {repro}"
                if line not in listed:  # signatures of one cause share its reproducer
                    listed.add(line)
                    lines.append(line)
    else:
        lines.append("None: every campaign's departures from the oracle matched a recorded deviation.")
    failing = [(r.release, t) for r in results for t in (r.pytest or {}).get("failed", [])]
    if failing:
        lines += ["", "## Failing tests", "", *(f"- {release}: `{test}`" for release, test in failing)]
        lines.append("")
        lines.append("Each build's pytest output is in `BUILD/pytest.log`.")
    problems = [f"- {r.release}: {p}" for r in results for p in r.problems]
    problems += [f"- {r.release}: pytest {r.pytest['reason']}" for r in results if r.pytest and r.pytest.get("reason")]
    problems += [f"- {r.release}: fuzz {r.fuzz.get('reason')}" for r in results if r.fuzz and not r.fuzz.get("ok")]
    if problems:
        lines += ["", "## Problems", "", *problems]
    return "\n".join(lines) + "\n"


def _pytest_cell(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "not run"
    if "passed" not in summary:
        return f"**{summary.get('reason', 'failed')}**"
    failed = f", **{len(summary['failed'])} failed**" if summary["failed"] else ""
    return f"{summary['passed']} passed, {summary['skipped']} skipped{failed} ({summary['seconds']:.0f} s)"


def write(results: Sequence[ReleaseResult], out: Path, *, time_s: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "format": VERSIONS_FORMAT,
        "fuzz_time_s": time_s,
        "matrix": matrix(results),
        "releases": [r.to_dict() for r in results],
    }
    atomic.write_text(out / "versions.json", json.dumps(data, indent=1, default=str) + "\n")
    atomic.write_text(out / "versions.md", markdown(results, time_s=time_s))


def run(
    names: Sequence[str],
    *,
    cache: Path,
    out: Path,
    time_s: float,
    workers: int = 1,
    seed: int = 0,
    suite: str = "property",
    progress: Progress = print,
) -> list[ReleaseResult]:
    """Every requested release in turn; the matrix is rewritten after each one."""
    results: list[ReleaseResult] = []
    for release in names:
        try:
            result = run_release(
                release,
                cache=cache,
                out=out,
                time_s=time_s,
                workers=workers,
                seed=seed,
                suite=suite,
                progress=progress,
            )
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            result = ReleaseResult(release, {"ok": False, "reason": f"{type(exc).__name__}: {exc}"})
        results.append(result)
        write(results, out, time_s=time_s)
    return results


def exit_status(results: Sequence[ReleaseResult]) -> int:
    """0: every release ran and its findings are all recorded; 1: a new finding or a failed release."""
    bad = any(
        not r.install.get("ok") or not (r.fuzz or {}).get("ok") or r.problems or not (r.pytest or {"ok": True})["ok"]
        for r in results
    )
    found = any((r.fuzz or {}).get("new") for r in results)
    return 1 if bad or found else 0


__all__ = ["ReleaseResult", "markdown", "matrix", "run", "write"]

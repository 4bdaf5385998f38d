"""How sharp the error bounds are on real MXNet, and how well they catch a 0.5% error (``bnprops tightness``).

A sharp bound puts real errors at a good fraction of it (the goals: a median of at least
GOALS[regime]); a loose one lets real bugs through.  Two measurements, per decade of M:

* **tightness** (measure): seeded conv-like and dense cases run through MXNet and judged by the
  comparator; per quantity the largest error / bound against both bounds (the verdict's ``ratios``
  and ``sharp_ratios``), and the time per case of MXNet against the judging;
* **detection** (the detection module): the share of well-conditioned cases in which the oracle, with one
  quantity scaled by 1.005, is flagged.  No MXNet needed.

This module measures the first, tabulates both, checks the goals and writes the report; the cases come from
the tightness_cases module.  The measured numbers are in the documentation's tightness page.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnprops.base import atomic
from bnprops.base.selection import validate_choices
from bnprops.commands.detection import DETECTION_DTYPES, DETECTION_GOAL, DetectionRow, format_detection, rates
from bnprops.commands.tightness_cases import (
    DECADES,
    Progress,
    check_decades,
    decade_label,
    draw_case,
    percent,
    rng_for,
    stream_key,
)
from bnprops.model.case import DTYPES, Case, Outputs

REGIMES = ("ordinary", "exact")
#: The quantities whose error/bound ratios are measured on MXNet.
MEASURED = ("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var")
BACKENDS = ("onednn", "native")
#: Goals: the median error/bound per cell (quantity x dtype x decade) at least this, per regime.
GOALS = {"ordinary": 0.01, "exact": 0.05}
BOUNDS = ("deterministic", "probabilistic")
_FORMAT = "bnprops.tightness/1"


# ---------------------------------------------------------------------------------------------------------------
# Tightness on MXNet


@dataclasses.dataclass(frozen=True)
class Record:
    """One case through MXNet: its largest error/bound per quantity under both bounds, and what it cost."""

    regime: str
    dtype: str
    decade: int
    index: int
    shape: tuple[int, ...]
    m: int
    #: error / deterministic bound per quantity, and error / probabilistic bound.
    ratios: dict[str, float]
    sharp_ratios: dict[str, float]
    #: Quantities whose every element is the oracle's to the last bit (left out of the statistics).
    exact: tuple[str, ...]
    #: Quantities that fail where a known deviation explains it (left out of the statistics).
    known: tuple[str, ...]
    runner_s: float
    judge_s: float
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Finding:
    """A ratio above 1 on MXNet that no known deviation explains, or a runner that raised."""

    kind: str  # the comparator's mismatch kind ("value", "nonfinite", "accuracy", ...) or "error"
    regime: str
    dtype: str
    decade: int
    index: int
    shape: tuple[int, ...]
    quantity: str
    ratio: float
    sharp_ratio: float
    detail: str
    case_file: str | None


@dataclasses.dataclass(frozen=True)
class Measurement:
    backend: str
    records: tuple[Record, ...]
    findings: tuple[Finding, ...]
    seconds: float


def measure(
    *,
    decades: Sequence[int] = DECADES,
    dtypes: Sequence[str] = ("float32", "float64", "float16"),
    regimes: Sequence[str] = REGIMES,
    backend: str = "onednn",
    cases_per_cell: int = 10,
    seed: int = 0,
    runner: Callable[[Case], Outputs] | None = None,
    findings_dir: Path | None = None,
    progress: Progress | None = None,
) -> Measurement:
    """Run ``cases_per_cell`` cases per regime x dtype x decade through MXNet's symbolic entry point and judge them.

    ``runner`` replaces MXNet (tests); ``findings_dir`` receives the JSON of every case with a ratio above 1
    that no known deviation explains.
    """
    decades = check_decades(decades)
    dtypes = validate_choices("dtype", dtypes, allowed=DTYPES)
    regimes = validate_choices("regime", regimes, allowed=REGIMES)
    validate_choices("backend", [backend], allowed=BACKENDS)
    if cases_per_cell < 1:
        raise ValueError(f"cases_per_cell must be at least 1, got {cases_per_cell}")
    from bnprops.judging.checks import judge
    from bnprops.mx.backends import runner_for
    from bnprops.mx.runners import kernel_for

    if runner is None:
        runner = runner_for("sym", backend)
        # Warm up: the native backend's worker process starts on first use, which is not a case's cost.
        runner(draw_case(rng_for(seed, *stream_key("warm-up", "float32", 0, 0)), 0, "float32", "ordinary"))
    start = time.perf_counter()
    records: list[Record] = []
    findings: list[Finding] = []
    for regime in regimes:
        for dtype in dtypes:
            for decade in decades:
                cell: list[Record] = []
                for index in range(cases_per_cell):
                    case = draw_case(rng_for(seed, *stream_key(regime, dtype, decade, index)), decade, dtype, regime)
                    record, found = _measure_one(
                        case, runner, judge, kernel_for(case, backend), backend, regime, decade, index
                    )
                    cell.append(record)
                    for f in found:
                        if findings_dir is not None:
                            path = findings_dir / f"{f.kind}-{regime}-{dtype}-d{decade}-{index}.json"
                            if not path.exists():
                                atomic.write_text(path, case.to_json())
                            f = dataclasses.replace(f, case_file=str(path))
                        findings.append(f)
                        if progress is not None:
                            progress(f"  finding: {_describe_finding(f)}")
                records += cell
                if progress is not None:
                    mx_ms = 1e3 * sum(r.runner_s for r in cell) / len(cell)
                    judge_ms = 1e3 * sum(r.judge_s for r in cell) / len(cell)
                    progress(
                        f"tightness {backend} {regime} {dtype} decade {decade}: {len(cell)} cases, "
                        f"MXNet {mx_ms:.1f} ms/case, judging {judge_ms:.1f} ms/case"
                    )
    return Measurement(backend, tuple(records), tuple(findings), time.perf_counter() - start)


def _measure_one(
    case: Case,
    runner: Callable[[Case], Outputs],
    judge: Callable[..., Any],
    kernel: str,
    backend: str,
    regime: str,
    decade: int,
    index: int,
) -> tuple[Record, list[Finding]]:
    base: dict[str, Any] = {
        "regime": regime,
        "dtype": case.dtype,
        "decade": decade,
        "index": index,
        "shape": case.shape,
    }
    t0 = time.perf_counter()
    try:
        actual = runner(case)
    except Exception as exc:  # a runner that raises is itself a finding; the measurement goes on
        t1 = time.perf_counter()
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        record = Record(
            **base,
            m=case.reduction_length,
            ratios={},
            sharp_ratios={},
            exact=(),
            known=(),
            runner_s=t1 - t0,
            judge_s=0.0,
            error=message,
        )
        failure = Finding(
            **base, kind="error", quantity="", ratio=math.nan, sharp_ratio=math.nan, detail=message, case_file=None
        )
        return record, [failure]
    t1 = time.perf_counter()
    outcome = judge(case, actual, entry="sym", kernel=kernel, checked=MEASURED, backend=backend)
    verdict = outcome.verdict
    t2 = time.perf_counter()
    ratios = {q: verdict.ratios[q] for q in MEASURED if q in verdict.ratios}
    sharp = {q: verdict.sharp_ratios.get(q, math.nan) for q in ratios}
    exact = tuple(q for q, r in ratios.items() if r == 0)
    known = tuple(q for q in ratios if q in outcome.allowed and q in verdict.failed_quantities)
    findings = [
        Finding(
            **base,
            kind=m.kind,
            quantity=m.quantity,
            ratio=ratios.get(m.quantity, math.nan),
            sharp_ratio=sharp.get(m.quantity, math.nan),
            detail=m.describe(),
            case_file=None,
        )
        for m in outcome.unexpected
    ]
    record = Record(
        **base,
        m=case.reduction_length,
        ratios=ratios,
        sharp_ratios=sharp,
        exact=exact,
        known=known,
        runner_s=t1 - t0,
        judge_s=t2 - t1,
    )
    return record, findings


def _describe_finding(f: Finding) -> str:
    where = f"{f.regime} {f.dtype} decade {f.decade} case {f.index} {list(f.shape)}"
    if f.kind == "error":
        return f"{where}: the runner raised {f.detail}"
    return (
        f"{where}: {f.quantity} {f.kind} (error/deterministic bound {f.ratio:.3g}, "
        f"error/probabilistic bound {f.sharp_ratio:.3g})"
    )


# ---------------------------------------------------------------------------------------------------------------
# Tables


@dataclasses.dataclass(frozen=True)
class Spread:
    median: float
    p99: float
    max: float


def _spread(values: list[float]) -> Spread:
    if not values:
        return Spread(math.nan, math.nan, math.nan)
    arr = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return Spread(float(np.median(arr)), float(np.percentile(arr, 99)), float(arr.max()))


@dataclasses.dataclass(frozen=True)
class TightnessRow:
    regime: str
    quantity: str
    dtype: str
    decade: int
    #: Cases with a result that is not the oracle's to the last bit (the statistics are over these).
    n: int
    #: Cases where it is, in every element.
    exact: int
    deterministic: Spread
    probabilistic: Spread


def tightness_table(records: Iterable[Record]) -> list[TightnessRow]:
    """One row per regime x quantity x dtype x decade that was measured, in that order."""
    cells: dict[tuple[str, str, int], list[Record]] = {}
    for r in records:
        if r.error is None:
            cells.setdefault((r.regime, r.dtype, r.decade), []).append(r)
    rows = []
    for regime in REGIMES:
        for q in MEASURED:
            for dtype in DTYPES:
                for decade in DECADES:
                    cell = cells.get((regime, dtype, decade))
                    if not cell:
                        continue
                    judged = [r for r in cell if q in r.ratios and q not in r.known]
                    inexact = [r for r in judged if q not in r.exact]
                    rows.append(
                        TightnessRow(
                            regime,
                            q,
                            dtype,
                            decade,
                            len(inexact),
                            len(judged) - len(inexact),
                            _spread([r.ratios[q] for r in inexact]),
                            _spread([r.sharp_ratios[q] for r in inexact]),
                        )
                    )
    return rows


@dataclasses.dataclass(frozen=True)
class CostRow:
    decade: int
    n: int
    median_m: int
    runner_ms: float
    judge_ms: float


def cost_table(records: Iterable[Record]) -> list[CostRow]:
    by_decade: dict[int, list[Record]] = {}
    for r in records:
        if r.error is None:
            by_decade.setdefault(r.decade, []).append(r)
    rows = []
    for decade in sorted(by_decade):
        cell = by_decade[decade]
        rows.append(
            CostRow(
                decade,
                len(cell),
                int(np.median([r.m for r in cell])),
                1e3 * float(np.mean([r.runner_s for r in cell])),
                1e3 * float(np.mean([r.judge_s for r in cell])),
            )
        )
    return rows


def _g(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3g}"


def format_tightness(rows: Sequence[TightnessRow], *, backend: str = "onednn") -> str:
    head = (
        f"{'regime':<9}{'quantity':<12}{'dtype':<8}{'M >=':>6}{'n':>4}{'exact':>6} | "
        f"{'det med':>9}{'det p99':>9}{'det max':>9} | {'prob med':>9}{'prob p99':>9}{'prob max':>9}"
    )
    lines = [
        f"Tightness on MXNet ({backend}): largest error / bound per case, over the cases whose result is not the "
        "oracle's to the last bit",
        "(n: such cases; exact: cases equal to the oracle in every element; det: deterministic bound; "
        "prob: probabilistic bound)",
        head,
        "-" * len(head),
    ]
    previous = None
    exact_everywhere: dict[tuple[str, str, str], list[int]] = {}
    for r in rows:
        if r.n == 0:
            # Every case bitwise exact (or none judged): nothing to take a ratio of; listed below the table.
            exact_everywhere.setdefault((r.regime, r.quantity, r.dtype), []).append(r.decade)
            continue
        if previous is not None and (r.regime, r.quantity) != previous:
            lines.append("")
        previous = (r.regime, r.quantity)
        d, p = r.deterministic, r.probabilistic
        lines.append(
            f"{r.regime:<9}{r.quantity:<12}{r.dtype:<8}{decade_label(r.decade):>6}{r.n:>4}{r.exact:>6} | "
            f"{_g(d.median):>9}{_g(d.p99):>9}{_g(d.max):>9} | {_g(p.median):>9}{_g(p.p99):>9}{_g(p.max):>9}"
        )
    if exact_everywhere:
        lines += ["", "Equal to the oracle to the last bit in every case (no rows above):"]
        for (regime, quantity, dtype), decades in exact_everywhere.items():
            lines.append(f"  {regime:<9}{quantity:<12}{dtype:<8} M >= {', '.join(map(decade_label, decades))}")
    return "\n".join(lines)


def format_cost(rows: Sequence[CostRow], *, backend: str = "onednn") -> str:
    head = f"{'M >=':>6}{'cases':>7}{'median M':>11}{'MXNet ms/case':>15}{'judging ms/case':>17}{'judging/MXNet':>15}"
    lines = [
        f"Cost per case ({backend}): MXNet's runner (bind, copy, forward, backward) against the oracle, both bounds "
        "and the comparison",
        head,
        "-" * len(head),
    ]
    for r in rows:
        ratio = r.judge_ms / r.runner_ms if r.runner_ms > 0 else math.inf
        lines.append(
            f"{decade_label(r.decade):>6}{r.n:>7}{r.median_m:>11}{r.runner_ms:>15.2f}{r.judge_ms:>17.2f}{ratio:>15.2f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Goals, findings and the JSON report


def pooled_medians(records: Iterable[Record]) -> dict[tuple[str, str, int], float]:
    """(regime, bound, decade) -> the median error/bound over every quantity, dtype and case not exact to the bit."""
    pools: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        if r.error is not None:
            continue
        for q, ratio in r.ratios.items():
            if q in r.exact or q in r.known:
                continue
            pools.setdefault((r.regime, "deterministic", r.decade), []).append(ratio)
            pools.setdefault((r.regime, "probabilistic", r.decade), []).append(r.sharp_ratios[q])
    return {key: float(np.median(values)) for key, values in sorted(pools.items())}


def goal_lines(
    tightness: Sequence[TightnessRow], detected: Sequence[DetectionRow], records: Iterable[Record] = ()
) -> list[str]:
    """Whether the goals hold: median error/bound >= GOALS[regime] (pooled per decade, and per cell), and a
    planted error flagged in >= DETECTION_GOAL of the well-conditioned cases of every cell."""
    lines = []
    pooled = pooled_medians(records)
    for regime, goal in GOALS.items():
        rows = [r for r in tightness if r.regime == regime and r.n > 0]
        if not rows:
            continue
        for bound in BOUNDS:
            medians = {d: m for (reg, b, d), m in pooled.items() if reg == regime and b == bound}
            if medians:
                state = "holds" if all(m >= goal for m in medians.values()) else "fails"
                per = ", ".join(f"{decade_label(d)} {m:.3g}" for d, m in medians.items())
                lines.append(f"tightness {regime}, {bound} bound, median >= {goal:g} per decade (pooled): {state}")
                lines.append(f"    {per}")
            below = [r for r in rows if getattr(r, bound).median < goal]
            state = "holds" if not below else f"fails in {len(below)} of {len(rows)} cells"
            lines.append(f"tightness {regime}, {bound} bound, median >= {goal:g} in every cell: {state}")
            groups: dict[tuple[str, str], list[str]] = {}
            for r in below:
                groups.setdefault((r.quantity, r.dtype), []).append(
                    f"{decade_label(r.decade)} {getattr(r, bound).median:.2g}"
                )
            for (quantity, dtype), cells in groups.items():
                lines.append(f"    {quantity:<12}{dtype:<8} {', '.join(cells)}")
    rows_d = [r for r in detected if r.n > 0]
    if rows_d:
        below_d = [r for r in rows_d if r.rate < DETECTION_GOAL]
        state = "holds" if not below_d else f"fails in {len(below_d)} of {len(rows_d)} cells"
        lines.append(f"detection >= {100 * DETECTION_GOAL:g}% in every cell: {state}")
        for row in below_d:
            lines.append(
                f"    {row.quantity} {row.dtype} M >= {decade_label(row.decade)}: {percent(row.rate)} of {row.n}"
            )
    return lines


def format_findings(findings: Sequence[Finding]) -> str:
    if not findings:
        return "No ratio above 1 on MXNet outside the known deviations, and no accuracy finding."
    lines = [f"{len(findings)} finding(s) on MXNet (ratio above 1, no known deviation explains it):"]
    for f in findings:
        lines.append(f"  {_describe_finding(f)}" + (f"\n    case: {f.case_file}" if f.case_file else ""))
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """JSON-ready: dataclasses to dicts, tuples to lists, non-finite floats to strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def report(
    *,
    parameters: dict[str, Any],
    measurement: Measurement | None,
    detected: Sequence[DetectionRow],
) -> dict[str, Any]:
    tight = tightness_table(measurement.records) if measurement else []
    return {
        "format": _FORMAT,
        "parameters": parameters,
        "tightness": _plain(tight),
        "cost": _plain(cost_table(measurement.records)) if measurement else [],
        "detection": [dict(_plain(r), rate=_plain(r.rate)) for r in detected],
        "findings": _plain(list(measurement.findings)) if measurement else [],
        "goals": goal_lines(tight, detected, measurement.records if measurement else ()),
        "records": _plain(list(measurement.records)) if measurement else [],
        "seconds": measurement.seconds if measurement else None,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic.write_text(path, json.dumps(data, indent=1) + "\n")


def parse_decades(text: str) -> tuple[int, ...]:
    """'0-6', '4-6', '3' or '0,2,5' (and mixtures such as '0-2,5') -> the decades, each checked."""
    decades: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo_text, dash, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            raise ValueError(f"expected decades such as 0-6, 4-6, 3 or 0,2,5; got {text!r}") from None
        if hi < lo:
            raise ValueError(f"the range {part!r} is empty: write it low-high, such as 0-6")
        decades += range(lo, hi + 1)
    return check_decades(decades)


def run(
    *,
    decades: Sequence[int],
    dtypes: Sequence[str],
    regimes: Sequence[str],
    backend: str,
    cases_per_cell: int,
    detection_cases: int,
    detection_cases_top: int,
    seed: int,
    on_mxnet: bool = True,
    detect: bool = True,
    json_path: Path | None = None,
    findings_dir: Path | None = None,
    progress: Progress | None = None,
    out: Callable[[str], None] = print,
) -> bool:
    """``bnprops tightness``: measure on MXNet and/or detect, print the tables and the goals, write the JSON.

    True when MXNet showed a finding (a ratio above 1 that no known deviation explains, or a runner error).
    """
    measured = None
    if on_mxnet:
        measured = measure(
            decades=decades,
            dtypes=dtypes,
            regimes=regimes,
            backend=backend,
            cases_per_cell=cases_per_cell,
            seed=seed,
            findings_dir=findings_dir,
            progress=progress,
        )
    detection_dtypes = tuple(d for d in dtypes if d in DETECTION_DTYPES)
    detected: list[DetectionRow] = []
    if detect and detection_dtypes:
        detected = rates(
            decades=decades,
            dtypes=detection_dtypes,
            cases_per_cell=detection_cases,
            top_decade_cases=detection_cases_top,
            seed=seed,
            progress=progress,
        )
    tight = tightness_table(measured.records) if measured is not None else []
    sections = []
    if measured is not None:
        sections += [
            format_tightness(tight, backend=backend),
            format_cost(cost_table(measured.records), backend=backend),
        ]
    if detected:
        sections.append(format_detection(detected))
    if measured is not None:
        sections.append(format_findings(measured.findings))
    records = measured.records if measured is not None else ()
    sections.append("\n".join(["goals:", *("  " + line for line in goal_lines(tight, detected, records))]))
    out("\n\n".join(sections))
    if json_path is not None:
        parameters = {
            "decades": list(decades),
            "dtypes": list(dtypes),
            "regimes": list(regimes),
            "backend": backend,
            "cases_per_cell": cases_per_cell,
            "detection_cases": detection_cases,
            "detection_cases_top": detection_cases_top,
            "seed": seed,
            "on_mxnet": on_mxnet,
            "detect": detect,
        }
        write_json(json_path, report(parameters=parameters, measurement=measured, detected=detected))
        out(f"json: {json_path}")
    return measured is not None and bool(measured.findings)

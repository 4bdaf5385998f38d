"""Where a fuzz worker's time goes: its main thread's stack sampled by a thread of its own, each sample filed
by side family and part.

Every ``INTERVAL_S`` seconds a sample, weighing the time since the one before, is filed as (where, part): where
is "cases" or the side family whose check runs (relations, networks, sequences, members); part is MXNet, drawing
(Hypothesis's engine and the strategies), a part of the judging, or the worker's own bookkeeping.  A report adds
the workers' samples up (``shares``), with the ratio of the time outside MXNet to the time inside it.

A sample is MXNet's when any frame of the stack is MXNet's (its Python front end and the C calls under it) or a
helper process's call awaited (the helper runs MXNet), except while the helper starts; drawing when no frame is
the worker's judging of an example (Hypothesis is choosing the next); else the innermost bnprops module names
the part.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Iterable
from typing import Any

INTERVAL_S = 0.01
MXNET, DRAWING, STARTING = "MXNet", "drawing", "starting helper processes"
#: A worker's wait for its helper processes before its search (fuzzing.worker.start_helpers): its samples are
#: stated beside the shares, with the ratio they would make among them, not in the shares.
BEFORE_SEARCH = "before the search"
STARTUP_LABEL = f"{BEFORE_SEARCH}/{STARTING}"
#: The bnprops module whose frames mean MXNet runs: a helper process's call awaited (mx.helper_process), not its
#: callers', whose own work (a chain's plain call judged, a sync case checked) is bnprops's.
_AWAITING = ("bnprops.mx.helper_process",)
#: Modules (prefixes) whose frames mean a side family's check runs.
FAMILIES = {
    "bnprops.fuzzing.relation_findings": "relations",
    "bnprops.fuzzing.network_findings": "networks",
    "bnprops.fuzzing.sequence_findings": "sequences",
    "bnprops.fuzzing.member_findings": "members",
    "bnprops.fuzzing.lifecycle_findings": "life cycle",
}
#: The judging's parts, by the innermost bnprops module (first prefix that matches).
PARTS = (
    ("bnprops.model.case", "cases (digests, checks)"),
    ("bnprops.model", "oracle and bounds"),
    ("bnprops.judging.comparator", "comparator"),
    ("bnprops.judging.fused", "comparator"),
    ("bnprops.judging.deviation", "deviation models"),
    ("bnprops.judging.known_deviations", "deviation models"),
    ("bnprops.judging.declarations", "deviation models"),
    ("bnprops.judging.invariants", "invariants"),
    ("bnprops.judging", "judging, other"),
    ("bnprops.mx", "preparing calls"),
    ("bnprops.search", DRAWING),
)
OWN = "bookkeeping"
#: The interpreter's switch interval while a sampler runs (seconds).
SWITCH_INTERVAL_S = 0.0005
#: A sample whose stack changed while it was read: its time is filed apart, never dropped.
UNREAD = "unread/unread"
#: The worker's functions that judge one example (the condition Hypothesis calls).
_JUDGING = frozenset({"explore", "shrink_step", "entry_for", "settle"})


def stack_of(frame: types.FrameType | None) -> list[tuple[str, str]]:
    """(module, function) of each frame from ``frame`` outwards, read in one short pass: another thread's stack
    can change under the walk whenever this thread yields the GIL, so nothing else happens during it."""
    found = []
    while frame is not None:
        found.append((frame.f_globals.get("__name__", ""), frame.f_code.co_name))
        frame = frame.f_back
    return found


def classify(frame: types.FrameType | None) -> str:
    """``where/part`` for a stack whose innermost frame is ``frame``."""
    return classify_stack(stack_of(frame))


def classify_stack(stack: list[tuple[str, str]]) -> str:
    """``where/part`` for a stack of (module, function), innermost first."""
    where, part, judging, mxnet, starting = "cases", "", False, False, False
    for module, function in stack:
        if module == "bnprops.fuzzing.worker" and function == "start_helpers":
            return STARTUP_LABEL
        if module.startswith("mxnet") or module.startswith(_AWAITING):
            mxnet = True
            starting = starting or (module.startswith(_AWAITING) and function == "_start")
        if module == "bnprops.fuzzing.explorer" and function in _JUDGING:
            judging = True
        if module in FAMILIES:
            where = FAMILIES[module]
        if not part and module.startswith("bnprops."):
            part = next((name for prefix, name in PARTS if module.startswith(prefix)), OWN)
    if starting:
        return f"{where}/{STARTING}"
    if mxnet:
        return f"{where}/{MXNET}"
    if not judging or part == DRAWING:
        return f"{where}/{DRAWING}"
    return f"{where}/{part or OWN}"


class StackSampler:
    """Samples the thread that makes it (a worker's main thread) while the block runs: ``counts`` per label, in
    milliseconds of wall time (each sample weighs the time since the one before)."""

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.counts: dict[str, int] = {}
        self._target = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bnprops-time-shares", daemon=True)
        self._switch = sys.getswitchinterval()

    def __enter__(self) -> StackSampler:
        # The sampler waits for the GIL while the sampled thread runs Python, up to the switch interval (5 ms):
        # weighing that wait into the next sample would give it to whatever released the GIL (an MXNet call, most
        # often). A 0.5 ms interval keeps the wait small; only this thread asks, once per sample.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, SWITCH_INTERVAL_S))
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._switch)

    def _run(self) -> None:
        # Each sample weighs the milliseconds since the one before: this thread needs the GIL to sample, so while
        # the sampled thread runs Python it waits for its turn (the switch interval, lowered while it runs); while
        # it is in C code that released the GIL (MXNet, a pipe) it does not. Counted one each, pure Python got 150
        # samples where as long a sleep got 270, and MXNet's share came out about half as large again as it was.
        last = time.perf_counter()
        while not self._stop.wait(self.interval_s):
            try:
                label = classify(sys._current_frames().get(self._target))
            except Exception:  # a frame torn down under the walk (CPython 3.11): the time is still counted
                label = UNREAD
            now = time.perf_counter()
            self.counts[label] = self.counts.get(label, 0) + round(1000 * (now - last))
            last = now


def shares(counts: Iterable[dict[str, int]]) -> dict[str, Any]:
    """The workers' samples added up: each label's share of all, the shares per part and per where, and the
    ratio of the time outside MXNet to the time inside it (None where no sample was MXNet's)."""
    total: dict[str, int] = {}
    before = 0
    for c in counts:
        for label, n in c.items():
            if label.startswith(f"{BEFORE_SEARCH}/"):
                before += n
            else:
                total[label] = total.get(label, 0) + n
    n = sum(total.values())
    by_part: dict[str, float] = {}
    by_where: dict[str, float] = {}
    for label, k in total.items():
        where, part = label.split("/", 1)
        by_part[part] = by_part.get(part, 0.0) + k / n
        by_where[where] = by_where.get(where, 0.0) + k / n
    inside = by_part.get(MXNET, 0.0)
    return {
        "samples": n,
        "labels": {label: k / n for label, k in sorted(total.items())} if n else {},
        "parts": dict(sorted(by_part.items(), key=lambda kv: -kv[1])),
        "where": dict(sorted(by_where.items(), key=lambda kv: -kv[1])),
        "outside_over_inside": (1.0 - inside) / inside if inside > 0 else None,
        "before_search": before,
        "outside_over_inside_with_before": (1.0 - inside) / inside + before / (inside * n) if inside > 0 else None,
    }


def lines(found: dict[str, Any]) -> list[str]:
    """The shares as a report section (markdown)."""
    if not found.get("samples"):
        return ["## Where the workers' time went", "", "Not measured."]
    ratio = found["outside_over_inside"]
    said = f"{ratio:.1f} s of bnprops per second of MXNet" if ratio is not None else "no time in MXNet"
    out = [
        "## Where the workers' time went",
        "",
        f"{found['samples'] / 1000:,.0f} s of the workers' main threads, sampled every {INTERVAL_S * 1000:.0f} ms "
        f"(each sample weighing the time since the one before): "
        f"**MXNet {found['parts'].get(MXNET, 0.0):.0%}**; outside/inside MXNet = **{said}**.",
        "",
    ]
    if found.get("before_search") and found.get("outside_over_inside_with_before") is not None:
        out += [
            f"Before their searches the workers waited for their helper processes, started together: "
            f"{found['before_search'] / 1000:,.1f} s more, not in the shares (with them, "
            f"{found['outside_over_inside_with_before']:.1f} s of bnprops per second of MXNet).",
            "",
        ]
    out += [
        "| part | share | | where | share |",
        "|---|---:|---|---|---:|",
    ]
    parts, wheres = list(found["parts"].items()), list(found["where"].items())
    for i in range(max(len(parts), len(wheres))):
        p = f"{parts[i][0]} | {parts[i][1]:.1%}" if i < len(parts) else " | "
        w = f"{wheres[i][0]} | {wheres[i][1]:.1%}" if i < len(wheres) else " | "
        out.append(f"| {p} | | {w} |")
    return out

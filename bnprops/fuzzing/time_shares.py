"""Where a fuzz worker's time goes: its main thread's stack sampled by a thread of its own, each sample filed
by side family and part.

Every ``INTERVAL_S`` seconds a sample, weighing the time since the one before, is filed as (where, part): where
is "cases" or the side family whose check runs (relations, networks, sequences, members); part is MXNet, drawing
(Hypothesis's engine and the strategies), a part of the judging, or the worker's own bookkeeping.  A report adds
the workers' samples up (``shares``), with the ratio of the time outside MXNet to the time inside it.

A sample is MXNet's when any frame of the stack is MXNet's (its Python front end and the C calls under it) or a
helper process's call awaited (the helper runs MXNet), except while the helper starts; drawing when no frame is
the worker's judging of an example (Hypothesis is choosing the next); else the innermost bnprops module names
the part. The stack is read by faulthandler's walk in C, never through frame objects (``read_stack``).
"""

from __future__ import annotations

import faulthandler
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from typing import Any

#: faulthandler's dump of every thread (StackReader) holds the GIL 0.3 to 1 ms, a write per fragment of each
#: frame's line: every 10 ms that cost a campaign a fifth of its cases; every 50 ms it is about 1% of a worker's
#: time, and a two-minute campaign on 2 workers still takes some 4,600 samples.
INTERVAL_S = 0.05
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
#: The interpreter's switch interval while a sampler runs (seconds): how long its wait for the GIL may lean.
SWITCH_INTERVAL_S = 0.0001
#: A sample whose stack could not be read whole: its time is filed apart, never dropped.
UNREAD = "unread/unread"
#: The worker's functions that judge one example (the condition Hypothesis calls).
_JUDGING = frozenset({"explore", "shrink_step", "entry_for", "settle"})


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
        # The sampler waits for the GIL while the sampled thread runs Python, up to the switch interval (5 ms), and
        # takes it as soon as that thread releases it, most often by calling MXNet: its labels would lean there. A
        # 0.1 ms interval keeps the window small (0.5 ms left MXNet's share 3 points above py-spy's); only this
        # thread asks, once per sample.
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
        with StackReader() as reader:
            while not self._stop.wait(self.interval_s):
                try:
                    stack = reader.stack(self._target)
                    label = UNREAD if stack is None else classify_stack(stack)
                except Exception:  # a dump it cannot parse: the time is still counted
                    label = UNREAD
                now = time.perf_counter()
                self.counts[label] = self.counts.get(label, 0) + round(1000 * (now - last))
                last = now


#: A thread's header and a frame's line in faulthandler's dump; "  ..." ends a stack cut at its depth limit (100).
_THREAD = re.compile(r"^(?:Current thread|Thread) 0x([0-9a-fA-F]+) ")
_FRAME = re.compile(r'^  File "(.*)", line -?\d+ in (.*)$')
_CUT = "  ..."
#: Where bnprops itself is imported from (an editable install's finder puts it on no sys.path entry).
_OWN_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StackReader:
    """Another thread's stack as (module, function) pairs, innermost first, read by faulthandler's walk in C.

    Python 3.11 cannot walk another thread's frame objects safely: a walk that yields the GIL can meet a frame
    whose caller has returned, and ``f_back`` then reads freed memory (a segfault in PyFrame_GetBack, seen in fuzz
    workers; CPython issue 111363). faulthandler walks every thread's interpreter frames in one C call, under the
    GIL, and makes no frame objects; its text goes to an anonymous file and is read back.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by __exit__)
        self._modules: dict[str, str] = {}

    def __enter__(self) -> StackReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()

    def stack(self, thread_id: int) -> list[tuple[str, str]] | None:
        """The thread's stack; None if the dump lacks the thread or cut its stack short."""
        fd = self._file.fileno()
        os.lseek(fd, 0, os.SEEK_SET)
        faulthandler.dump_traceback(fd, all_threads=True)
        text = os.pread(fd, os.lseek(fd, 0, os.SEEK_CUR), 0).decode("utf-8", "replace")
        frames = stack_in_dump(text, thread_id)
        return None if frames is None else [(self.module_of(f), function) for f, function in frames]

    def module_of(self, filename: str) -> str:
        """The dotted module name of a source file under sys.path or bnprops's own root; '' for any other."""
        name = self._modules.get(filename)
        if name is None:
            name = self._modules[filename] = module_of_file(filename, [_OWN_ROOT, *sys.path])
        return name


def stack_in_dump(text: str, thread_id: int) -> list[tuple[str, str]] | None:
    """(file, function) of each frame of thread ``thread_id`` in faulthandler's dump of all threads, innermost
    first; None if the dump lacks the thread or cut its stack at faulthandler's depth limit."""
    found: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        head = _THREAD.match(line)
        if head is not None:
            if found is not None:
                break
            if int(head.group(1), 16) == thread_id:
                found = []
        elif found is not None:
            if line == _CUT:
                return None
            frame = _FRAME.match(line)
            if frame is not None:
                found.append((frame.group(1), frame.group(2)))
    return found


def module_of_file(filename: str, roots: Iterable[str]) -> str:
    """The dotted module name of ``filename`` under the longest of ``roots`` it lies in; '' under none."""
    for root in sorted((os.path.abspath(r) for r in roots if r), key=len, reverse=True):
        prefix = os.path.join(root, "")
        if filename.startswith(prefix) and filename.endswith(".py"):
            return filename[len(prefix) : -3].replace(os.sep, ".").removesuffix(".__init__")
    return ""


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

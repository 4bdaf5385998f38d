"""How long a campaign's processes live: SIGTERM stops a campaign as Ctrl-C does, and no worker or helper process
outlives the process that started it, even one killed outright.

Schedulers stop jobs with SIGTERM (``timeout``, ``kill``, systemd, containers, CI cancellation); ``terminating``
turns it into ``Terminated``, a KeyboardInterrupt, so every path that winds down and reports on Ctrl-C does on
SIGTERM too, with its own stop reason.  ``die_with_parent`` asks Linux to SIGKILL a child when its parent dies
(PR_SET_PDEATHSIG), called first thing in each worker and helper (a helper learns its parent's pid from its
environment, ``child_environment``); elsewhere it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop as on Ctrl-C, and say so."""


def stop_reason(exc: BaseException) -> str:
    """The stop reason an interrupt gives a report."""
    return "terminated" if isinstance(exc, Terminated) else "interrupted"


@contextlib.contextmanager
def terminating() -> Iterator[None]:
    """Inside the block (in the main thread), SIGTERM raises Terminated; the previous handler afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum} (SIGTERM)")

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def lasts_at_least(time_limit: float | None, max_examples: int | None, *, seconds: float, cases: int) -> bool:
    """Will a campaign of ``time_limit`` seconds (or, with none, ``max_examples`` cases; neither: unbounded) run at
    least ``seconds`` (or ``cases``)? What start-up work may cost is judged by this."""
    if time_limit is not None:
        return time_limit >= seconds
    return max_examples is None or max_examples >= cases


class StopRequest:
    """Which stop a signal asked for ("interrupted" or "terminated"), recorded by ``requesting_stop``."""

    def __init__(self) -> None:
        self.reason: str | None = None


@contextlib.contextmanager
def requesting_stop() -> Iterator[StopRequest]:
    """Inside the block (in the main thread), SIGINT and SIGTERM only record their stop reason: a loop that polls
    it stops its workers wherever the signal lands, where an exception raised at an arbitrary line could leave
    the block before telling them; the previous handlers afterwards."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        request.reason = request.reason or ("terminated" if signum == signal.SIGTERM else "interrupted")

    before = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for signum, previous in before.items():
            signal.signal(signum, previous)


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux); exit now if ``parent`` (the pid expected)
    has already gone, since the request only covers a death after it."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


#: The environment variable a helper process finds its parent's pid in (set by ``child_environment``).
PARENT_ENV = "BNPROPS_PARENT_PID"


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a helper process started from here, which calls ``die_with_this_parent`` first thing."""
    return {**env, PARENT_ENV: str(os.getpid())}


def die_with_this_parent() -> None:
    """die_with_parent for a helper started with child_environment (nothing for one started otherwise)."""
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        die_with_parent(int(parent))

"""A long-lived helper process bnprops talks to over a pipe: its life from launch to close, on both sides.

MXNet reads its environment once, at start-up, so a call that needs another kernel or engine, or that may take
its process down, runs in a helper: ``python -m MODULE BACKEND`` answering length-prefixed pickled requests on
its stdin. HelperProcess is the parent's side: it launches the child without waiting (``launch``), waits for its
"ready" (``wait_ready``, or the first call), then sends one request at a time and waits for the reply within the
call timeout. A child that dies or hangs is killed, the tail of its stderr quoted, and the next call starts
another; every helper is closed at exit. ``answer`` is the child's side: its start and its loop. Subclasses
(mx.worker, mx.sync, judging.in_network) say which module runs, its environment, what a request looks like and
which exceptions their callers see.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

from bnprops.base import lifetime

_HEADER = struct.Struct("<Q")
#: MXNet's import alone takes a few seconds on a loaded 2-core machine.
START_TIMEOUT_S = 180.0
CALL_TIMEOUT_S = 300.0
#: The backends a helper serves (mx.runners.BACKENDS's CPU ones; not imported from there, which imports MXNet).
CPU_BACKENDS = ("onednn", "native")
#: How much of a dead helper's stderr an error quotes.
STDERR_TAIL = 4000
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
#: The child's first statements: die with its parent before its module's imports (MXNet's take seconds; a parent
#: killed meanwhile would leave it running them), then run the module as ``python -m`` would.
_BOOT = (
    "import runpy, sys; from bnprops.base import lifetime; lifetime.die_with_this_parent(); "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def write_message(stream: IO[bytes], payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int, deadline: float | None) -> Any:
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exactly(fd, size, deadline))


def environment_for(backend: str) -> dict[str, str]:
    """This process's environment for a process that runs ``backend`` and imports this package."""
    env = dict(os.environ)
    env["MXNET_MKLDNN_ENABLED"] = "0" if backend == "native" else "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


class HelperProcess:
    """One helper process for one CPU backend, started on first use; each method is safe from any thread (one
    lock: a call, a start or a close at a time), but the kernel kills the process when the thread that started it
    ends (lifetime.die_with_parent), so start it in a thread that outlives it. Messages name it "the BACKEND NAME
    worker"."""

    #: The module the child runs (``answer`` is its main), the helper's name in messages, and the environment it
    #: needs beside its backend's.
    module: ClassVar[str] = ""
    name: ClassVar[str] = "helper"
    environment: ClassVar[dict[str, str]] = {}

    def __init__(
        self, backend: str, *, start_timeout: float = START_TIMEOUT_S, call_timeout: float = CALL_TIMEOUT_S
    ) -> None:
        if backend not in CPU_BACKENDS:
            raise ValueError(f"a {self.name} worker runs on a CPU backend ('onednn' or 'native'), not {backend!r}")
        self.backend = backend
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        #: Has the running process said "ready"? (A launched one has not yet.)
        self._ready = False
        self._stderr: IO[bytes] | None = None
        self._lock = threading.Lock()
        _EVERY.add(self)

    def unavailable(self, message: str) -> Exception:
        """What a caller gets when the process cannot start."""
        return RuntimeError(message)

    def crashed(self, message: str) -> Exception:
        """What a caller gets when the process died or hung during its call."""
        return RuntimeError(message)

    def describe(self, request: Any) -> str:
        """The request, as a crash's message names it (made only for a crash)."""
        return repr(request)[:200]

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def launch(self) -> None:
        """Start the process, if none runs, without waiting for it: it imports MXNet while the caller goes on, and
        the first call waits for what is left of its start-up."""
        with self._lock:
            if not self.alive():
                self._launch()

    def wait_ready(self) -> None:
        """Wait until the process (launched, if none runs) has said "ready"; ``unavailable`` if it cannot."""
        with self._lock:
            if not (self.alive() and self._ready):
                self._start()

    def exchange(self, request: Any) -> tuple[str, Any]:
        """Send ``request`` to a ready process and return its reply, (status, payload); ``crashed`` if the process
        dies or outlasts the call timeout (it is killed: the next call starts another)."""
        with self._lock:
            if not (self.alive() and self._ready):
                self._start()
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            try:
                write_message(proc.stdin, request)
                status, payload = read_message(proc.stdout.fileno(), time.monotonic() + self.call_timeout)
            except (EOFError, BrokenPipeError, TimeoutError) as exc:
                hung = isinstance(exc, TimeoutError)
                self._discard()
                why = f"hung for {self.call_timeout:.0f} s" if hung else f"died (exit status {proc.returncode})"
                raise self.crashed(
                    f"the {self.backend} {self.name} worker (pid {proc.pid}) {why} running {self.describe(request)};"
                    f" its stderr ends:\n{_tail(self._stderr)}"
                ) from exc
        return status, payload

    def close(self, timeout: float = 10.0) -> None:
        """Ask the process to exit (end of its input), kill it if it has not within ``timeout``."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    proc.stdin.close()
                    proc.wait(timeout)
            self._discard()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    def _launch(self) -> None:
        self._discard()
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process; close() closes it)
        self.starts += 1
        self._ready = False
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, self.module, self.backend],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=lifetime.child_environment({**environment_for(self.backend), **self.environment}),
            )
        except OSError as exc:
            raise self.unavailable(
                f"cannot start the {self.backend} {self.name} worker ({sys.executable}): {exc}"
            ) from exc

    def _start(self) -> None:
        """Have a ready process: launch one where none runs, then wait for its "ready" (the time shares file the
        time in a frame of this name as starting a helper)."""
        if not self.alive():
            self._launch()
        assert self._proc is not None and self._proc.stdout is not None
        try:
            hello = read_message(self._proc.stdout.fileno(), time.monotonic() + self.start_timeout)
        except (EOFError, TimeoutError, pickle.UnpicklingError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else "exited"
            self._discard()
            raise self.unavailable(
                f"the {self.backend} {self.name} worker process {why} before it was ready; its stderr:\n"
                + _tail(self._stderr)
            ) from exc
        if hello != ("ready", self.backend):
            self._discard()
            raise self.unavailable(
                f"the {self.backend} {self.name} worker answered {hello!r} instead of ready:\n{_tail(self._stderr)}"
            )
        self._ready = True

    def _discard(self) -> None:
        """Kill the process if it runs, and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


#: Every helper made in this process (closed at exit), and the shared ones by class and backend.
_EVERY: weakref.WeakSet[HelperProcess] = weakref.WeakSet()
_SHARED: dict[tuple[type[HelperProcess], str], HelperProcess] = {}


H = TypeVar("H", bound=HelperProcess)


def shared(kind: type[H], backend: str) -> H:
    """The one helper of class ``kind`` for ``backend`` that this process's callers share, made on first use."""
    if (kind, backend) not in _SHARED:
        _SHARED[kind, backend] = kind(backend)
    helper = _SHARED[kind, backend]
    assert isinstance(helper, kind)
    return helper


def close_shared(kind: type[HelperProcess]) -> None:
    """Close the shared helpers of class ``kind`` (not of its subclasses); the next call starts each again."""
    for (of, _), helper in list(_SHARED.items()):
        if of is kind:
            helper.close()


@atexit.register
def _close_every() -> None:
    for helper in list(_EVERY):
        helper.close()


def _tail(stderr: IO[bytes] | None) -> str:
    """The end of what a helper wrote to its stderr file."""
    if stderr is None:
        return ""
    stderr.flush()
    stderr.seek(0)
    return stderr.read().decode(errors="replace")[-STDERR_TAIL:]


def protocol_channel() -> IO[bytes]:
    """A helper process's reply channel: the original stdout, which the protocol owns; anything MXNet or
    Python prints goes to stderr from here on."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def serve(channel: IO[bytes], call: Callable[[Any], Any], *, error: Callable[[Exception], Any]) -> int:
    """Answer requests on stdin until it closes: ("ok", what ``call`` returns) or ("error", ``error`` of what it
    raised); a reply that cannot be pickled is sent as an error that says so."""
    requests = sys.stdin.buffer.fileno()
    while True:
        try:
            request = read_message(requests, None)
        except EOFError:
            return 0
        try:
            reply: tuple[str, Any] = ("ok", call(request))
        except Exception as exc:
            reply = ("error", error(exc))
        try:
            write_message(channel, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            status, payload = reply
            unsent = (
                f"{type(payload).__name__}: {payload}"
                if status == "error"
                else f"{type(exc).__name__}: the result could not be sent back: {exc}"
            )
            write_message(channel, ("error", unsent))


def other_backend(backend: str) -> tuple[str, str] | None:
    """The refusal of a process asked for ``backend`` whose MXNet runs the other one (None: it runs this one)."""
    from bnprops.mx import runners

    return None if backend == runners.IN_PROCESS_BACKEND else ("wrong backend", runners.IN_PROCESS_BACKEND)


def answer(
    argv: list[str],
    *,
    module: str,
    call: Callable[[Any], Any],
    error: Callable[[Exception], Any] = lambda exc: exc,
    refusal: Callable[[str], Any] = other_backend,
) -> int:
    """A helper process's main: take the protocol's channel, say "ready" (or, where ``refusal`` of the backend
    asked for is not None, say that and exit 1), then ``serve`` requests with ``call`` until stdin closes."""
    if len(argv) != 1 or argv[0] not in CPU_BACKENDS:
        print(f"usage: python -m {module} {{onednn,native}}", file=sys.stderr)
        return 2
    lifetime.die_with_this_parent()
    channel = protocol_channel()
    refused = refusal(argv[0])
    if refused is not None:
        write_message(channel, refused)
        return 1
    write_message(channel, ("ready", argv[0]))
    return serve(channel, call, error=error)

"""A long-lived MXNet process for the CPU backend this process is not running.

MXNet reads MXNET_MKLDNN_ENABLED once, at start-up, so the other backend needs another process.
One worker serves every case for its backend over a pipe: requests are pickled (entry, Case)
pairs, replies pickled Outputs or the exception the runner raised. It starts on first use,
restarts after a crash (the call that crashed gets WorkerCrashed, with the worker's stderr), and
shuts down at exit; a fuzz worker launches its helpers at once and waits for them before its search (``launch``).

Run as ``python -m bnprops.mx.worker BACKEND``: the parent does that; nobody else needs to.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, ClassVar

from bnprops.base import lifetime
from bnprops.model.case import Case, Outputs

_HEADER = struct.Struct("<Q")
#: MXNet's import alone takes a few seconds on a loaded 2-core machine.
START_TIMEOUT_S = 180.0
CALL_TIMEOUT_S = 300.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class WorkerCrashed(RuntimeError):
    """The worker died (or hung) while running a case; the next call starts a fresh one."""


class WorkerError(RuntimeError):
    """The runner raised an exception in the worker that could not be sent back as itself."""


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
    env = dict(os.environ)
    env["MXNET_MKLDNN_ENABLED"] = "0" if backend == "native" else "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


class Worker:
    """One worker process for one CPU backend; ``run`` is safe to call from one thread at a time."""

    #: The module the process runs (its main answers "ready", then (entry, case) calls), what messages call it,
    #: and the environment it needs beside its backend's.
    module = "bnprops.mx.worker"
    name = "backend"
    environment: ClassVar[dict[str, str]] = {}

    def __init__(
        self, backend: str, *, start_timeout: float = START_TIMEOUT_S, call_timeout: float = CALL_TIMEOUT_S
    ) -> None:
        if backend not in ("onednn", "native"):
            raise ValueError(f"a worker serves a CPU backend ('onednn' or 'native'), not {backend!r}")
        self.backend = backend
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        #: Has the running process said "ready"? (A launched one has not yet.)
        self._ready = False
        self._stderr: IO[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _stderr_tail(self, limit: int = 4000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        return text[-limit:]

    def launch(self) -> None:
        """Start the process, if none runs, without waiting for it: it imports MXNet while the caller goes on, and
        the first call waits for what is left of its start-up. Safe to call from one thread at a time."""
        with self._lock:
            if not self.alive():
                self._launch()

    def wait_ready(self) -> None:
        """Wait until the process (launched, if none runs) has said "ready"; BackendUnavailable if it cannot."""
        with self._lock:
            if not (self.alive() and self._ready):
                self._start()

    def _launch(self) -> None:
        from bnprops.mx.runners import BackendUnavailable

        self._discard()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker; close() closes it)
        self.starts += 1
        self._ready = False
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", self.module, self.backend],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=lifetime.child_environment({**environment_for(self.backend), **self.environment}),
            )
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot start the {self.backend} {self.name} worker ({sys.executable}): {exc}"
            ) from exc

    def _start(self) -> None:
        """Have a ready process: launch one where none runs, then wait for its "ready"."""
        from bnprops.mx.runners import BackendUnavailable

        if not self.alive():
            self._launch()
        assert self._proc is not None and self._proc.stdout is not None
        try:
            hello = read_message(self._proc.stdout.fileno(), time.monotonic() + self.start_timeout)
        except (EOFError, TimeoutError, pickle.UnpicklingError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else "exited"
            tail = self._stderr_tail()
            self._discard()
            raise BackendUnavailable(
                f"the {self.backend} {self.name} worker process {why} before it was ready; its stderr:\n{tail}"
            ) from exc
        if hello != ("ready", self.backend):
            tail = self._stderr_tail()
            self._discard()
            raise BackendUnavailable(
                f"the {self.backend} {self.name} worker answered {hello!r} instead of ready:\n{tail}"
            )
        self._ready = True

    def _discard(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()

    def run(self, entry: str, case: Case) -> Outputs:
        """Run ``case`` through ``entry`` in the worker; exceptions the runner raises are raised here."""
        with self._lock:
            if not (self.alive() and self._ready):
                self._start()
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            try:
                write_message(proc.stdin, (entry, case))
                status, payload = read_message(proc.stdout.fileno(), time.monotonic() + self.call_timeout)
            except (EOFError, BrokenPipeError, TimeoutError) as exc:
                hung = isinstance(exc, TimeoutError)
                self._discard()
                code = proc.returncode
                raise WorkerCrashed(
                    f"the {self.backend} {self.name} worker (pid {proc.pid}) "
                    + (f"hung for {self.call_timeout:.0f} s" if hung else f"died (exit status {code})")
                    + f" running {entry} on {case.describe()}; its stderr ends:\n{self._stderr_tail()}"
                ) from exc
        if status == "ok":
            return payload  # type: ignore[no-any-return]
        if isinstance(payload, BaseException):
            raise payload
        raise WorkerError(str(payload))

    def close(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit (end of input), then make sure it has."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.close()
                    proc.wait(timeout)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._discard()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None


_WORKERS: dict[str, Worker] = {}


def worker_for(backend: str) -> Worker:
    """The shared worker for a backend, created on first use."""
    if backend not in _WORKERS:
        _WORKERS[backend] = Worker(backend)
    return _WORKERS[backend]


@atexit.register
def close_all() -> None:
    for worker in list(_WORKERS.values()):
        worker.close()


def protocol_channel() -> IO[bytes]:
    """A worker process's reply channel: the original stdout, which the protocol owns; anything MXNet or
    Python prints goes to stderr from here on."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def serve(channel: IO[bytes], runner_of: Callable[[str], Callable[[Case], Outputs]]) -> int:
    """Answer (entry, case) requests on stdin until it closes: ("ok", outputs) or ("error", what was raised)."""
    requests = sys.stdin.buffer.fileno()
    while True:
        try:
            entry, case = read_message(requests, None)
        except EOFError:
            return 0
        try:
            reply: tuple[str, Any] = ("ok", runner_of(entry)(case))
        except Exception as exc:
            reply = ("error", exc)
        try:
            write_message(channel, reply)
        except (pickle.PicklingError, TypeError, AttributeError):
            write_message(channel, ("error", f"{type(reply[1]).__name__}: {reply[1]}"))


def main(argv: list[str]) -> int:
    """The worker's side: answer requests on stdin until it closes."""
    if len(argv) != 1 or argv[0] not in ("onednn", "native"):
        print("usage: python -m bnprops.mx.worker {onednn,native}", file=sys.stderr)
        return 2
    lifetime.die_with_this_parent()
    backend = argv[0]
    channel = protocol_channel()
    from bnprops.mx import family, runners

    if backend != runners.IN_PROCESS_BACKEND:
        write_message(channel, ("wrong backend", runners.IN_PROCESS_BACKEND))
        return 1
    write_message(channel, ("ready", backend))
    return serve(channel, lambda entry: runners.RUNNERS[entry] if entry in runners.RUNNERS else family.runner(entry))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

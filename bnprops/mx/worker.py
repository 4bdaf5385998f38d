"""A long-lived MXNet process for the CPU backend this process is not running.

MXNet reads MXNET_MKLDNN_ENABLED once, at start-up, so the other backend needs another process.
One worker serves every case for its backend (a helper process, mx.helper_process): requests are
(entry, Case) pairs, replies Outputs or the exception the runner raised. It starts on first use,
restarts after a crash (the call that crashed gets WorkerCrashed, with the worker's stderr), and
shuts down at exit; a fuzz worker launches its helpers at once and waits for them before its search (``launch``).

Run as ``python -m bnprops.mx.worker BACKEND``: the parent does that; nobody else needs to.
"""

from __future__ import annotations

import sys
from typing import Any

from bnprops.model.case import Case, Outputs
from bnprops.mx.helper_process import HelperProcess, answer, shared


class WorkerCrashed(RuntimeError):
    """The worker died (or hung) while running a case; the next call starts a fresh one."""


class WorkerError(RuntimeError):
    """The runner raised an exception in the worker that could not be sent back as itself."""


class Worker(HelperProcess):
    """One worker process for one CPU backend: BackendUnavailable where it cannot start, WorkerCrashed where it dies
    or hangs during a call, the runner's own exception where the runner raises."""

    module = "bnprops.mx.worker"
    name = "backend"

    def unavailable(self, message: str) -> Exception:
        from bnprops.mx.runners import BackendUnavailable

        return BackendUnavailable(message)

    def crashed(self, message: str) -> Exception:
        return WorkerCrashed(message)

    def describe(self, request: Any) -> str:
        entry, case = request
        return f"{entry} on {case.describe()}"

    def run(self, entry: str, case: Case) -> Outputs:
        """Run ``case`` through ``entry`` in the worker; exceptions the runner raises are raised here."""
        status, payload = self.exchange((entry, case))
        if status == "ok":
            return payload  # type: ignore[no-any-return]
        if isinstance(payload, BaseException):
            raise payload
        raise WorkerError(str(payload))


def worker_for(backend: str) -> Worker:
    """The shared worker for a backend, created on first use."""
    return shared(Worker, backend)


def _run(request: tuple[str, Case]) -> Outputs:
    from bnprops.mx import family, runners

    entry, case = request
    return (runners.RUNNERS[entry] if entry in runners.RUNNERS else family.runner(entry))(case)


def main(argv: list[str]) -> int:
    """The worker's side: answer (entry, case) requests on stdin until it closes."""
    return answer(argv, module=Worker.module, call=_run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

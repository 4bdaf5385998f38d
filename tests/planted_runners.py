"""Test-only runners with planted faults, handed to the fuzz API through its runner_factory hook."""

from __future__ import annotations

from collections.abc import Callable

from bnprops.case import Case, Outputs
from bnprops.runners import Runner, runner_for


def dbeta_off_by_one_percent(entry: str, backend: str) -> Runner:
    """The real runner, but dbeta is 1% too large for float64 with a learnable gamma."""
    real = runner_for(entry, backend)  # a backend that cannot run here stays unavailable

    def run(case: Case) -> Outputs:
        out = real(case)
        if case.dtype == "float64" and not case.fix_gamma and "dbeta" in out:
            out["dbeta"] = out["dbeta"] * 1.01
        return out

    return run


def raises_for_float64(entry: str, backend: str) -> Runner:
    """The real runner, but a float64 call raises, as a crash inside MXNet would."""
    real = runner_for(entry, backend)

    def run(case: Case) -> Outputs:
        if case.dtype == "float64":
            raise RuntimeError("planted: float64 refused")
        return real(case)

    return run


def interrupted_after(calls: int) -> Callable[[str, str], Runner]:
    """A factory whose runner acts as if Ctrl-C came after ``calls`` cases."""
    seen = [0]

    def factory(entry: str, backend: str) -> Runner:
        real = runner_for(entry, backend)

        def run(case: Case) -> Outputs:
            seen[0] += 1
            if seen[0] > calls:
                raise KeyboardInterrupt
            return real(case)

        return run

    return factory

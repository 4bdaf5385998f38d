"""Test-only runners with planted faults, handed to the fuzz API through its runner_factory hook."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bnprops.model.case import GRADIENT_OF, NULL_BUFFER_OF, Case, Outputs
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import Runner


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


def writes_null_buffers(entry: str, backend: str) -> Runner:
    """The real runner, but each 'null' request's buffer comes back holding the gradient, as a kernel that
    ignores the request would leave it."""
    real = runner_for(entry, backend)

    def run(case: Case) -> Outputs:
        out = real(case)
        written = real(case.with_(grad_req=tuple("write" if r == "null" else r for r in case.grad_req)))
        for target, key in NULL_BUFFER_OF.items():
            if key in out:
                out[key] = written[GRADIENT_OF[target]]
        return out

    return run


def turns_finite_into_nan(quantity: str) -> Callable[[str, str], Runner]:
    """A factory whose runner is the real one, but the first element of ``quantity`` comes back NaN."""

    def factory(entry: str, backend: str) -> Runner:
        real = runner_for(entry, backend)

        def run(case: Case) -> Outputs:
            out = real(case)
            out[quantity] = out[quantity].copy()
            out[quantity].flat[0] = np.nan
            return out

        return run

    return factory


def writes_gamma(entry: str, backend: str) -> Runner:
    """The real runner, but the gamma array comes back one ulp up in its first element."""
    real = runner_for(entry, backend)

    def run(case: Case) -> Outputs:
        out = real(case)
        gamma = out["gamma"].copy()
        gamma[0] = np.nextafter(gamma[0], gamma.dtype.type(np.inf))
        out["gamma"] = gamma
        return out

    return run

"""BatchNorm judged in context: the in-network results against the same call on a plain copy of its input.

A chain (bnprops.mx.producers.Chain) runs in MXNet (mx.network_kernel) and yields BatchNorm's
results inside the network together with the input x and head gradient dy it received. Those make a
Case; the existing runner for the chain's API (bnprops.mx.backends.runner_for) makes the plain call,
which the oracle judges as always (bnprops.judging.checks.check), and the in-network results must equal the
plain call's: bit for bit where the same kernel runs (the native kernel reads a plain layout whatever
it is given), within twice the error bound where oneDNN runs (it may pick another primitive for a
blocked layout, which may sum in another order).

Findings, by kind: ``differs`` (in-network against plain), ``oracle`` (the plain call against the
oracle), ``raises`` (the chain raised; the message is kept) and ``crashes`` (the process running the
chain died; its exit status and stderr are kept). Chains run in a throwaway worker process
(``isolate=True``, and always on the backend this process is not) or here.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from bnprops.judging.checks import Outcome, check
from bnprops.judging.comparator import Verdict, compare_pair
from bnprops.judging.known_deviations import NETWORK_DEVIATIONS, NetworkDeviation
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.mx.backends import runner_for
from bnprops.mx.helper_process import HelperProcess, answer, close_shared, shared
from bnprops.mx.network_kernel import draw
from bnprops.mx.producers import Chain
from bnprops.mx.runners import IN_PROCESS_BACKEND, Runner, kernel_for, onednn_follows_layout

#: The entry point of the plain call for each API (gluon-hybrid: BatchNorm alone, hybridized).
ENTRY_OF = {"nd": "nd", "gluon": "gluon", "gluon-hybrid": "gluon-hybrid", "sym": "sym"}
FINDING_KINDS = ("differs", "oracle", "raises", "crashes")
#: What the in-network run is, by default: network_kernel.run_in_network, named as module:function so a
#: worker process can import it (tests name planted ones).
DEFAULT_RUNNER = "bnprops.mx.network_kernel:run_in_network"


def known_deviation(finding: ChainFinding) -> NetworkDeviation | None:
    """The recorded network deviation (judging.deviations) that explains a finding, if one does."""
    return next(
        (
            kd
            for kd in NETWORK_DEVIATIONS
            if kd.explains(kind=finding.kind, message=finding.message, chain=finding.chain, backend=finding.backend)
        ),
        None,
    )


class ChainRaised(RuntimeError):
    """MXNet raised while building or running the chain; the message is MXNet's."""


class ChainCrashed(RuntimeError):
    """The process running the chain died (or hung); the message has its exit status and stderr."""


@dataclasses.dataclass(frozen=True)
class ChainFinding:
    kind: str
    chain: Chain
    backend: str
    message: str

    def describe(self) -> str:
        return f"[{self.kind}] {self.chain.describe()} on {self.backend}:\n{self.message}"


@dataclasses.dataclass(frozen=True)
class Result:
    """One chain judged: the case made of what BatchNorm saw, both results, and the findings."""

    chain: Chain
    backend: str
    findings: tuple[ChainFinding, ...]
    case: Case | None = None
    in_network: Outputs | None = None
    plain: Outputs | None = None
    #: Whether the in-network results had to equal the plain call's bit for bit, and whether they did.
    exact: bool = False
    bitwise: bool = False
    outcome: Outcome | None = None

    @property
    def unexplained(self) -> tuple[ChainFinding, ...]:
        """The findings no known network deviation explains."""
        return tuple(f for f in self.findings if known_deviation(f) is None)

    @property
    def known(self) -> tuple[NetworkDeviation, ...]:
        return tuple(kd for f in self.findings if (kd := known_deviation(f)) is not None)

    @property
    def ok(self) -> bool:
        """Nothing but known deviations."""
        return not self.unexplained

    def message(self) -> str:
        lines = [f.describe() for f in self.unexplained]
        lines += ["Reproduce with:", *("    " + ln for ln in self.chain.snippet(backend=self.backend).splitlines())]
        return "\n".join(lines)


def _resolve(path: str) -> Callable[[dict[str, Any]], Outputs]:
    module, _, name = path.partition(":")
    function: Callable[[dict[str, Any]], Outputs] = getattr(importlib.import_module(module), name)
    return function


def _run_here(chain: Chain, runner: str) -> Outputs:
    try:
        return _resolve(runner)(chain.to_dict())
    except Exception as exc:  # MXNetError and whatever a producer raises: a finding, kept with its message
        raise ChainRaised(f"{type(exc).__name__}: {exc}") from exc


class NetworkWorker(HelperProcess):
    """A worker process that runs chains (or any module:function) for one CPU backend: RuntimeError where it cannot
    start, ChainRaised where the function raised, ChainCrashed where it died or hung, then a fresh process."""

    module = "bnprops.judging.in_network"
    name = "chain"

    def crashed(self, message: str) -> Exception:
        return ChainCrashed(message)

    def describe(self, request: Any) -> str:
        _, runner = request
        return str(runner)

    def run(self, chain: Chain, runner: str = DEFAULT_RUNNER) -> Outputs:
        outputs: Outputs = self.call(chain.to_dict(), runner)
        return outputs

    def call(self, spec: dict[str, Any], runner: str) -> Any:
        """``runner(spec)`` (module:function) in the worker process: what it returns, or ChainRaised / ChainCrashed."""
        status, payload = self.exchange((spec, runner))
        if status == "ok":
            return payload
        raise ChainRaised(str(payload))


def worker_for(backend: str) -> NetworkWorker:
    return shared(NetworkWorker, backend)


def close_workers() -> None:
    close_shared(NetworkWorker)


def run_chain(
    chain: Chain, *, backend: str = IN_PROCESS_BACKEND, isolate: bool = False, runner: str = DEFAULT_RUNNER
) -> Outputs:
    """The chain's in-network results (and x, dy) on ``backend``: here, or in a worker process.

    Raises ChainRaised (MXNet raised) or ChainCrashed (the worker process died).
    """
    if backend == IN_PROCESS_BACKEND and not isolate:
        return _run_here(chain, runner)
    return worker_for(backend).run(chain, runner)


def case_of(chain: Chain, captured: Outputs) -> Case:
    """The plain call: the same BatchNorm on a plain copy of the input it received, with the head gradient it got."""
    arrays = draw(chain.to_dict())
    return Case(
        x=np.array(captured["x"], dtype=chain.dtype),
        dy=np.array(captured["dy"], dtype=chain.dtype),
        gamma=arrays["gamma"],
        beta=arrays["beta"],
        moving_mean=arrays["moving_mean"],
        moving_var=arrays["moving_var"],
        axis=chain.axis,
        eps=chain.eps,
        momentum=chain.momentum,
        fix_gamma=chain.fix_gamma,
        regime="in-network",
    )


def same_kernel(case: Case, backend: str) -> bool:
    """Must the in-network call equal the plain one bit for bit? Only where the native kernel runs both (float16
    and float64 everywhere, float32 on the native backend): it reads every layout as a plain one.

    For float32 on oneDNN the kernel follows the input's layout as well as the call: oneDNN takes 4-D input
    with axis 1, and may run another primitive on a blocked layout (nChw8c, nChw16c) than on a plain one; a
    blocked 4-D input after pooling takes the same path with axis=-3 as with axis=1 (the same bits), while
    the plain call with axis=-3 takes the native kernel. Those must agree within twice the error bound; so must
    a plain call and a producer's blocked output before 1.6, when only the latter takes MKL-DNN.
    """
    return kernel_for(case, backend) == "native" and not onednn_follows_layout(case, backend)


def check_chain(
    chain: Chain,
    *,
    backend: str = IN_PROCESS_BACKEND,
    isolate: bool = False,
    runner: str = DEFAULT_RUNNER,
    plain_runner: Runner | None = None,
) -> Result:
    """Run the chain, then the plain call, and judge: in-network against plain, plain against the oracle.

    ``runner`` (module:function) replaces the in-network run, ``plain_runner`` the plain call (planted faults).
    """
    try:
        captured = run_chain(chain, backend=backend, isolate=isolate, runner=runner)
    except ChainRaised as exc:
        return Result(chain, backend, (ChainFinding("raises", chain, backend, str(exc)),))
    except ChainCrashed as exc:
        return Result(chain, backend, (ChainFinding("crashes", chain, backend, str(exc)),))
    case = case_of(chain, captured)
    entry = ENTRY_OF[chain.api]
    plain_call = runner_for(entry, backend) if plain_runner is None else plain_runner
    kept: dict[str, Outputs] = {}

    def keep(c: Case) -> Outputs:
        kept["plain"] = plain_call(c)
        return kept["plain"]

    try:
        outcome = check(case, runner=keep, entry=entry, backend=backend)
    except Exception as exc:  # the plain call itself raising is a finding about BatchNorm alone
        finding = ChainFinding("raises", chain, backend, f"the plain call raised {type(exc).__name__}: {exc}")
        return Result(chain, backend, (finding,), case, captured)
    case, plain = outcome.case, kept["plain"]
    exact = same_kernel(case, backend)
    pair = compare_pair(case, captured, plain, exact=exact)
    bitwise = all(
        np.array_equal(captured[q], plain[q], equal_nan=True) for q in QUANTITIES if q in captured and q in plain
    )
    findings = []
    if not pair.ok:
        findings.append(ChainFinding("differs", chain, backend, _pair_message(pair, exact)))
    if not outcome.ok:
        findings.append(ChainFinding("oracle", chain, backend, outcome.message()))
    return Result(chain, backend, tuple(findings), case, captured, plain, exact, bitwise, outcome)


def _pair_message(verdict: Verdict, exact: bool) -> str:
    rule = "bit for bit (the same kernel)" if exact else "within twice the error bound (oneDNN)"
    lines = [f"BatchNorm's in-network results differ from the plain call's, which must agree {rule}:"]
    for m in verdict.mismatches:
        text = (
            m.describe()
            .replace("expected (oracle)", "plain call       ")
            .replace("actual:           ", "in-network:      ")
        )
        lines.append("  " + text)
    return "\n".join(lines)


def assert_chain_ok(chain: Chain, **options: Any) -> Result:
    """check_chain, raising AssertionError with every finding and the chain's reproducer unless it passes."""
    result = check_chain(chain, **options)
    if not result.ok:
        raise AssertionError(result.message())
    return result


def _call(request: tuple[dict[str, Any], str]) -> Any:
    spec, runner = request
    return _resolve(runner)(spec)


def main(argv: list[str]) -> int:
    """The worker's side: answer (spec, runner) requests on stdin until it closes."""
    return answer(argv, module=NetworkWorker.module, call=_call, error=lambda exc: f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

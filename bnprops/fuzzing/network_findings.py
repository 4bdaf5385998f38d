"""BatchNorm inside networks in the fuzz job: which chain an example runs, its findings, files and replay.

One fuzz example in ``every`` (``chance``) whose target an API can express (``applies``: nd, gluon, gluon-hybrid
and sym on a CPU backend) also draws a producer chain (``producers.chains``); it is built in that API and judged
by ``in_network.check_chain`` in a throwaway worker process, so that a crash is a finding rather than the end of
the campaign. The chain is part of the example, so the database stores it and replay and shrinking reproduce it.

Findings have the kind "network": the quantity says what failed ("differs:dx", "raises:MXNetError",
"crashes", ...) and the chain's op sequence is a flag, so distinct chains are distinct entries; one
that a recorded network deviation explains is "known".  ``finding_json`` and ``script`` write its
files, and ``replay`` is what ``bnprops repro`` does with them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from bnprops.base import reproduction
from bnprops.fuzzing.catalogue import KNOWN, MISMATCH, NETWORK, VERDICTS, Entry, Signature
from bnprops.fuzzing.report.summary import per_target_table
from bnprops.fuzzing.reproducer import call_body, load_example, with_example
from bnprops.judging import in_network
from bnprops.judging.comparator import compare_pair
from bnprops.judging.in_network import ENTRY_OF, ChainFinding, Result, case_of, check_chain, known_deviation
from bnprops.judging.known_deviations import NETWORK_DEVIATIONS
from bnprops.model.case import QUANTITIES, Case
from bnprops.mx.network_kernel import draw
from bnprops.mx.producers import Chain, chain_step_names, chains
from bnprops.mx.runners import Runner, network_unavailable_reason
from bnprops.search.chance import one_in

#: One example in this many runs its chain while exploring (bnprops fuzz --networks). A chain costs about
#: 15-30 ms (built, trained and captured in the worker process, then the plain call and the oracle), a
#: few small examples' worth; the documentation's networks page has the measured cost.
NETWORK_EVERY = 8
#: The backends a chain runs on (in_network.NetworkWorker): the CPU kernels.
CHAIN_BACKENDS = ("onednn", "native")
#: Every chain's signature has this value regime: BatchNorm's input is what the network made.
REGIME = "in-network"
#: What a chain check came to, counted per target in the report: passed, a known deviation, or each kind
#: of new finding (in_network.FINDING_KINDS).
RESULTS = ("passed", "known", "differs", "oracle", "raises", "crashes")
#: The API the chain strategy draws; the target's entry point replaces it (``chain_for``).
_DRAWN_API = "nd"


def network_draws(dtypes: Sequence[str]) -> st.SearchStrategy[Chain]:
    """Drawn on the examples whose coin (search.chance) comes up, with the family's ``chance``; a stored example
    decodes the same under any ``every``."""
    return chains(apis=(_DRAWN_API,), dtypes=dtypes)


def applies(entry: str, backend: str) -> bool:
    """Can a chain run through this target? Its entry point must be one a chain's API maps to, on a CPU kernel."""
    return entry in ENTRY_OF.values() and backend in CHAIN_BACKENDS


def chance(entry: str, backend: str, *, every: int) -> float:
    """How often an example on this target draws, and runs, a chain: one in ``every`` where a chain can run
    (``applies``, and this release has the chain's hooks), else 0."""
    return one_in(every) if applies(entry, backend) and network_unavailable_reason(entry) is None else 0.0


def chain_for(chain: Chain, entry: str) -> Chain:
    """The drawn chain built in the API whose plain call is ``entry``."""
    api = next(a for a, e in ENTRY_OF.items() if e == entry)
    return chain if chain.api == api else chain.with_(api=api)


def chain_flags(chain: Chain) -> tuple[tuple[str, str], ...]:
    """What of the chain a signature keeps: its op sequence ('conv2d>relu>transpose')."""
    return (("chain", chain_step_names(chain)),)


def call_of(chain: Chain, result: Result | None = None) -> Case:
    """The plain call BatchNorm made inside the network: the captured input where the chain got that far, else
    zeros of the input's shape (a chain that raised or crashed captured nothing), with the chain's own dy."""
    if result is not None and result.case is not None:
        return result.case
    arrays = draw(chain.to_dict())
    return case_of(chain, {"x": np.zeros(chain.bn_input_shape, chain.dtype), "dy": arrays["dy"]})


def _whats(finding: ChainFinding, result: Result) -> list[str]:
    """The quantities of a finding ("differs:dx"), one signature each."""
    if finding.kind == "differs" and result.case is not None and result.in_network is not None:
        assert result.plain is not None
        pair = compare_pair(result.case, result.in_network, result.plain, exact=result.exact)
        return [f"differs:{q}" for q in sorted({m.quantity for m in pair.mismatches})] or ["differs"]
    if finding.kind == "oracle" and result.outcome is not None:
        found = sorted({m.quantity for m in result.outcome.unexpected})
        found += [f"stale {kd.id}" for kd in result.outcome.stale]
        return [f"oracle:{q}" for q in found] or ["oracle"]
    if finding.kind == "raises":
        plain = "the plain call raised "
        if finding.message.startswith(plain):
            return ["plain-raises:" + finding.message[len(plain) :].partition(":")[0]]
        return ["raises:" + finding.message.partition(":")[0]]
    return [finding.kind]


@dataclasses.dataclass(frozen=True)
class NetworkCheck:
    """One chain run through one target, and the signatures its findings make."""

    chain: Chain
    backend: str
    result: Result
    signatures: tuple[Signature, ...]

    @property
    def results(self) -> tuple[str, ...]:
        """What the report counts for this check: 'passed', or 'known' / the finding kinds it made."""
        if not self.result.findings:
            return ("passed",)
        return tuple(dict.fromkeys("known" if known_deviation(f) else f.kind for f in self.result.findings))

    def detail(self, sig: Signature) -> str:
        """What the report says about ``sig``: the chain, and the finding's message (and deviation)."""
        head = f"MXNet ({sig.entry}, {sig.backend}): {self.chain.describe()}"
        for f in self.result.findings:
            if sig not in self._signatures_of(f):
                continue
            kd = known_deviation(f)
            if kd is not None:
                return f"{head}\n{VERDICTS[KNOWN]} {kd.id}: {kd.summary}\n{f.message}"
            return f"{head}\n{f.message}"
        return "this example no longer shows the signature when run again (flaky?)"

    def _signatures_of(self, finding: ChainFinding) -> tuple[Signature, ...]:
        return _signatures(finding, self.result)


def _signatures(finding: ChainFinding, result: Result) -> tuple[Signature, ...]:
    chain = result.chain
    kd = known_deviation(finding)
    entry = ENTRY_OF[chain.api]
    return tuple(
        Signature(
            KNOWN if kd is not None else NETWORK,
            what,
            entry,
            result.backend,
            chain.dtype,
            chain_flags(chain),
            REGIME,
            "" if kd is None else kd.id,
        )
        for what in _whats(finding, result)
    )


def check_network(
    chain: Chain, *, entry: str, backend: str, plain_runner: Runner | None = None, runner: str | None = None
) -> NetworkCheck:
    """Build the drawn chain in ``entry``'s API and judge it on ``backend`` in a worker process.

    ``runner`` (module:function) is the in-network run; None: in_network.DEFAULT_RUNNER as it is now.
    """
    built = chain_for(chain, entry)
    runner = in_network.DEFAULT_RUNNER if runner is None else runner
    result = check_chain(built, backend=backend, isolate=True, runner=runner, plain_runner=plain_runner)
    sigs = tuple(dict.fromkeys(s for f in result.findings for s in _signatures(f, result)))
    return NetworkCheck(built, backend, result, sigs)


def chain_of(entry: Entry) -> Chain:
    """The chain a network finding's example ran."""
    if entry.network is None:
        raise ValueError(f"{entry.signature.ident} keeps no chain: is it a network finding?")
    return Chain.from_json(entry.network)


def finding_json(entry: Entry, base: str) -> str:
    """``findings/ID.json`` for a network finding: ``base`` (reproducer.finding_json) plus the chain."""
    return with_example(base, key="chain", example=entry.network, summary=chain_of(entry).describe())


def load_chain(path: Path) -> Chain | None:
    """The chain a finding file keeps; None if it keeps none (not a network finding)."""
    return load_example(path, key="chain", decode=Chain.from_dict)


def script(entry: Entry) -> str:
    """The standalone reproducer (mxnet and numpy only, the shared contract): the chain's own script on the
    finding's backend; a recorded deviation's persists while the network raises as recorded. A finding that the
    plain call disagrees with the oracle ("oracle:dx") is the plain call's: its script makes that call."""
    sig, chain = entry.signature, chain_of(entry)
    about = [sig.describe() + (f" ({VERDICTS[sig.kind]} {sig.deviation})" if sig.kind in VERDICTS else "")]
    what, _, quantity = sig.quantity.partition(":")
    if sig.kind == NETWORK and what == "oracle" and quantity in QUANTITIES:
        plain = Signature(MISMATCH, quantity, ENTRY_OF[chain.api], sig.backend, sig.dtype, (), REGIME)
        body, meaning = call_body(dataclasses.replace(entry, signature=plain))
        return reproduction.script(
            kind=sig.kind,
            ident=sig.ident,
            title="the call BatchNorm made inside a network, made alone",
            about=[*about, f"Chain: {chain.describe()}", f"Call ({entry.reduction}): {entry.case.describe()}"],
            persists=meaning,
            body=body,
        )
    raises = next((kd.signature for kd in NETWORK_DEVIATIONS if kd.id == sig.deviation), "")
    about += [
        f"Example: {entry.reduction}",
        "Builds the network, trains it one step, and runs the same BatchNorm alone (mx.nd.BatchNorm) on a plain",
        "copy of the input it received (bit for bit; on oneDNN float32 a blocked layout may round differently",
        "within the error bound: read the numbers).",
    ]
    recorded = sig.deviation if sig.kind == KNOWN and raises else ""
    return chain.snippet(
        backend=sig.backend, ident=sig.ident, kind=sig.kind, about=about, recorded=recorded, raises=raises
    )


def replay(chain: Chain, sig: Signature, *, entry: str, backend: str) -> bool:
    """Run a network finding's chain again, say what happened, and return whether its finding still shows."""
    checked = check_network(chain, entry=entry, backend=backend)
    print(f"chain: {checked.chain.describe()}")
    if not checked.result.findings:
        how = "bit for bit" if checked.result.bitwise else "within the error bound"
        print(f"in-network and plain results agree ({how}), and the plain call matches the oracle")
    for sig_now in checked.signatures:
        print(f"\n{sig_now.describe()}\n{checked.detail(sig_now)}")
    # Run elsewhere (--entry, --backend), the finding's own signature cannot show: any finding of its kind counts.
    if (entry, backend) == (sig.entry, sig.backend):
        return sig in checked.signatures
    return any(s.kind == sig.kind and s.deviation == sig.deviation for s in checked.signatures)


def summary_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    """The report's table of chain checks: per target, how many passed, matched a recorded deviation, or found."""
    return per_target_table(
        "## BatchNorm inside networks",
        "Producer chains run while exploring (bnprops/mx/producers.py, bnprops/judging/in_network.py; one example in "
        "`network_every`): BatchNorm inside the network against the same call on a plain copy of its input, and "
        "that call against the oracle. A new finding is of kind `network` above; a check can count under several "
        "columns; the time per check includes starting its worker processes.",
        counts,
        RESULTS,
    )

"""Classifying judged cases by signature, and the catalogue of distinct deviations a campaign found.

A signature says what went wrong and where: the kind of finding, the quantity, the entry point,
the backend, the dtype, the case's flags and its value regime.  Two failing cases with the same
signature are taken to be the same deviation; the catalogue keeps one entry per signature with a
count and the smallest case that shows it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from bnprops.judging.checks import Outcome
from bnprops.model.case import Case
from bnprops.model.oracle import statistics

#: Kinds of finding. "known" matches the model of a deviation in
#: judging.deviations; the others are new.
#: "accuracy": beyond the probabilistic error bound, within the deterministic one (model.error_model).
#: "unrecorded": inside a known deviation's region, but neither the oracle's values nor the deviation's model.
#: "relation": an exact metamorphic relation broken (judging.relations); the quantity says which and where.
#: "network": BatchNorm inside a producer chain (fuzzing.network_findings); the quantity says how it failed
#: ("differs:dx", "oracle:dgamma", "raises:MXNetError", "crashes") and the flags name the chain's steps.
#: "sequence": a training sequence left the reference model of the state (fuzzing.sequence_findings); the
#: quantity names the rule where it did and what broke ("backward_again:moving_mean").
MISMATCH, ACCURACY, STALE, ERROR, KNOWN = "mismatch", "accuracy", "stale", "error", "known"
UNRECORDED = "unrecorded"
RELATION = "relation"
NETWORK = "network"
SEQUENCE = "sequence"
#: "member": a BatchNorm family member's call (fuzzing.member_findings); the quantity names the member and what
#: failed ("BatchNormWithReLU/mismatch:dgamma"), the entry is the member's.
MEMBER = "member"
#: "lifecycle": a life-cycle scenario (fuzzing.lifecycle_findings); the quantity names the check and the problem
#: ("export-import/differs:dgamma").
LIFECYCLE = "lifecycle"
KINDS = (MISMATCH, ACCURACY, UNRECORDED, RELATION, NETWORK, SEQUENCE, MEMBER, LIFECYCLE, STALE, ERROR, KNOWN)
#: What a finding of a known deviation's kind says about it, in reports and reproducers.
VERDICTS = {KNOWN: "matches the recorded deviation", UNRECORDED: "deviates, but not as recorded"}
_SIGNATURE_FORMAT = "bnprops.signature/1"


def case_flags(case: Case) -> tuple[tuple[str, str], ...]:
    """Every boolean or string parameter of the case but its regime label, so new Case fields join in."""
    flags = []
    for field in dataclasses.fields(case):
        value = getattr(case, field.name)
        if field.name != "regime" and isinstance(value, bool | str):
            flags.append((field.name, str(value)))
    return tuple(flags)


def value_regime(case: Case) -> str:
    """The regime the data was drawn from (the strategy labels cases 'value/head')."""
    return case.regime.split("/", 1)[0]


@dataclasses.dataclass(frozen=True, order=True)
class Signature:
    """What a finding is: equal signatures are one deviation."""

    kind: str
    quantity: str
    entry: str
    backend: str
    dtype: str
    flags: tuple[tuple[str, str], ...]
    regime: str
    #: The known deviation it is (kind "known"), whose region it is in but whose model it missed
    #: ("unrecorded"), or that did not reproduce ("stale").
    deviation: str = ""

    def __post_init__(self) -> None:
        # One order for flags, however they came (case fields, or a JSON object with sorted keys).
        object.__setattr__(self, "flags", tuple(sorted(self.flags)))
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {KINDS}")

    @property
    def is_new(self) -> bool:
        return self.kind != KNOWN

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _SIGNATURE_FORMAT,
            "kind": self.kind,
            "quantity": self.quantity,
            "entry": self.entry,
            "backend": self.backend,
            "dtype": self.dtype,
            "flags": dict(self.flags),
            "regime": self.regime,
            "deviation": self.deviation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        if data.get("format") != _SIGNATURE_FORMAT:
            raise ValueError(f"not a bnprops signature (format {data.get('format')!r}, expected {_SIGNATURE_FORMAT!r})")
        return cls(
            kind=str(data["kind"]),
            quantity=str(data["quantity"]),
            entry=str(data["entry"]),
            backend=str(data["backend"]),
            dtype=str(data["dtype"]),
            flags=tuple((str(k), str(v)) for k, v in data["flags"].items()),
            regime=str(data["regime"]),
            deviation=str(data.get("deviation", "")),
        )

    @property
    def key(self) -> bytes:
        """The Hypothesis database key under which this signature's minimal example is kept."""
        return b"bnprops-signature:" + json.dumps(self.to_dict(), sort_keys=True).encode()

    @property
    def ident(self) -> str:
        """A stable file-name-safe name: readable fields, then a hash of the whole signature."""
        digest = hashlib.sha256(self.key).hexdigest()[:10]
        what = self.deviation if self.kind in (KNOWN, STALE, UNRECORDED) else self.quantity
        what = "".join(c if c.isalnum() or c in "-_" else "_" for c in what)
        return f"{self.kind}-{what}-{self.entry}-{self.backend}-{self.dtype}-{digest}"

    def describe(self) -> str:
        flags = "".join(f", {k}={v}" for k, v in self.flags)
        dev = f" [{self.deviation}]" if self.deviation else ""
        if self.kind in VERDICTS:
            dev += f" ({VERDICTS[self.kind]})"
        where = f"{self.entry}/{self.backend}, {self.dtype}{flags}"
        return f"{self.kind}{dev}: {self.quantity} via {where}, regime {self.regime}"


def classify(outcome: Outcome, *, backend: str) -> tuple[Signature, ...]:
    """The signatures of a judged case: one per unexpected quantity, stale deviation and explained quantity."""
    case = outcome.case

    def sig(kind: str, quantity: str, deviation: str = "") -> Signature:
        return Signature(
            kind, quantity, outcome.entry, backend, case.dtype, case_flags(case), value_regime(case), deviation
        )

    kinds = {"accuracy": ACCURACY, "unrecorded": UNRECORDED}
    found = [sig(kinds.get(m.kind, MISMATCH), m.quantity, m.deviation) for m in outcome.unexpected]
    found += [sig(STALE, ",".join(sorted(kd.quantities)), kd.id) for kd in outcome.stale]
    found += [sig(KNOWN, q, kd.id) for kd, quantities in outcome.explained for q in sorted(quantities)]
    return tuple(found)


def classify_error(case: Case, error: BaseException, *, entry: str, backend: str) -> Signature:
    """A runner that raises is a finding of its own: the exception type stands for the quantity."""
    return Signature(ERROR, type(error).__name__, entry, backend, case.dtype, case_flags(case), value_regime(case))


def case_size(case: Case) -> tuple[int, int, int]:
    """The order in which a smaller case is preferred as an example: elements, dimensions, then JSON length."""
    return (*_coarse_size(case), len(case.to_json()))


def _coarse_size(case: Case) -> tuple[int, int]:
    """case_size without its JSON length (the costly part): elements, then dimensions."""
    return (int(case.x.size), int(case.x.ndim))


@dataclasses.dataclass
class Entry:
    """One distinct deviation: its signature, how many cases fell under it, and its smallest case."""

    signature: Signature
    count: int
    case: Case
    #: How the example was reduced: "shrunk" (Hypothesis shrinking ran to the end), "partly shrunk"
    #: (stopped by the time limit or an interrupt), "smallest seen" (not shrunk: the smallest case
    #: among those that fell under the signature), "replayed" (from the example database).
    reduction: str
    #: What the comparator said about the example (mismatch description, or the exception).
    detail: str = ""
    #: Kind "relation": the relation the example ran and its parameter choice (Relation.parameters).
    relation: tuple[str, int] | None = None
    #: A network finding (kind "network", or "known" for a recorded network deviation): the producer chain as it
    #: ran (bnprops.mx.producers.Chain JSON); the case is then the plain call BatchNorm made inside it.
    network: str | None = None
    #: A sequence finding (kind "sequence", or "known" for a recorded sequence deviation): the sequence as it ran
    #: (bnprops.search.sequences.Sequence JSON); the case is then its first batch on the initial state.
    sequence: str | None = None
    #: A sequence finding's standalone replay script, as written when the failure showed (it needs the failing
    #: rule's expected values, which only a failing run has).
    replay: str | None = None
    #: A life-cycle finding: its scenario and the worst difference it showed (JSON {"scenario", "error"}); the case
    #: is then the example's first case, which the scenario does not read.
    lifecycle: str | None = None

    def absorb(self, other: Entry) -> None:
        """Fold another entry for the same signature into this one (worker and shard merges)."""
        if other.signature != self.signature:
            raise ValueError(f"cannot merge entries for {other.signature} into {self.signature}")
        self.count += other.count
        if preferred(other, self):
            self.case, self.reduction, self.detail = other.case, other.reduction, other.detail
            self.relation, self.network, self.sequence = other.relation, other.network, other.sequence
            self.replay, self.lifecycle = other.replay, other.lifecycle

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": self.signature.to_dict(),
            "id": self.signature.ident,
            "count": self.count,
            "reduction": self.reduction,
            "detail": self.detail,
            "case_summary": self.case.describe(),
            "case": self.case.to_dict(),
            **({} if self.relation is None else {"relation": {"name": self.relation[0], "choice": self.relation[1]}}),
            **({} if self.network is None else {"chain": json.loads(self.network)}),
            **({} if self.sequence is None else {"sequence": json.loads(self.sequence)}),
            **({} if self.replay is None else {"replay": self.replay}),
            **({} if self.lifecycle is None else {"lifecycle": json.loads(self.lifecycle)}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Entry:
        return cls(
            signature=Signature.from_dict(data["signature"]),
            count=int(data["count"]),
            case=Case.from_dict(data["case"]),
            reduction=str(data["reduction"]),
            detail=str(data.get("detail", "")),
            relation=(str(data["relation"]["name"]), int(data["relation"]["choice"])) if "relation" in data else None,
            network=json.dumps(data["chain"], sort_keys=True) if "chain" in data else None,
            sequence=json.dumps(data["sequence"], sort_keys=True) if "sequence" in data else None,
            replay=str(data["replay"]) if "replay" in data else None,
            lifecycle=json.dumps(data["lifecycle"], sort_keys=True) if "lifecycle" in data else None,
        )


_REDUCTION_RANK = {"shrunk": 0, "replayed": 0, "partly shrunk": 1, "smallest seen": 2}


def rank(entry: Entry) -> tuple[int, tuple[int, int, int]]:
    if entry.sequence is not None:
        size = _sequence_size(entry.sequence)
    elif entry.network is not None:
        size = _chain_size(entry.network)
    else:
        size = case_size(entry.case)
    return (_REDUCTION_RANK.get(entry.reduction, 3), size)


def preferred(entry: Entry, other: Entry) -> bool:
    """Is ``entry``'s example preferred to ``other``'s (rank)? A case's JSON length is written only where its
    reduction, elements and dimensions tie: a known deviation's thousands of examples seldom do."""
    if entry.sequence is None and entry.network is None and other.sequence is None and other.network is None:
        first = (_REDUCTION_RANK.get(entry.reduction, 3), _coarse_size(entry.case))
        second = (_REDUCTION_RANK.get(other.reduction, 3), _coarse_size(other.case))
        if first != second:
            return first < second
    return rank(entry) < rank(other)


def _sequence_size(sequence: str) -> tuple[int, int, int]:
    """A sequence finding's example is its sequence: the shortest first, then the smallest batch, then JSON length."""
    data = json.loads(sequence)
    return (len(data["rules"]), int(np.prod(data["config"]["x_shape"])), len(sequence))


def _chain_size(network: str) -> tuple[int, int, int]:
    """A network finding's example is its chain: the network's input elements, its steps, then JSON length."""
    data = json.loads(network)
    return (int(np.prod(data["input_shape"])), len(data["steps"]), len(network))


class Catalogue:
    """Entries by signature; merging keeps counts additive and the best-reduced, smallest example."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries: dict[Signature, Entry] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Entry) -> None:
        if entry.signature in self.entries:
            self.entries[entry.signature].absorb(entry)
        else:
            self.entries[entry.signature] = dataclasses.replace(entry)

    def merge(self, other: Catalogue) -> None:
        for entry in other.entries.values():
            self.add(entry)

    def __contains__(self, signature: object) -> bool:
        return signature in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def new(self) -> list[Entry]:
        """New deviations, most frequent first."""
        return sorted((e for e in self.entries.values() if e.signature.is_new), key=lambda e: (-e.count, e.signature))

    def known(self) -> list[Entry]:
        return sorted(
            (e for e in self.entries.values() if not e.signature.is_new), key=lambda e: (-e.count, e.signature)
        )


def conditioning(case: Case) -> float:
    """offset/spread: max over channels of |mean| / sqrt(var + eps), how hard the statistics are to compute."""
    mean, var = statistics(case)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(mean) / np.sqrt(var + case.eps)
    ratio = ratio[~np.isnan(ratio)]
    return float(ratio.max()) if ratio.size else 0.0

"""The five shapes a deviation's declaration takes, and what declarations share (reproducer cases, scopes).

A deviation is declared once, in its own module of the deviations package: id, summary, conditions,
model, evidence, reproducer, upstream links, release scope, and what tests need to know about it
(``needs_kernel``, ``every_entry``, ``shortest_on``, ``engine``: attributes, so that no test reads an id's
spelling).  ``conditions`` and ``model`` are short prose; the code beside them is their exact form.
Each class says how it appears in the generated table (``KIND``, ``quantities_text``, ``entries_text``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np

from bnprops.base.family import MEMBER_ENTRIES
from bnprops.judging.deviation_models import Context, Prediction
from bnprops.model.case import GRAD_TARGETS, GRADIENT_OF, Case, param_dtype
from bnprops.mx import folding, mxversion
from bnprops.mx.producers import Chain

#: Entries that run another kernel than BatchNorm's plain entry points (a family member's, or the fold of a
#: drawn convolution): BatchNorm's own deviations say nothing of them; theirs name them.
OTHER_KERNEL_ENTRIES = frozenset(MEMBER_ENTRIES) | {folding.CONV_ENTRY}

#: The upstream field of a declaration names the apache/mxnet issue or pull request that introduced or fixed the
#: deviation (``apache/mxnet#N``), or says what was searched without finding one (``none_found``).
NO_UPSTREAM = "none found"
UPSTREAM_REFERENCE = re.compile(r"\bapache/(?:incubator-)?mxnet#\d+")


def none_found(searched: str) -> str:
    """The upstream field when no apache/mxnet issue or pull request was found: what was searched, and how."""
    return f"{NO_UPSTREAM}: {searched}"


def upstream_problem(upstream: str) -> str | None:
    """Why an upstream field is not acceptable (no reference, and no 'none found: what was searched'), or None."""
    if UPSTREAM_REFERENCE.search(upstream):
        return None
    if upstream.startswith(NO_UPSTREAM + ": ") and len(upstream) > len(NO_UPSTREAM) + 20:
        return None
    return f"names no apache/mxnet#N and does not say 'none found: <what was searched>': {upstream!r}"


def _entries_text(entries: frozenset[str] | None) -> str:
    return "every entry point" if entries is None else ", ".join(sorted(entries))


@dataclasses.dataclass(frozen=True)
class KnownDeviation:
    """A single call's outputs, element by element: ``predict`` says where and what MXNet returns."""

    KIND: ClassVar[str] = "single call"

    id: str
    summary: str
    #: Every quantity this deviation can make fail.
    quantities: frozenset[str]
    #: In short; ``predict`` is their exact form.
    conditions: str
    #: What MXNet returns under it, in short; ``predict`` is its exact form.
    model: str
    predict: Callable[[Context], list[Prediction]]
    evidence: str
    reproducer: Callable[[], Case]
    #: Entry points it shows on (None: all of BatchNorm's; a family member's entry must be named).
    entries: frozenset[str] | None = None
    upstream: str = NO_UPSTREAM
    #: The MXNet releases it holds in (probed by ``bnprops versions``); elsewhere it is absent, not stale.
    releases: mxversion.Releases = mxversion.EVERY_RELEASE
    #: The backend its reproducer needs (tests skip it where this MXNet has none); None: any.
    needs_backend: str | None = None
    #: Tests run its reproducer on every entry point and backend (it was found there), not only one.
    every_entry: bool = False
    #: Its own standalone reproducer (bnprops.base.reproduction's contract), where its entries are a family
    #: member's, whose calls the generated BatchNorm snippets cannot make; None: generated from ``reproducer``.
    script: Callable[[], str] | None = dataclasses.field(default=None, hash=False)

    def holds_in(self, version: str) -> bool:
        return self.releases.holds(version)

    @property
    def quantities_text(self) -> str:
        return ", ".join(sorted(self.quantities))

    @property
    def entries_text(self) -> str:
        return _entries_text(self.entries)

    def predictions(self, ctx: Context, *, entry: str, scoped: bool = True) -> list[Prediction]:
        """What it predicts for the case on this entry point (nothing where it does not apply).

        ``scoped``: only in the releases it holds in (the running MXNet's); ``bnprops versions`` probes
        a reproducer with scoped=False to see whether the deviation is present in a release.
        """
        if self.entries is not None and entry not in self.entries:
            return []
        if self.entries is None and entry in OTHER_KERNEL_ENTRIES:
            return []  # a family member: BatchNorm's reach it only through its plain entry (``like``)
        if scoped and not self.releases.holds_here():
            return []
        # A gradient requested with 'null' is not produced, so it cannot show the deviation.
        absent = {GRADIENT_OF[t] for t in GRAD_TARGETS if ctx.case.request(t) == "null"}
        found = [p for p in self.predict(ctx) if p.quantity not in absent and p.where.any()]
        stray = {p.quantity for p in found} - self.quantities
        assert not stray, f"{self.id} predicts {sorted(stray)}, which it does not declare"
        return found


@dataclasses.dataclass(frozen=True)
class InputDeviation:
    """A departure from the documented contract on input a Case cannot describe (bnprops.mx.contract)."""

    KIND: ClassVar[str] = "input"

    id: str
    summary: str
    conditions: str
    #: Does it explain this observation (entry, backend, parameter, length)?
    applies: Callable[[str, str, str, int], bool]
    #: What MXNet does under it, in short; ``outcomes`` is its checked form.
    model: str
    #: The outcomes (bnprops.mx.contract.Observation.outcome) it predicts for a parameter length.
    outcomes: Callable[[int], frozenset[str]]
    evidence: str
    #: A standalone script that shows it (run it in a throwaway process: it may corrupt its heap).
    reproducer: str
    upstream: str = NO_UPSTREAM
    releases: mxversion.Releases = mxversion.EVERY_RELEASE

    quantities_text: ClassVar[str] = "the call is accepted"
    entries_text: ClassVar[str] = "every entry point"


@dataclasses.dataclass(frozen=True)
class NetworkDeviation:
    """A failure with BatchNorm inside a network (judging.in_network): a finding of ``kind`` whose
    message holds ``signature``, on the chains ``applies`` accepts among ``apis``."""

    KIND: ClassVar[str] = "network"

    id: str
    summary: str
    kind: str  # one of bnprops.judging.in_network.FINDING_KINDS
    #: A substring of the finding's message that identifies it (MXNet's own words).
    signature: str
    conditions: str
    evidence: str
    #: The shortest chain that shows it (bnprops.mx.producers.Chain; its snippet() is the standalone script).
    reproducer: Callable[[], Chain]
    #: The chain APIs it shows on (None: all).
    apis: frozenset[str] | None = None
    #: Which chains among those, on which backend.
    applies: Callable[[Chain, str], bool] = lambda chain, backend: True
    upstream: str = NO_UPSTREAM
    releases: mxversion.Releases = mxversion.EVERY_RELEASE
    #: The backend its reproducer needs (tests skip it elsewhere); None: any.
    needs_backend: str | None = None

    def applies_to(self, chain: Chain, backend: str) -> bool:
        return (self.apis is None or chain.api in self.apis) and self.applies(chain, backend)

    def explains(self, *, kind: str, message: str, chain: Chain, backend: str, scoped: bool = True) -> bool:
        if scoped and not self.releases.holds_here():
            return False
        return kind == self.kind and self.signature in message and self.applies_to(chain, backend)

    def holds_in(self, version: str) -> bool:
        return self.releases.holds(version)

    @property
    def model(self) -> str:
        return f"a '{self.kind}' finding whose message holds '{self.signature}'"

    @property
    def quantities_text(self) -> str:
        return f"{self.kind}: '{self.signature}'"

    @property
    def entries_text(self) -> str:
        return "every chain API" if self.apis is None else ", ".join(sorted(self.apis)) + " chains"


@dataclasses.dataclass(frozen=True)
class SequenceDeviation:
    """A departure over a sequence of calls (judging.state_model checks it; its code is the exact form)."""

    KIND: ClassVar[str] = "sequence"

    id: str
    summary: str
    conditions: str
    model: str
    evidence: str
    #: The shortest sequence of rules that shows it (judging.state_model prints it as a replay script).
    sequence: tuple[str, ...]
    #: What departs from the contract (a fuzz signature's quantity names it).
    affects: str = "moving statistics"
    #: Entry points it shows on (None: all).
    entries: frozenset[str] | None = None
    upstream: str = NO_UPSTREAM
    releases: mxversion.Releases = mxversion.EVERY_RELEASE
    #: The entry point and session configuration its shortest sequence runs on in tests; None: not replayable
    #: by the sequence checks (see ``engine``).
    shortest_on: tuple[str, Mapping[str, object]] | None = dataclasses.field(default=None, hash=False)
    #: The MXNet engine it needs (MXNET_ENGINE_TYPE); None: any, bnprops's NaiveEngine too.
    engine: str | None = None
    #: The backend its shortest sequence needs (elsewhere it cannot show); None: any.
    needs_backend: str | None = None

    def holds_in(self, version: str) -> bool:
        return self.releases.holds(version)

    @property
    def quantities_text(self) -> str:
        return self.affects

    @property
    def entries_text(self) -> str:
        return _entries_text(self.entries)


@dataclasses.dataclass(frozen=True)
class LifecycleDeviation:
    """A failure of BatchNorm through a model's life (judging.lifecycle): a problem of the check ``check`` whose
    ``what`` is ``what`` (its message holding ``signature``, MXNet's own words)."""

    KIND: ClassVar[str] = "life cycle"

    id: str
    summary: str
    #: One of bnprops.mx.lifecycle_kernel.CHECKS.
    check: str
    #: The problem's kind as judging.lifecycle names it ('raises:infer_shape_partial', 'differs:dgamma', ...).
    what: str
    signature: str
    conditions: str
    evidence: str
    #: The shortest scenario that shows it (a lifecycle_kernel spec; the fuzz job's reproducer runs it alone).
    reproducer: Callable[[], Mapping[str, object]]
    upstream: str = NO_UPSTREAM
    releases: mxversion.Releases = mxversion.EVERY_RELEASE

    def explains(self, *, check: str, what: str, message: str, scoped: bool = True) -> bool:
        if scoped and not self.releases.holds_here():
            return False
        return check == self.check and what == self.what and self.signature in message

    def holds_in(self, version: str) -> bool:
        return self.releases.holds(version)

    @property
    def model(self) -> str:
        return f"the {self.check} check's problem '{self.what}', its message holding '{self.signature}'"

    @property
    def quantities_text(self) -> str:
        return self.what

    @property
    def entries_text(self) -> str:
        return f"the {self.check} check"


Declaration = KnownDeviation | InputDeviation | NetworkDeviation | SequenceDeviation | LifecycleDeviation


def minimal(values: list[float], dtype: str, **params: object) -> Case:
    """A one-channel case (x of shape (M, 1)) with a ramp for dy, for reproducers."""
    x = np.asarray(values, dtype=dtype).reshape(-1, 1)
    pdt = param_dtype(dtype)
    return Case(
        x=x,
        dy=np.linspace(-1, 1, x.size).astype(dtype).reshape(x.shape),
        gamma=np.full(1, 1.5, pdt),
        beta=np.full(1, 0.25, pdt),
        moving_mean=np.zeros(1, pdt),
        moving_var=np.ones(1, pdt),
        fix_gamma=False,
        regime="reproducer",
        **params,  # type: ignore[arg-type]
    )


def lifted(case: Case) -> Case:
    """A (M, C) case as (M, C, 1, 1): the same statistics, on the 4-D path oneDNN takes before 1.8."""
    four = {
        f: getattr(case, f).reshape(*case.x.shape, 1, 1)
        for f in ("x", "dy", "prior_dx")
        if getattr(case, f) is not None
    }
    return case.with_(**four)


def empty_batch(dtype: str, *, channels: int = 2, **params: object) -> Case:
    """A case whose batch is empty (shape (0, channels)): a reproducer, and a test case for the contract."""
    pdt = param_dtype(dtype)
    x = np.zeros((0, channels), dtype=dtype)
    return Case(
        x=x,
        dy=x.copy(),
        gamma=np.full(channels, 1.5, pdt),
        beta=np.full(channels, 0.25, pdt),
        moving_mean=np.zeros(channels, pdt),
        moving_var=np.ones(channels, pdt),
        regime="reproducer",
        **params,  # type: ignore[arg-type]
    )


#: What `bnprops versions` measured (reproducers, 90 s campaigns) for the deviations that hold in every release
#: that can express them: 1.3.1 to 1.9.1; oneDNN's only where the wheel has oneDNN (1.7+; before 1.8 on 4-D
#: input with axis=1 only: runners.kernel_for); npx's from 1.6.
#: The GPU backends' deviations are read in MXNet 1.9.1's CUDA and cuDNN source: no GPU has run them here, so
#: nothing was probed; their scope is every release (a narrower one must be probed on both sides), and a release
#: that differs shows them stale, not hidden.
FROM_SOURCE = "from source, not yet run on hardware"
#: The GPU deviations' scope: read, not probed (no GPU here), in lines that are the same from 1.3.1 to 1.9.1.
GPU_SOURCE_SCOPE = mxversion.Releases(
    basis="batch_norm.cu (VARIANCE_TO_INVSTD, the moving statistics' update) and cudnn_batch_norm-inl.h (the cuDNN "
    "calls with 1 - momentum and NULL saved statistics) read the same at tags 1.3.1 and 1.9.1; no GPU here to probe"
)

PROBED_IN_EVERY_RELEASE = mxversion.Releases(
    probed=tuple((v, True) for v in ("1.3.1", "1.4.1", "1.5.1", "1.6.0", "1.7.0", "1.8.0", "1.9.1"))
)
PROBED_WITH_ONEDNN = mxversion.Releases(
    probed=(("1.7.0", True), ("1.8.0", True), ("1.9.1", True)),
    why="needs oneDNN (the 1.3-1.6 'mxnet' wheels have none); reaches 2-D input from 1.8 (apache/mxnet#18504, "
    "v1.x backport #18890)",
)
PROBED_WITH_NPX = mxversion.Releases(
    probed=(("1.6.0", True), ("1.7.0", True), ("1.8.0", True), ("1.9.1", True)), why="needs npx (1.6+)"
)

"""One judged case's derived values — statistics, exactness, the oracle's outputs, both bounds — computed once
each, on first read, by one of two engines behind one interface, and passed to whoever reads them.

``evaluate(case)`` picks the engine: the numpy reference (``Evaluation``), or for large float16/float32 cases
the fused one (``FusedEvaluation``: the same values from a few compiled passes over the data, its per-element
arrays written only when read).  A fused decision within rounding of its threshold sets ``close``; the
judgement then evaluates the case again on the reference engine.  Every value is per channel or per element,
so a stacked group of same-signature cases (channels side by side) is evaluated as one computation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnprops.model import error_model, fused_oracle, fused_sums, gpu_reductions, oracle
from bnprops.model.case import Case, Outputs
from bnprops.model.error_model import Exactness, Propagated
from bnprops.model.fused_oracle import ModelBounds
from bnprops.model.lazy_outputs import LazyOutputs

ENGINES = ("auto", "reference", "fused")


def _frozen(outputs: Outputs) -> Outputs:
    for value in outputs.values():
        value.flags.writeable = False
    return outputs


class Evaluation:
    """The reference engine: every value by the numpy oracle and error model."""

    engine = "reference"

    def __init__(
        self, case: Case, operator: str = "batchnorm", reduction: str = "cpu", *, sizes: tuple[int, ...] | None = None
    ) -> None:
        self.case = case
        #: Whose arithmetic the bounds follow (error_model.OPERATORS).
        self.operator = operator
        #: Which kernels' reductions the bounds cover (gpu_reductions.REDUCTIONS).
        self.reduction = gpu_reductions.check(reduction)
        #: The channel counts of the cases stacked into ``case`` (one case: its own count).
        self.sizes = (case.channels,) if sizes is None else tuple(sizes)
        if sum(self.sizes) != case.channels:
            raise ValueError(f"sizes {self.sizes} add up to {sum(self.sizes)}, the case has {case.channels} channels")
        #: A decision within rounding of its threshold was made on this evaluation's values (fused engine only).
        self.close = False
        self._propagated: dict[str, Propagated] = {}

    # What an engine computes its own way.
    @functools.cached_property
    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """The per-channel mean and variance the call normalises with."""
        return oracle.statistics(self.case)

    @functools.cached_property
    def mean_abs(self) -> np.ndarray:
        return error_model.mean_abs(self.case)

    @functools.cached_property
    def partial_sum_factors(self) -> dict[str, np.ndarray]:
        return error_model.partial_sum_factors(self.case, self.statistics[0], channels=self.case_channels)

    @property
    def case_channels(self) -> int | np.ndarray:
        """The channel count the probabilistic bound spreads its failure probability over: the case's, or for a
        stacked group each channel's own case's (so that a channel's bounds are those of its case)."""
        if len(self.sizes) == 1:
            return self.case.channels
        return np.repeat(np.asarray(self.sizes, dtype=np.int64), self.sizes)

    @functools.cached_property
    def fresh(self) -> Outputs:
        """The oracle's outputs as if every gradient were written (read-only arrays)."""
        return _frozen(oracle.fresh_reference(self.case, self.statistics))

    @functools.cached_property
    def expected(self) -> Outputs:
        """The oracle's outputs as the call requests them ('null' gradients absent, 'add' ones on their prior)."""
        return oracle.requested(self.case, self.fresh)

    @functools.cached_property
    def bound(self) -> Outputs:
        """The deterministic bounds of ``expected``."""
        return self.bounds_of(self.expected)

    @functools.cached_property
    def sharp(self) -> Outputs:
        """The probabilistic bounds of ``expected``, never above the deterministic ones."""
        return error_model.sharpest(self.bounds_of(self.expected, model="probabilistic"), self.bound)

    # What both engines share.
    @functools.cached_property
    def exactness(self) -> Exactness:
        found = error_model.exactness(self.case, self.statistics, operator=self.operator)
        return found if self.reduction == "cpu" else error_model.without_exact_statistics(found)

    @functools.cached_property
    def spread(self) -> gpu_reductions.DataSpread | None:
        """The data's spread where the bounds cover the GPU reduction class, else None."""
        return None if self.reduction == "cpu" else gpu_reductions.spread(self.case, self.statistics[0])

    def propagated(self, model: str) -> Propagated:
        """The statistics' propagated errors under ``model`` (error_model.MODELS)."""
        if model not in self._propagated:
            factors = self.partial_sum_factors if model == "probabilistic" else None
            self._propagated[model] = error_model.propagated_statistics(
                self.case,
                model,
                stats=self.statistics,
                exact=self.exactness,
                mean_abs=self.mean_abs,
                factors=factors,
                operator=self.operator,
                gpu=self.spread,
            )
        return self._propagated[model]

    @functools.cached_property
    def undetermined(self) -> np.ndarray:
        """The channels whose invstd the data does not determine (error_model.indeterminate_channels)."""
        return error_model.indeterminate_channels(self.propagated("deterministic"))

    @functools.cached_property
    def dtypes(self) -> dict[str, str]:
        return oracle.output_dtypes(self.case)

    def bounds_of(self, values: Outputs, *, model: str = "deterministic", training_backward: bool = False) -> Outputs:
        """The error model's bounds around ``values`` (the oracle's, or a deviation model's) for this case."""
        return error_model.bounds(
            self.case,
            values,
            st=self.propagated(model),
            exact=self.exactness,
            fresh=self.fresh,
            model=model,
            training_backward=training_backward,
            operator=self.operator,
        )


class FusedEvaluation(Evaluation):
    """The fused engine: the statistics and sums from three compiled passes, the per-element oracle and bounds
    written only where read (fused_oracle)."""

    engine = "fused"

    def __init__(self, case: Case, *, sizes: tuple[int, ...] | None = None) -> None:
        super().__init__(case, sizes=sizes)
        self._arrays: dict[int, list[np.ndarray]] = {}
        self._model_bounds: dict[str, ModelBounds] = {}

    @functools.cached_property
    def raw(self) -> dict[str, np.ndarray]:
        return fused_sums.raw_sums(self.case)

    @functools.cached_property
    def centred(self) -> dict[str, np.ndarray]:
        return fused_sums.centred_sums(self.case, fused_sums.statistics_mean(self.case, self.raw))

    @functools.cached_property
    def xhat(self) -> dict[str, np.ndarray]:
        return fused_sums.xhat_sums(self.case, self.statistics)

    @functools.cached_property
    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return fused_sums.statistics(self.case, fused_sums.statistics_mean(self.case, self.raw), self.centred)

    @functools.cached_property
    def mean_abs(self) -> np.ndarray:
        return fused_sums.mean_abs(self.case, self.raw)

    @functools.cached_property
    def partial_sum_factors(self) -> dict[str, np.ndarray]:
        return fused_sums.partial_sum_factors(self.case, self.raw, self.centred, channels=self.case_channels)

    @functools.cached_property
    def drifts(self) -> dict[str, np.ndarray]:
        """Which sums drift beyond the probabilistic bound, per channel (before the finite-channel mask)."""
        found, close = fused_sums.drifts(
            self.case, self.statistics[0], self.raw, self.centred, self.partial_sum_factors
        )
        self.close = self.close or close
        return found

    @functools.cached_property
    def per_channel(self) -> Outputs:
        return fused_oracle.fresh_per_channel(self)

    @functools.cached_property
    def fresh(self) -> Outputs:
        return fused_oracle.fresh_reference(self)

    @functools.cached_property
    def expected(self) -> Outputs:
        return fused_oracle.reference(self)

    @functools.cached_property
    def _bounds(self) -> tuple[LazyOutputs, LazyOutputs]:
        return fused_oracle.bounds(self)

    @functools.cached_property
    def bound(self) -> Outputs:
        return self._bounds[0]

    @functools.cached_property
    def sharp(self) -> Outputs:
        return self._bounds[1]

    @functools.cached_property
    def undetermined(self) -> np.ndarray:
        st = self.propagated("deterministic")
        self.close = self.close or fused_oracle.indeterminate_is_close(st)
        return error_model.indeterminate_channels(st)

    @functools.cached_property
    def coefficients(self) -> np.ndarray:
        return fused_oracle.coefficients(self)

    def model_bounds(self, model: str) -> ModelBounds:
        if model not in self._model_bounds:
            self._model_bounds[model] = fused_oracle.model_bounds(self, model)
        return self._model_bounds[model]

    def arrays(self, which: int) -> list[np.ndarray]:
        if which not in self._arrays:
            self._arrays[which] = fused_oracle.arrays(self, which)
        return self._arrays[which]


def evaluate(
    case: Case,
    engine: str = "auto",
    *,
    operator: str = "batchnorm",
    reduction: str = "cpu",
    sizes: tuple[int, ...] | None = None,
) -> Evaluation:
    """A new evaluation of ``case``: on the fused engine where it applies (``auto``: as BNPROPS_FUSED chooses),
    else on the reference. ``operator`` "v1" (BatchNorm_v1's arithmetic) and ``reduction`` "gpu" (the GPU
    kernels' reduction class, gpu_reductions) take the reference engine: the fused kernels compile the CPU
    BatchNorm's terms only. ``sizes``: the channel counts of the cases stacked into ``case``
    (bnprops.mx.batching), so that each channel's bounds are its own case's."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {ENGINES}")
    if operator not in error_model.OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; choose from {error_model.OPERATORS}")
    if operator != "batchnorm" or gpu_reductions.check(reduction) != "cpu":
        if engine == "fused":
            raise ValueError(f"the fused engine computes the CPU BatchNorm's bounds, not {operator}'s on {reduction}")
        return Evaluation(case, operator, reduction, sizes=sizes)
    if engine == "fused" and not fused_sums.supports(case):
        raise ValueError(f"the fused engine takes float16/float32 data with elements, not {case.describe()}")
    fused = engine == "fused" or (engine == "auto" and fused_sums.eligible(case))
    return FusedEvaluation(case, sizes=sizes) if fused else Evaluation(case, sizes=sizes)


#: The reference engine's values, each computed from the case alone (what part() cuts).
_VALUES = (
    "statistics",
    "mean_abs",
    "partial_sum_factors",
    "fresh",
    "expected",
    "bound",
    "sharp",
    "exactness",
    "undetermined",
    "dtypes",
)


def part(ev: Evaluation, cases: Sequence[Case], index: int) -> Evaluation:
    """Case ``index``'s own evaluation, cut out of the reference evaluation ``ev`` of the stacked ``cases``: each
    value computed once for the group, the case given its channels of it. Bit for bit what ``evaluate(case,
    "reference")`` gives: every value is per channel or per element, every per-channel sum adds in one order
    whatever the other channels, and the probabilistic bound spreads over each case's own channels (``sizes``)."""
    if type(ev) is not Evaluation:
        raise ValueError(f"part() cuts the reference engine's evaluation, not a {type(ev).__name__}")
    if tuple(c.channels for c in cases) != ev.sizes:
        raise ValueError(f"the cases' channel counts are not the stacked evaluation's sizes {ev.sizes}")
    for name in _VALUES:
        getattr(ev, name)
    for model in error_model.MODELS:
        ev.propagated(model)
    case = cases[index]
    lo = sum(ev.sizes[:index])
    mine = functools.partial(cut, stacked=ev.case, lo=lo, hi=lo + case.channels)
    found = Evaluation(case, ev.operator, ev.reduction)
    for name in _VALUES:
        found.__dict__[name] = mine(ev.__dict__[name])
    found._propagated = {model: mine(value) for model, value in ev._propagated.items()}
    return found


def cut(value: Any, *, stacked: Case, lo: int, hi: int) -> Any:
    """``value`` (of the stacked case) for its channels ``lo:hi``: arrays of x's shape along the channel axis,
    per-channel arrays along their one axis, containers item by item; anything else is the same for every case."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return value
        if value.shape == stacked.shape:
            index = [slice(None)] * value.ndim
            index[stacked.channel_axis] = slice(lo, hi)
            part = np.ascontiguousarray(value[tuple(index)])
        elif value.shape == (stacked.channels,):
            part = value[lo:hi].copy()
        else:
            raise ValueError(f"cannot cut an array of shape {value.shape} from a case of shape {stacked.shape}")
        part.flags.writeable = value.flags.writeable
        return part
    if isinstance(value, dict):
        return {key: cut(item, stacked=stacked, lo=lo, hi=hi) for key, item in value.items()}
    if isinstance(value, tuple) and not dataclasses.is_dataclass(value):
        return tuple(cut(item, stacked=stacked, lo=lo, hi=hi) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: cut(getattr(value, f.name), stacked=stacked, lo=lo, hi=hi) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **fields)
    return value

"""Many same-signature cases as one BatchNorm call, and its outputs split back per case.

BatchNorm's statistics are per channel, so K cases that share everything but their values can be
stacked along the channel axis into one call with K times the channels.  That call is itself a
valid case, so the oracle and the comparator judge it as they judge any other; splitting maps what
they find back to the case each channel came from.  test_batching shows the stacked call
gives MXNet's unstacked results bit for bit.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from bnprops.model.case import Case, Outputs


def _is_array(value: object) -> bool:
    return isinstance(value, np.ndarray)


def stack(cases: Sequence[Case]) -> Case:
    """One case whose channels are the given cases' channels, in order."""
    if not cases:
        raise ValueError("stack() needs at least one case")
    first = cases[0]
    outside = _shape_outside_channels(first)
    if any(c.x.ndim != first.x.ndim or c.channel_axis != first.channel_axis for c in cases):
        raise ValueError("cannot stack cases with different ranks or channel axes")
    if any(_shape_outside_channels(c) != outside for c in cases):
        raise ValueError("cannot stack cases whose shapes differ outside the channel axis")
    fields: dict[str, object] = {}
    for field in dataclasses.fields(Case):
        values = [getattr(c, field.name) for c in cases]
        if _is_array(values[0]):
            per_element = values[0].shape == first.x.shape
            fields[field.name] = np.concatenate(values, axis=first.channel_axis if per_element else 0)
        elif field.name == "regime":
            fields[field.name] = first.regime if len(set(values)) == 1 else "stacked"
        elif any(not _same(v, values[0]) for v in values[1:]):
            raise ValueError(f"cannot stack cases that differ in {field.name}")
        else:
            fields[field.name] = values[0]
    return Case(**fields)  # type: ignore[arg-type]


def _shape_outside_channels(case: Case) -> tuple[int, ...]:
    return case.shape[: case.channel_axis] + case.shape[case.channel_axis + 1 :]


def _same(a: object, b: object) -> bool:
    if _is_array(a) or _is_array(b):
        return _is_array(a) and _is_array(b) and np.array_equal(a, b)  # type: ignore[arg-type]
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    return a == b


def split(stacked: Case, outputs: Outputs, sizes: Sequence[int]) -> list[Outputs]:
    """Cut ``outputs`` of the stacked call into each case's own, by channel counts ``sizes``."""
    bounds = np.cumsum([0, *sizes])
    if bounds[-1] != stacked.channels:
        raise ValueError(f"sizes add up to {bounds[-1]}, the stacked case has {stacked.channels} channels")
    parts: list[Outputs] = []
    for lo, hi in itertools.pairwise(bounds):
        part: Outputs = {}
        for name, value in outputs.items():
            if value.shape == stacked.x.shape:
                index = [slice(None)] * value.ndim
                index[stacked.channel_axis] = slice(lo, hi)
                part[name] = value[tuple(index)]
            else:
                part[name] = value[lo:hi]
        parts.append(part)
    return parts

"""Hypothesis strategies for SyncBatchNorm cases: BatchNorm's cases it can run, split over 2 to 4 devices."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from hypothesis import strategies as st

from bnprops.model.case import WRITE_ALL, Case, with_channel_axis
from bnprops.model.sync import with_split
from bnprops.mx.sync import MAX_DEVICES, unexpressible_reason
from bnprops.search.strategies import cases

#: The value regimes SyncBatchNorm runs (finite data only).
REGIMES = ("ordinary", "offset", "tiny_spread", "constant", "large", "exact")


def _split(draw: st.DrawFn, rows: int, devices: int, unequal: bool) -> tuple[int, ...]:
    if not unequal:
        return (rows // devices,) * devices
    cuts = sorted(draw(st.lists(st.integers(1, rows - 1), min_size=devices - 1, max_size=devices - 1, unique=True)))
    ends = [0, *cuts, rows]
    return tuple(b - a for a, b in itertools.pairwise(ends))


def cases_for_sync(
    *, unequal: bool | None = False, min_devices: int = 2, max_devices: int = MAX_DEVICES, **options: Any
) -> st.SearchStrategy[Case]:
    """SyncBatchNorm cases: float32, channels on axis 1, training with batch statistics, every gradient written,
    split along axis 0 over ``min_devices``..``max_devices`` devices. Equal parts (the batch cut to a multiple of
    the device count) unless ``unequal`` (None: both); ``options`` go to strategies.cases."""
    base = {
        "dtypes": ["float32"],
        "min_ndim": 2,
        "value_regimes": list(REGIMES),
        "is_train": True,
        "use_global_stats": False,
        "output_mean_var": False,
        "grad_req": st.just(WRITE_ALL),
        **options,
    }
    unequal_s = st.booleans() if unequal is None else st.just(unequal)

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        case = with_channel_axis(draw(cases(**base).filter(lambda c: c.x.size > 0)), 1)
        rows = case.shape[0]
        devices = draw(st.integers(min_devices, max(min_devices, min(max_devices, rows))))
        if rows < devices:
            # Too few rows for the devices: repeat the batch (every device needs a row).
            reps = -(-devices // rows)
            case = case.with_(x=np.concatenate([case.x] * reps), dy=np.concatenate([case.dy] * reps))
            rows = case.shape[0]
        split_unequal = draw(unequal_s) and rows > devices
        if not split_unequal and rows % devices:
            cut = rows - rows % devices
            case = case.with_(x=case.x[:cut], dy=case.dy[:cut])
            rows = cut
        return with_split(case, _split(draw, rows, devices, split_unequal))

    # What the running release cannot express (before 1.5: 3-D and 5-D data) is not drawn.
    return build().filter(lambda case: unexpressible_reason(case) is None)

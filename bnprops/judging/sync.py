"""SyncBatchNorm judged: the whole batch against the BatchNorm oracle under the one-pass error model, and each
device's gradient buffers against its own slice.

The gathered outputs (y and dx over the devices, dgamma and dbeta summed as a trainer's allreduce does) go
through the plain judgement with SyncBatchNorm's evaluation (model.sync), so that the known deviations and the
comparator are BatchNorm's; each device's dgamma and dbeta (its own slice's partial sums, the semantics MXNet
implements) are judged beside them, against the oracle's, or the unequal-batch deviation's model where that
deviation explains the totals; every device's moving statistics and gamma must be the same bits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from bnprops.base.float_warnings import ignoring
from bnprops.judging.deviations.sync_unequal_batches import SYNC_UNEQUAL_BATCHES
from bnprops.judging.judgement import Outcome
from bnprops.judging.judgement import judge as judge_batchnorm
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.model.sync import PARTIALS, SyncEvaluation, kernel_outputs, merged_statistics
from bnprops.mx.sync import adapt

#: The per-device copies of the state every device must agree on, bit for bit.
AGREED = ("moving_mean", "moving_var", "gamma")


@dataclasses.dataclass(frozen=True)
class SyncJudgement:
    """One SyncBatchNorm call judged: the gathered outcome, and what the devices' own buffers showed."""

    outcome: Outcome
    #: One line per device buffer (partial gradient or copy of the state) that is wrong.
    devices: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.outcome.ok and not self.devices

    def message(self) -> str:
        lines = [] if self.outcome.ok else [self.outcome.message()]
        if self.devices:
            lines.append(f"SyncBatchNorm ({self.outcome.entry}), per device, for {self.outcome.case.describe()}:")
            lines += ["  " + line for line in self.devices]
        return "\n".join(lines)


def _partials_wrong(ev: SyncEvaluation, outputs: Outputs, outcome: Outcome, checked: frozenset[str]) -> list[str]:
    """Each device's dgamma and dbeta beyond its bound around the oracle's (or, where the unequal-batch deviation
    explained the totals, its model's)."""
    case = ev.case
    explained = any(kd is SYNC_UNEQUAL_BATCHES for kd, _ in outcome.explained)
    if explained:
        stats = merged_statistics(case)
        expected = kernel_outputs(case, stats)
        bounds = ev.partial_bounds_around(expected, stats)
    else:
        expected, bounds = ev.partials, ev.partial_bounds(ev.partials)
    judged = ~ev.undetermined
    lines = []
    for quantity, key in PARTIALS.items():
        if quantity not in checked or key not in outputs:
            continue
        actual, want = np.asarray(outputs[key], dtype=np.float64), expected[key]
        if actual.shape != want.shape:
            lines.append(f"{key}: shape {actual.shape}, expected {want.shape} (devices, channels)")
            continue
        with ignoring("invalid"):
            off = ~(np.abs(actual - want) <= bounds[key]) & judged[None, :] & ~(quantity == "dgamma" and case.fix_gamma)
        if off.any():
            d, c = (int(i) for i in np.argwhere(off)[0])
            lines.append(
                f"{key}[device {d}, channel {c}]: expected {'model' if explained else 'oracle'} {want[d, c]!r}, "
                f"got {actual[d, c]!r}, bound {bounds[key][d, c]:.3g} ({int(off.sum())} of {off.size} wrong)"
            )
    return lines


def _devices_disagree(outputs: Outputs) -> list[str]:
    lines = []
    for q in AGREED:
        every = outputs.get(q + "_devices")
        if every is None:
            continue
        differ = [d for d in range(1, len(every)) if every[d].tobytes() != every[0].tobytes()]
        if differ:
            lines.append(f"{q}: devices {differ} hold {every[differ[0]]!r}, device 0 {every[0]!r} (must be the same)")
    return lines


def judge(
    case: Case, outputs: Outputs, *, entry: str, kernel: str, checked: Iterable[str] = QUANTITIES
) -> SyncJudgement:
    """Judge SyncBatchNorm's ``outputs`` for ``case`` (as ``adapt`` made it) run through ``entry`` on ``kernel``."""
    checked = frozenset(checked)
    ev = SyncEvaluation(case)
    outcome = judge_batchnorm(case, outputs, entry=entry, kernel=kernel, checked=checked, evaluation=ev)
    devices = _partials_wrong(ev, outputs, outcome, checked) + _devices_disagree(outputs)
    return SyncJudgement(outcome, tuple(devices))


def check_sync(
    case: Case,
    *,
    runner: Callable[[Case], Outputs],
    entry: str,
    kernel: str,
    checked: Iterable[str] = QUANTITIES,
) -> SyncJudgement:
    """Run ``case`` through a SyncBatchNorm runner for ``entry`` (adapted to it) and judge it."""
    case = adapt(entry, case)
    return judge(case, runner(case), entry=entry, kernel=kernel, checked=checked)

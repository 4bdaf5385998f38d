"""The error plot tells a new finding from a known deviation at a glance.

A recorded deviation exceeds the bound just as a new one does; only the judgement tells them apart, so
the sample must carry each point's class and the plot must draw the classes apart.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import pytest

from bnprops.fuzzing.report.plots import cases, headline, panels, plot
from bnprops.fuzzing.tallies import KNOWN, NEW, PASSED, Points, Sampler, WorkerResult, tally_case
from bnprops.judging.checks import check
from bnprops.judging.known_deviations import KNOWN_DEVIATIONS
from bnprops.model.case import QUANTITIES, Case, Outputs
from bnprops.mx import mxversion
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import IN_PROCESS_BACKEND

#: A float16 case whose normaliser overflows: y, dx, dgamma and moving_var depart from the oracle, as recorded.
DEVIATION = next(kd for kd in KNOWN_DEVIATIONS if kd.id == "float16-normaliser-out-of-range")


def sampled(case: Case, outputs: Outputs) -> Points:
    """The case judged on the nd entry point and kept as the fuzz job keeps it for the plot."""
    outcome = check(case, runner=lambda _: outputs, entry="nd", backend=IN_PROCESS_BACKEND)
    sampler = Sampler(10, seed=0)
    tally_case(WorkerResult(worker=0), sampler, ("nd", IN_PROCESS_BACKEND), case, outcome, kernel="test")
    return sampler.points()


def drawn_as(points: Points) -> dict[str, tuple[int, int, int]]:
    """Per quantity with a panel: how many points it draws as passed, known and new."""
    return {p.quantity: (len(p.passed), len(p.known), len(p.new)) for p in panels(points)}


@pytest.fixture(scope="module")
def deviation() -> tuple[Case, Outputs]:
    if not DEVIATION.holds_in(mxversion.running()):
        pytest.skip(f"{DEVIATION.id} is absent in MXNet {mxversion.running()}")
    case = DEVIATION.reproducer()
    return case, runner_for("nd", IN_PROCESS_BACKEND)(case)


def test_a_departure_a_recorded_deviation_explains_is_drawn_as_known_not_as_new(
    deviation: tuple[Case, Outputs],
) -> None:
    points = sampled(*deviation)
    departed = {q for q in QUANTITIES if points.ratio[0, QUANTITIES.index(q)] > 1}
    assert {"y", "dx"} <= departed  # above the bound, where the old plot drew it red
    shown = drawn_as(points)
    for q in departed:
        assert shown[q] == (0, 1, 0), q
    assert shown["dbeta"] == (1, 0, 0)  # the quantities the deviation leaves alone passed
    assert (cases(points).new, cases(points).known) == (0, 1)
    assert headline(cases(points))[0] == "No new finding"


def test_a_departure_no_recorded_deviation_explains_is_drawn_as_a_new_finding(deviation: tuple[Case, Outputs]) -> None:
    case, outputs = deviation
    planted = dict(outputs, dbeta=np.asarray(outputs["dbeta"], np.float64) * 1.5 + 1.0)
    points = sampled(case, planted)
    shown = drawn_as(points)
    assert shown["dbeta"] == (0, 0, 1)
    assert shown["y"] == (0, 1, 0)  # the recorded part of the same case stays known
    assert cases(points).new == 1
    assert headline(cases(points))[0].startswith("New findings in 1 sampled case")


def synthetic(ratios: dict[str, list[float]], kinds: dict[str, list[int]] | None = None) -> Points:
    n = len(next(iter(ratios.values())))
    ratio = np.full((n, len(QUANTITIES)), math.nan)
    kind = np.zeros((n, len(QUANTITIES)), np.int8)
    for q, values in ratios.items():
        ratio[:, QUANTITIES.index(q)] = values
    for q, values in (kinds or {}).items():
        kind[:, QUANTITIES.index(q)] = values
    return Points(np.zeros(n, np.int8), np.ones(n), ratio, kind, n)


def test_only_the_quantities_with_data_get_a_panel_in_report_order() -> None:
    points = synthetic({"dbeta": [0.1, math.nan], "y": [math.nan, 3.0]}, {"y": [PASSED, KNOWN]})
    assert drawn_as(points) == {"y": (0, 1, 0), "dbeta": (1, 0, 0)}


def test_a_case_that_passed_inside_a_stacked_call_is_counted_but_not_drawn() -> None:
    points = synthetic({"dx": [math.nan, 0.5]})
    assert drawn_as(points) == {"dx": (1, 0, 0)}
    assert cases(points) == type(cases(points))(sampled=2, new=0, known=0, passed=1, stacked=1)


def test_a_new_finding_without_a_ratio_is_still_drawn() -> None:
    assert drawn_as(synthetic({"dgamma": [math.nan]}, {"dgamma": [NEW]})) == {"dgamma": (0, 0, 1)}


def width_of(png: bytes) -> int:
    return int(struct.unpack(">I", png[16:20])[0])


@pytest.mark.parametrize("with_data", [1, 3, len(QUANTITIES)])
def test_the_picture_fits_the_report_with_at_most_four_panels_a_row(with_data: int) -> None:
    rng = np.random.default_rng(0)
    points = synthetic({q: list(rng.uniform(0, 2, 200)) for q in QUANTITIES[:with_data]})
    buffer = io.BytesIO()
    plot(points, buffer)
    assert 800 <= width_of(buffer.getvalue()) <= 1200

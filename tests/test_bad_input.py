"""Bad or degenerate input a user can pass: each gets an error or the result the contract defines.

NaN and inf in the data are part of every property's cases (value regime "nonfinite"); here are
the inputs a property cannot draw: parameter arrays of the wrong length (probed in throwaway
processes, bnprops.mx.contract) and a batch with no elements.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import mxnet as mx
import pytest

from bnprops.judging.checks import check
from bnprops.judging.known_deviations import INPUT_DEVIATIONS, empty_batch
from bnprops.mx import contract
from bnprops.mx.backends import runner_for
from bnprops.mx.runners import BACKENDS, ENTRY_POINTS, unavailable_reason
from tests.helpers import skip_unless_available


@pytest.fixture(scope="module")
def wrong_length_observations() -> dict[tuple[str, str], list[contract.Observation]]:
    # Ten throwaway processes, two at a time: each imports MXNet (a few seconds) and may corrupt its heap.
    # A backend this build lacks (oneDNN on mxnet-native) is skipped, not probed under its name.
    pairs = [(entry, backend) for entry in ENTRY_POINTS for backend in BACKENDS if unavailable_reason(backend) is None]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(pairs, pool.map(lambda p: contract.observe(*p), pairs), strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_wrong_length_parameters_are_rejected_or_a_known_deviation(
    entry: str, backend: str, wrong_length_observations: dict[tuple[str, str], list[contract.Observation]]
) -> None:
    skip_unless_available(backend)
    observations = wrong_length_observations[(entry, backend)]
    assert len(observations) == len(contract.probes(entry)), [o.describe() for o in observations]
    for obs in observations:
        known = [d for d in INPUT_DEVIATIONS if d.applies(obs.entry, obs.backend, obs.parameter, obs.length)]
        if obs.rejected:
            assert not known, f"{obs.describe()}, but known deviation {known[0].id} says it is accepted: remove it?"
        else:
            assert known, f"{obs.describe()}: the contract (shape (C,)) wants an error, and no known deviation says so"
            assert obs.outcome in known[0].outcomes(obs.length), f"{obs.describe()}: not as {known[0].id} records"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_empty_batch_is_rejected_or_gives_the_defined_result(entry: str, backend: str) -> None:
    skip_unless_available(backend)  # else BackendUnavailable, a RuntimeError, would pass for a refusal below
    # In MXNet's legacy shapes a 0 means "unknown", so sym, nd and gluon must refuse; the numpy interface
    # allows zero-size arrays, and then the oracle defines the result (empty sums are 0, an empty mean NaN).
    for dtype in ("float32", "float64"):
        for fix_gamma in (False, True):
            case = empty_batch(dtype, channels=3, fix_gamma=fix_gamma)
            if entry == "npx":
                outcome = check(case, runner=runner_for(entry, backend), entry=entry, backend=backend)
                assert outcome.ok, outcome.message()
            else:
                with pytest.raises((mx.base.MXNetError, RuntimeError)):
                    runner_for(entry, backend)(case)

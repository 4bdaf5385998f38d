"""Where a fuzz worker's time goes: each sample of its stack is filed under the right family and part, and the
report's shares and ratio add up."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest

from bnprops.fuzzing import time_shares
from bnprops.fuzzing.time_shares import STARTUP_LABEL, StackSampler, classify, lines, shares


def _called_through(*levels: tuple[str, str], innermost: Callable[[], object]) -> object:
    """``innermost()`` called through a stack of functions, one per (module, function name), outermost first."""
    call = innermost
    for module, name in reversed(levels):
        namespace = {"__name__": module, "inner": call}
        exec(f"def {name}():\n    return inner()", namespace)
        call = namespace[name]
    return call()


def _label(*levels: tuple[str, str]) -> object:
    return _called_through(*levels, innermost=lambda: classify(sys._getframe()))


EXPLORE = ("bnprops.fuzzing.explorer", "explore")
ENGINE = ("hypothesis.core", "run_engine")


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        ((ENGINE, EXPLORE, ("bnprops.judging.checks", "check_group"), ("mxnet.ndarray", "call")), "cases/MXNet"),
        ((ENGINE, ("hypothesis.strategies", "draw")), "cases/drawing"),
        ((ENGINE, ("bnprops.search.strategies", "case_groups")), "cases/drawing"),
        ((ENGINE, EXPLORE, ("bnprops.judging.deviation_models", "model")), "cases/deviation models"),
        ((ENGINE, EXPLORE, ("bnprops.judging.comparator", "compare")), "cases/comparator"),
        ((ENGINE, EXPLORE, ("bnprops.judging.invariants", "hold")), "cases/invariants"),
        ((ENGINE, EXPLORE, ("bnprops.model.error_model", "bound")), "cases/oracle and bounds"),
        ((ENGINE, EXPLORE, ("bnprops.model.case", "fingerprint")), "cases/cases (digests, checks)"),
        ((ENGINE, EXPLORE, ("bnprops.fuzzing.tallies", "tally_case")), "cases/bookkeeping"),
        (
            (ENGINE, EXPLORE, ("bnprops.fuzzing.relation_findings", "check"), ("bnprops.model.oracle", "y")),
            "relations/oracle and bounds",
        ),
        (
            (
                ENGINE,
                EXPLORE,
                ("bnprops.fuzzing.network_findings", "check"),
                ("bnprops.judging.in_network", "call"),
                ("bnprops.mx.helper_process", "_read_exactly"),
            ),
            "networks/MXNet",
        ),
        (
            (EXPLORE, ("bnprops.fuzzing.network_findings", "check"), ("bnprops.mx.helper_process", "_start")),
            "networks/starting helper processes",
        ),
        (
            (("bnprops.fuzzing.worker", "start_helpers"), ("bnprops.mx.helper_process", "_start")),
            STARTUP_LABEL,
        ),
        (
            (
                EXPLORE,
                ("bnprops.fuzzing.network_findings", "check"),
                ("bnprops.judging.in_network", "check_chain"),
                ("bnprops.mx.helper_process", "exchange"),
            ),
            "networks/MXNet",
        ),
        (
            (
                EXPLORE,
                ("bnprops.fuzzing.network_findings", "check"),
                ("bnprops.judging.in_network", "check_chain"),
                ("bnprops.judging.comparator", "compare_pair"),
            ),
            "networks/comparator",
        ),
        (
            (EXPLORE, ("bnprops.fuzzing.member_findings", "check"), ("bnprops.mx.sync", "unexpressible_reason")),
            "members/preparing calls",
        ),
    ],
)
def test_each_sample_is_filed_under_its_family_and_part(levels: tuple[tuple[str, str], ...], expected: str) -> None:
    assert _label(*levels) == expected, f"expected {expected} for the stack {levels}"


def test_the_shares_add_up_and_give_the_ratio_outside_over_inside_mxnet() -> None:
    found = shares([{"cases/MXNet": 2, "cases/drawing": 3}, {"relations/MXNet": 2, "relations/comparator": 1}])
    assert found["samples"] == 8
    assert found["parts"] == {"MXNet": 0.5, "drawing": 0.375, "comparator": 0.125}
    assert found["where"] == {"cases": 0.625, "relations": 0.375}
    assert found["outside_over_inside"] == pytest.approx(1.0)
    text = "\n".join(lines(found))
    assert "MXNet 50%" in text and "1.0 s of bnprops per second of MXNet" in text, text


def test_the_wait_for_helpers_before_the_search_is_stated_beside_the_shares_not_among_them() -> None:
    found = shares([{STARTUP_LABEL: 150, "cases/MXNet": 1, "cases/drawing": 1}, {STARTUP_LABEL: 50}])
    assert found["samples"] == 2, f"expected the search's 2 samples alone, got {found['samples']}"
    assert found["parts"] == {"MXNet": 0.5, "drawing": 0.5}, found["parts"]
    assert found["before_search"] == 200, found["before_search"]
    assert found["outside_over_inside_with_before"] == pytest.approx(201.0), found
    text = "\n".join(lines(found))
    assert "0.2 s more, not in the shares (with them, 201.0 s of bnprops per second of MXNet)" in text, text


def test_no_samples_say_not_measured() -> None:
    assert shares([])["outside_over_inside"] is None
    assert lines(shares([]))[-1] == "Not measured."


def test_the_sampler_samples_the_thread_that_made_it() -> None:
    def busy() -> None:
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass

    with StackSampler(interval_s=0.005) as sampler:
        _called_through(("mxnet.ndarray", "call"), innermost=busy)
    assert sampler.counts.get("cases/MXNet", 0) >= 100, f"expected the busy MXNet frame's 300 ms, got {sampler.counts}"


def test_a_sample_weighs_its_time_so_python_and_released_gil_time_count_alike() -> None:
    def python_busy() -> None:
        end = time.perf_counter() + 0.6
        while time.perf_counter() < end:
            pass

    def sleeping() -> None:
        time.sleep(0.6)

    with StackSampler() as sampler:
        _called_through(("bnprops.model.oracle", "y"), innermost=python_busy)
        _called_through(("mxnet.ndarray", "call"), innermost=sleeping)
    python, released = sampler.counts.get("cases/drawing", 0), sampler.counts.get("cases/MXNet", 0)
    assert 0.75 < python / released < 1.33, f"0.6 s of Python weighed {python} ms, 0.6 s in C {released} ms"


def test_a_stack_that_cannot_be_read_is_counted_apart_and_the_sampler_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def torn(frame: object) -> str:
        raise AttributeError("'str' object has no attribute 'get'")  # as a frame torn down under the walk reads

    monkeypatch.setattr(time_shares, "classify", torn)
    with StackSampler(interval_s=0.005) as sampler:
        time.sleep(0.2)
    assert set(sampler.counts) == {time_shares.UNREAD}
    assert sampler.counts[time_shares.UNREAD] >= 150, "the sampler stopped at the first stack it could not read"


def test_the_sampled_thread_yields_the_gil_soon_while_sampled_and_as_before_after() -> None:
    before = sys.getswitchinterval()
    with StackSampler():
        assert sys.getswitchinterval() <= time_shares.SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == before

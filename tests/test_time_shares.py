"""Where a fuzz worker's time goes: each sample of its stack is filed under the right family and part, and the
report's shares and ratio add up."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

import pytest

from bnprops.fuzzing import time_shares
from bnprops.fuzzing.time_shares import (
    STARTUP_LABEL,
    StackReader,
    StackSampler,
    classify_stack,
    lines,
    module_of_file,
    shares,
    stack_in_dump,
)


def _called_through(*levels: tuple[str, str], innermost: Callable[[], object]) -> object:
    """``innermost()`` called through a stack of functions, one per (module, function name), outermost first; each
    function's module is its ``__name__`` and its source file's place under bnprops's root (as the sampler reads)."""
    call = innermost
    for module, name in reversed(levels):
        namespace = {"__name__": module, "inner": call}
        source = os.path.join(time_shares._OWN_ROOT, *module.split(".")) + ".py"
        exec(compile(f"def {name}():\n    return inner()", source, "exec"), namespace)
        call = namespace[name]
    return call()


def _label(*levels: tuple[str, str]) -> object:
    def innermost() -> object:
        with StackReader() as reader:  # (the sampler's own reading, of this thread)
            stack = reader.stack(threading.get_ident())
        assert stack is not None
        return classify_stack(stack[stack.index(levels[-1]) :])  # (from the stack's innermost level outwards)

    return _called_through(*levels, innermost=innermost)


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
    def torn(stack: object) -> str:
        raise ValueError("a dump the parser did not expect")

    monkeypatch.setattr(time_shares, "classify_stack", torn)
    with StackSampler(interval_s=0.005) as sampler:
        time.sleep(0.2)
    assert set(sampler.counts) == {time_shares.UNREAD}
    assert sampler.counts[time_shares.UNREAD] >= 150, "the sampler stopped at the first stack it could not read"


def test_the_sampled_thread_yields_the_gil_soon_while_sampled_and_as_before_after() -> None:
    before = sys.getswitchinterval()
    with StackSampler():
        assert sys.getswitchinterval() <= time_shares.SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == before


def test_the_sampler_reads_the_sampled_stack_without_another_threads_frame_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Walking another thread's frame objects crashed fuzz workers (Python 3.11: f_back on a frame whose caller had
    # returned while the walk yielded the GIL; a segfault in PyFrame_GetBack). The sampler must not need them.
    def refused() -> object:
        raise AssertionError("the sampler asked for another thread's frame objects")

    monkeypatch.setattr(sys, "_current_frames", refused)

    def busy() -> None:
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass

    with StackSampler(interval_s=0.005) as sampler:
        _called_through(
            ENGINE, EXPLORE, ("bnprops.judging.checks", "check_group"), ("mxnet.ndarray", "call"), innermost=busy
        )
    assert sampler.counts.get("cases/MXNet", 0) >= 100, f"expected the busy MXNet frame's 300 ms, got {sampler.counts}"
    assert time_shares.UNREAD not in sampler.counts, sampler.counts


def test_a_stack_is_read_from_the_dump_of_its_own_thread_and_a_cut_stack_is_unread() -> None:
    dump = (
        "Thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/r/other.py", line 3 in elsewhere\n\n'
        "Current thread 0x00007f00000000ab (most recent call first):\n"
        '  File "/r/mxnet/ndarray.py", line 7 in call\n'
        '  File "/r/bnprops/fuzzing/explorer.py", line 9 in explore\n\n'
        "Thread 0x00007f0000000002 (most recent call first):\n"
        '  File "/r/third.py", line 1 in <module>\n'
    )
    assert stack_in_dump(dump, 0x7F00000000AB) == [
        ("/r/mxnet/ndarray.py", "call"),
        ("/r/bnprops/fuzzing/explorer.py", "explore"),
    ]
    assert stack_in_dump(dump, 0x7F00000000CD) is None, "a thread the dump lacks has no stack"
    cut = dump.replace("line 9 in explore\n", "line 9 in explore\n  ...\n")
    assert stack_in_dump(cut, 0x7F00000000AB) is None, (
        "a stack cut at faulthandler's depth limit has lost its outer frames"
    )


def test_a_source_file_is_named_as_the_module_it_is_under_the_longest_root() -> None:
    roots = ["/venv/lib", "/venv/lib/site-packages", ""]
    assert module_of_file("/venv/lib/site-packages/mxnet/ndarray/ndarray.py", roots) == "mxnet.ndarray.ndarray"
    assert module_of_file("/venv/lib/site-packages/mxnet/__init__.py", roots) == "mxnet"
    assert module_of_file("/elsewhere/x.py", roots) == ""
    assert module_of_file("<string>", roots) == ""


def test_the_reader_names_this_threads_own_modules() -> None:
    with StackReader() as reader:
        stack = reader.stack(threading.get_ident())
    assert stack is not None, "the dump lacks this thread"
    (module, function), (caller, test) = stack[:2]
    assert (module, function) == ("bnprops.fuzzing.time_shares", "stack"), stack[:2]
    assert __name__.endswith(caller) and test == "test_the_reader_names_this_threads_own_modules", stack[:2]

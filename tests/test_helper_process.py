"""The helper process's life, on a child without MXNet: start, calls, a death, a hang, a refusal, close, sharing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest

from bnprops.mx.helper_process import HelperProcess, answer, close_shared, environment_for, shared
from tests.helper_children import MODE


class Child(HelperProcess):
    module = "tests.helper_children"
    name = "test"


class Mute(Child):
    environment: ClassVar[dict[str, str]] = {MODE: "mute"}


class Refusing(Child):
    environment: ClassVar[dict[str, str]] = {MODE: "refuse"}


def gone(pid: int) -> bool:
    """Has the process ended (a zombie has: its parent may be an init that does not reap)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_one_process_answers_many_requests_and_an_exception_raised_there_is_a_reply_not_a_crash() -> None:
    helper = Child("native")
    try:
        assert [helper.exchange(("echo", v)) for v in (1, "two", [3.0])] == [("ok", 1), ("ok", "two"), ("ok", [3.0])]
        status, payload = helper.exchange(("raise", "planted"))
        assert status == "error" and isinstance(payload, ValueError) and str(payload) == "planted", payload
        assert helper.starts == 1, f"expected one start for four calls, got {helper.starts}"
    finally:
        helper.close()


def test_a_helper_that_dies_in_a_call_is_reported_with_its_status_and_stderr_and_the_next_call_starts_another() -> None:
    helper = Child("native")
    try:
        helper.exchange(("echo", 0))
        pid = helper.pid
        with pytest.raises(
            RuntimeError, match=r"(?s)died \(exit status 3\) running \('complain'.*planted complaint: x"
        ):
            helper.exchange(("complain", "x"))
        assert helper.exchange(("echo", 1)) == ("ok", 1)
        assert helper.starts == 2 and helper.pid != pid, f"expected a second process, got {helper.starts} starts"
    finally:
        helper.close()


def test_a_call_that_outlasts_the_call_timeout_kills_the_helper() -> None:
    helper = Child("native", call_timeout=0.5)
    try:
        helper.wait_ready()
        pid = helper.pid
        assert pid is not None
        with pytest.raises(RuntimeError, match=r"hung for 0 s running \('sleep', 60\)"):
            helper.exchange(("sleep", 60))
        assert gone(pid), f"the hung helper (pid {pid}) still runs"
    finally:
        helper.close()


def test_a_helper_that_never_says_ready_is_killed_after_the_start_timeout() -> None:
    helper = Mute("native", start_timeout=0.5)
    helper.launch()
    pid = helper.pid
    assert pid is not None
    with pytest.raises(RuntimeError, match="test worker process timed out before it was ready"):
        helper.wait_ready()
    assert gone(pid) and not helper.alive(), f"the helper that never started (pid {pid}) still runs"
    helper.close()


def test_a_helper_that_refuses_its_backend_says_what_it_answered() -> None:
    helper = Refusing("onednn")
    with pytest.raises(RuntimeError, match=r"answered \('refused', 'onednn'\) instead of ready"):
        helper.exchange(("echo", 0))
    helper.close()


def test_a_result_that_cannot_be_pickled_comes_back_as_an_error_that_says_so() -> None:
    helper = Child("native")
    try:
        status, payload = helper.exchange(("unpicklable", 0))
        assert status == "error" and "could not be sent back" in payload, (status, payload)
        assert helper.exchange(("echo", 2)) == ("ok", 2), "the helper lost its place in the protocol"
    finally:
        helper.close()


def test_launch_does_not_wait_and_the_first_call_uses_the_launched_process() -> None:
    helper = Child("native")
    try:
        helper.launch()
        pid = helper.pid
        assert pid is not None and helper.alive()
        assert helper.exchange(("echo", 5)) == ("ok", 5)
        assert helper.pid == pid and helper.starts == 1
    finally:
        helper.close()
    assert not helper.alive() and gone(pid)


def test_threads_sharing_a_helper_each_get_their_own_replies() -> None:
    helper = Child("native")
    wrong: list[tuple[int, object]] = []

    def ask(thread: int) -> None:
        for i in range(40):
            reply = helper.exchange(("echo", (thread, i)))
            if reply != ("ok", (thread, i)):
                wrong.append((thread, reply))

    threads = [threading.Thread(target=ask, args=(t,)) for t in range(4)]
    helper.wait_ready()  # here: a helper dies with the thread that started it (lifetime.die_with_parent)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        helper.close()
    assert not wrong and helper.starts == 1, f"replies crossed between threads: {wrong[:3]}"


def test_shared_helpers_are_one_per_class_and_backend_and_close_shared_closes_only_its_class() -> None:
    first, again, other = shared(Child, "native"), shared(Child, "native"), shared(Refusing, "native")
    assert first is again and first is not other and shared(Child, "onednn") is not first
    try:
        first.launch()
        close_shared(Child)
        assert not first.alive()
        assert first.exchange(("echo", 3)) == ("ok", 3), "a closed shared helper did not start again"
    finally:
        close_shared(Child)


def test_a_helper_for_a_backend_it_cannot_serve_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="runs on a CPU backend"):
        Child("cudnn")
    assert answer(["cudnn"], module="tests.helper_children", call=print) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_helper_still_importing_its_module_dies_with_the_process_that_launched_it() -> None:
    parent = f"""
import os, time
from bnprops.mx.helper_process import HelperProcess
class Slow(HelperProcess):
    module = "tests.helper_children"
    environment = {{"{MODE}": "slow-import"}}
helper = Slow("native")
helper.launch()
print(helper.pid, flush=True)
time.sleep(0.5)
os._exit(0)
"""
    done = subprocess.run(
        [sys.executable, "-c", parent], capture_output=True, text=True, env=environment_for("native"), timeout=60
    )
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid), f"the helper (pid {pid}) outlived the process that launched it while importing its module"

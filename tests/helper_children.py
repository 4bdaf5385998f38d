"""Test-only helper processes for the base class's tests: no MXNet, so they start in a fraction of a second.

BNPROPS_TEST_CHILD chooses the child: "serve" answers requests, "refuse" answers its start with something other
than ready, "mute" never answers, "slow-import" takes a minute to import (as MXNet may on a loaded machine).
A request is (what, value): echo it, raise it, sleep it, complain on stderr and exit, or return something that
cannot be pickled.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from bnprops.mx.helper_process import answer

MODE = "BNPROPS_TEST_CHILD"
if os.environ.get(MODE) == "slow-import":
    time.sleep(60)


def _call(request: tuple[str, Any]) -> Any:
    what, value = request
    if what == "echo":
        return value
    if what == "raise":
        raise ValueError(value)
    if what == "sleep":
        time.sleep(value)
        return value
    if what == "complain":
        print(f"planted complaint: {value}", file=sys.stderr, flush=True)
        os._exit(3)
    if what == "unpicklable":
        return lambda: value
    raise AssertionError(f"unknown request {what!r}")


def main(argv: list[str]) -> int:
    mode = os.environ.get(MODE, "serve")
    if mode == "mute":
        time.sleep(600)
        return 0
    return answer(
        argv, module=__name__, call=_call, refusal=lambda backend: None if mode == "serve" else ("refused", backend)
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

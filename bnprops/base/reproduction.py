"""The one contract of every standalone reproducer bnprops writes, whatever kind of finding it reproduces.

A reproducer (a single call, an exact relation, a network, a training sequence, an explain question)
is ``script(...)``: the same header (what it reproduces; bnprops's version, the kind and the id; how to
read the exit status), the kind's own body, which defines ``main()`` and returns ``verdict(...)``, and
the same ending. ``verdict`` prints the difference and a last line that says whether the deviation
persists: exit status 1 while it does (as recorded, for a known deviation; as found, for a new
finding), 0 once it is gone. Bodies take what they run as arguments of ``main`` with defaults, so a
test can run the very same check on a planted fault.
"""

from __future__ import annotations

from collections.abc import Sequence

from bnprops import __version__

#: The exit statuses of every reproducer.
PERSISTS, GONE = 1, 0
#: The last line a reproducer prints starts with one of these.
PERSISTS_LINE, GONE_LINE = "deviation persists", "deviation gone"

_VERDICT = '''
def verdict(persists, difference):
    """The contract: print the difference, then 1 while the deviation persists (as AS says), 0 once it is gone."""
    print(difference)
    if persists:
        print(f'{PERSISTS_LINE} ({AS}): exit status {PERSISTS}')
        return {PERSISTS}
    print(f'{GONE_LINE} (MXNet no longer shows it {AS}): exit status {GONE}')
    return {GONE}
'''


def script(
    *, kind: str, ident: str, title: str, about: Sequence[str], persists: str, body: str, recorded: str = ""
) -> str:
    """A standalone reproducer (mxnet and numpy only): the shared header, ``body`` (it defines ``main()``, which
    returns ``verdict(...)``), and the shared ending.

    ``persists`` says in a few words what persisting means for this finding; ``recorded`` is the known
    deviation's id when the script checks a recorded deviation (it then persists while MXNet shows it as
    recorded), empty for a new finding (it persists while MXNet disagrees as found).
    """
    how = f"as recorded (known deviation {recorded})" if recorded else "as found"
    head = [
        "#!/usr/bin/env python3",
        f'"""bnprops reproducer: {title}',
        "",
        f"bnprops {__version__}; kind {kind}; finding {ident}",
        *about,
        "",
        "Needs only mxnet (1.9.1) and numpy.",
        f"Exit status {PERSISTS} while the deviation persists, {how}: {persists}.",
        f"Exit status {GONE} once it is gone. The last line printed says which.",
        '"""',
        "from __future__ import annotations",
        "",
        "import sys",
        "",
        "import numpy as np",
        "",
        f"AS = {how!r}",
        "",
        _VERDICT.replace("{PERSISTS_LINE}", PERSISTS_LINE)
        .replace("{GONE_LINE}", GONE_LINE)
        .replace("{PERSISTS}", str(PERSISTS))
        .replace("{GONE}", str(GONE)),
        "",
    ]
    tail = ["", "", "if __name__ == '__main__':", "    sys.exit(main())", ""]
    return "\n".join(head) + "\n" + body.strip("\n") + "\n" + "\n".join(tail)

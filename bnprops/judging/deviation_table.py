"""The deviations page, rendered from the registry: a table, then each deviation's conditions, model and evidence.

The page is generated, never edited by hand, so that it cannot drift from the declarations: a test
compares the committed page with this rendering, and ``bnprops deviations --markdown --out PATH``
writes it again.
"""

from __future__ import annotations

import re

from bnprops.judging.declarations import (
    Declaration,
    KnownDeviation,
    LifecycleDeviation,
    NetworkDeviation,
    SequenceDeviation,
)
from bnprops.judging.deviations import ALL

#: Where the page lives in the repository, and the command that writes it.
PAGE = "docs/deviations.md"
REGENERATE = f"bnprops deviations --markdown --out {PAGE}"

_REFERENCE = re.compile(r"\bapache/(incubator-mxnet|mxnet)#(\d+)")


def _linked(text: str) -> str:
    """apache/mxnet#N as a link to the issue or pull request (GitHub redirects between the two)."""
    return _REFERENCE.sub(lambda m: f"[{m.group(0)}](https://github.com/apache/{m.group(1)}/issues/{m.group(2)})", text)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _row(d: Declaration) -> str:
    cells = [
        f"[`{d.id}`](#{d.id})",
        d.KIND,
        d.summary,
        d.quantities_text,
        d.entries_text,
        d.releases.describe() + ("" if d.releases.probed else " (not probed)"),
        _linked(d.upstream),
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _details(d: Declaration) -> list[str]:
    lines = [f"### {d.id}", "", _cell(d.summary), "", f"- **conditions**: {_cell(d.conditions)}"]
    lines.append(f"- **model**: {_cell(d.model)}")
    if isinstance(d, KnownDeviation | NetworkDeviation):
        lines.append(f"- **reproducer**: `{d.reproducer().describe()}`")
        if isinstance(d, KnownDeviation) and d.script is not None:
            lines.append(f"- **standalone reproducer**: `{d.id}` (`{d.script.__module__}.{d.script.__name__}`)")
    elif isinstance(d, LifecycleDeviation):
        scenario = ", ".join(f"{k}={v}" for k, v in d.reproducer().items())
        lines.append(f"- **reproducer**: the life-cycle scenario `{scenario}` (bnprops.mx.lifecycle_kernel)")
    elif isinstance(d, SequenceDeviation):
        lines.append(f"- **shortest sequence**: {', '.join(d.sequence)}")
    else:
        lines.append(f"- **reproducer**:\n\n```python\n{d.reproducer}\n```\n")
    why = f" ({_linked(_cell(d.releases.why))})" if d.releases.why else ""
    lines.append(f"- **releases**: {d.releases.describe()}{why}; {_linked(_cell(d.releases.provenance()))}")
    lines += [f"- **evidence**: {_cell(d.evidence)}", f"- **upstream**: {_linked(_cell(d.upstream))}", ""]
    return lines


def markdown() -> str:
    """The page: every declaration in the registry's order (by id)."""
    lines = [
        "# Known deviations of MXNet's BatchNorm",
        "",
        f"Generated from the deviations registry; do not edit by hand. Regenerate with `{REGENERATE}`.",
        "Kinds: *single call* (a model of the outputs, element by element), *input* (input a case cannot "
        "describe), *network* (BatchNorm inside a chain of layers), *sequence* (state over several calls), "
        "*life cycle* (a model exported, cast, inferred or switched between training and inference).",
        "",
        "To record a deviation, add one module to the registry (bnprops/judging/deviations/) declaring `DEVIATIONS`: "
        "its declaration with the model's code beside it, a reproducer, the releases it was probed in and the "
        "attributes tests read (the backend it needs, where its sequence replays); then regenerate this page. "
        "tests/test_known_deviations.py runs every reproducer against its model and plants a fault in its region.",
        "",
        "| id | kind | summary | quantities | entry points | releases | upstream |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(_row(d) for d in ALL),
        "",
        "## Each deviation",
        "",
    ]
    for d in ALL:
        lines += _details(d)
    return "\n".join(lines).rstrip("\n") + "\n"

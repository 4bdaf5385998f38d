"""The family page's table of registered members, rendered from the registry, so that it cannot drift from
the code. A test compares the committed page with this rendering; ``bnprops family --write`` rewrites it.
"""

from __future__ import annotations

from bnprops.judging.known_deviations import KNOWN_DEVIATIONS
from bnprops.search.family import MEMBERS

PAGE = "docs/batchnorm-family.md"
REGENERATE = f"bnprops family --write {PAGE}"
BEGIN = "<!-- family table: generated from the registry by `bnprops family --write`; do not edit -->"
END = "<!-- end of the family table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """One row per member entry: the member, its operator, its kernels, its judge and strategy, its deviations."""
    lines = [
        BEGIN,
        "",
        "| member | entry | operator | onednn kernel | native kernel | judge | strategy | deviations scoped to it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for member in MEMBERS:
        for entry in member.entries:
            kernels = [member.kernels.get(k) for k in ("onednn", "native")]
            scoped = sorted(kd.id for kd in KNOWN_DEVIATIONS if kd.entries is not None and entry in kd.entries)
            lines.append(
                f"| {member.name} | `{entry}` | {_cell(member.operator)} | "
                + " | ".join("runs" if k is None else f"no: {_cell(k)}" for k in kernels)
                + f" | `{member.spec.judge}` | `{member.spec.strategy}` | "
                + (", ".join(f"`{d}`" for d in scoped) or "none")
                + " |"
            )
    modules = ", ".join(f"`{m.spec.mx}`" for m in MEMBERS)
    lines += ["", f"Each member is one `MemberSpec` in `bnprops.base.family.MEMBERS`; their mx modules: {modules}."]
    return "\n".join([*lines, "", END])


def rewritten(page: str) -> str:
    """``page`` with its table (between BEGIN and END) rendered afresh; ValueError where it has none."""
    start, stop = page.find(BEGIN), page.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"the page has no family table between {BEGIN!r} and {END!r}")
    return page[:start] + markdown() + page[stop + len(END) :]

"""The architecture page's module map, rendered from the package itself: each layer's modules with the first
sentence of their docstrings, so that the map cannot drift from the code.  A test compares the committed page
with this rendering; ``bnprops modules --write`` writes the map into the page again.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import bnprops

PAGE = "docs/architecture.md"
REGENERATE = f"bnprops modules --write {PAGE}"
#: The layers, bottom up: each imports only from its own and those below (the code-quality tests check it).
LAYERS = ("base", "model", "mx", "judging", "search", "fuzzing", "commands")
BEGIN = "<!-- module map: generated from the docstrings by `bnprops modules --write`; do not edit -->"
END = "<!-- end of the module map -->"
_SENTENCE = re.compile(r"(.+?[.!?])(\s|$)", re.S)


def first_sentence(doc: str) -> str:
    """A docstring's first sentence, on one line (its first paragraph where no sentence ends in it)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    found = _SENTENCE.match(paragraph)
    return (found.group(1) if found else paragraph).replace("|", "\\|")


def modules(root: Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """Per layer, its modules and subpackages (a subpackage by its own docstring: its modules are its business, so
    adding one, a deviation say, leaves the map alone) with their docstrings' first sentences."""
    root = root or Path(bnprops.__file__).parent
    found: dict[str, list[tuple[str, str]]] = {}
    for layer in LAYERS:
        rows = []
        for path in sorted([*(root / layer).glob("*.py"), *(root / layer).glob("*/__init__.py")]):
            relative = path.relative_to(root / layer).with_suffix("")
            if relative == Path("__init__"):
                continue
            name = relative.parent.name if relative.name == "__init__" else relative.name
            rows.append((name, first_sentence(ast.get_docstring(ast.parse(path.read_text())) or "")))
        found[layer] = sorted(rows)
    return found


def markdown(root: Path | None = None) -> str:
    """The map: a heading per layer, bottom up (its package docstring's first sentence), a line per module."""
    root = root or Path(bnprops.__file__).parent
    lines = [BEGIN]
    for layer, rows in modules(root).items():
        init = ast.get_docstring(ast.parse((root / layer / "__init__.py").read_text())) or ""
        lines += ["", f"### `bnprops.{layer}`", "", first_sentence(init), ""]
        lines += [f"- `{name}`: {summary}" for name, summary in rows]
    return "\n".join([*lines, "", END])


def rewritten(page: str, root: Path | None = None) -> str:
    """``page`` with its map (between BEGIN and END) rendered afresh; ValueError where it has no map."""
    start, stop = page.find(BEGIN), page.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"the page has no module map between {BEGIN!r} and {END!r}")
    return page[:start] + markdown(root) + page[stop + len(END) :]

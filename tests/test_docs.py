"""The README stays a newcomer's first page and the documentation stays true to the code.

The README is short and links the docs/ pages, which hold the rest; those links resolve. Module
docstrings say why in a few lines, and no docstring or comment names a source file by its path,
which a move would make stale (name the module or the function instead).
"""

from __future__ import annotations

import ast
import io
import re
import shlex
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PACKAGE = ROOT / "bnprops"

MAX_README_LINES = 200
MAX_MODULE_DOCSTRING_LINES = 15
#: Pages that another change writes; until it lands, a link to them is allowed to dangle.

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
#: A source file named by its path: bnprops/judging/invariants.py, tests/test_fuzz.py, ../shared/seed/.
SOURCE_PATH = re.compile(r"\b(?:bnprops|tests)/[\w./]*\.py\b|\.\./shared/")


def links_in(page: Path) -> list[str]:
    """Every markdown link target on the page, code blocks left out."""
    text = re.sub(r"^( {4}|\t).*$", "", page.read_text(), flags=re.MULTILINE)
    return LINK.findall(text)


def heading_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def local_links(page: Path) -> list[tuple[str, Path, str]]:
    """(link as written, the file it points at, its anchor or '') for each link that is not a URL."""
    found = []
    for target in links_in(page):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        found.append((target, (page.parent / path).resolve() if path else page, anchor))
    return found


def readme_docs_links() -> list[str]:
    return sorted({target.partition("#")[0] for target in links_in(README) if target.startswith("docs/")})


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def docstring_of(node: ast.AST) -> tuple[int, int, str] | None:
    """(first line, last line, text) of a module's, class's or function's docstring, or None."""
    if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) or not node.body:
        return None
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.lineno, first.end_lineno or first.lineno, first.value.value
    return None


def docstrings_and_comments(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every docstring (module, class, function) and every comment in a source file."""
    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        docstring = docstring_of(node)
        if docstring is not None:
            found.append((docstring[0], docstring[2]))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.append((token.start[0], token.string))
    return found


def test_the_readme_is_under_200_lines() -> None:
    lines = len(README.read_text().splitlines())
    assert lines < MAX_README_LINES, f"README.md has {lines} lines: move the detail to a docs/ page and link it"


def test_the_readme_links_every_docs_page() -> None:
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md")}
    assert pages, "docs/ has no pages"
    unlinked = sorted(pages - set(readme_docs_links()))
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


@pytest.mark.parametrize("link", readme_docs_links())
def test_every_docs_link_in_the_readme_resolves_to_a_file(link: str) -> None:
    assert (ROOT / link).is_file(), f"README.md links {link}, which does not exist"


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_local_link_and_anchor_in_the_documentation_resolves(page: Path) -> None:
    broken = []
    for target, path, anchor in local_links(page):
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("module", package_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_docstring_is_longer_than_15_lines(module: Path) -> None:
    docstring = docstring_of(ast.parse(module.read_text(), filename=str(module)))
    assert docstring is not None, "the module has no docstring"
    lines = docstring[1] - docstring[0] + 1
    assert lines <= MAX_MODULE_DOCSTRING_LINES, (
        f"the module docstring is {lines} lines: say why in a few, and move the explanation to a docs/ page"
    )


def test_no_docstring_or_comment_in_the_package_names_a_source_file_by_path() -> None:
    found = [
        f"{module.relative_to(ROOT)}:{line}: {match}"
        for module in package_modules()
        for line, text in docstrings_and_comments(module)
        for match in SOURCE_PATH.findall(text)
    ]
    assert not found, "name the module or function instead of its file:\n" + "\n".join(found)


def test_the_path_check_catches_a_path_in_a_comment_and_in_a_docstring(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        '"""See bnprops/judging/invariants.py."""\n\nx = "tests/test_x.py"  # tests/test_fuzz.py checks it\n'
    )
    texts = [text for _, text in docstrings_and_comments(source)]
    assert [SOURCE_PATH.findall(text) for text in texts] == [["bnprops/judging/invariants.py"], ["tests/test_fuzz.py"]]


def test_the_readmes_test_command_is_the_one_ci_runs() -> None:
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert len(ci) == 1, "CI's script should run one pytest command"
    blocks = [line for line in README.read_text().splitlines() if line.startswith("    ") and "pytest" in line]
    assert shlex.split(ci[0]) in [shlex.split(block) for block in blocks], (
        f"the README's test command differs from what CI runs: {ci[0]}"
    )


def test_the_module_map_is_the_packages_own() -> None:
    from bnprops.commands import module_map

    page = (ROOT / module_map.PAGE).read_text()
    assert module_map.rewritten(page) == page, f"the module map is stale: rewrite it with  {module_map.REGENERATE}"


def test_a_stale_module_map_is_refused_and_rewritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bnprops.commands import cli, module_map

    page = tmp_path / "architecture.md"
    fresh = (ROOT / module_map.PAGE).read_text()
    page.write_text(fresh.replace("- `oracle`: ", "- `oracle`: (stale) "))
    assert cli.main(["modules", "--check", str(page)]) == cli.EXIT_FOUND
    assert module_map.REGENERATE in capsys.readouterr().err
    assert cli.main(["modules", "--write", str(page)]) == cli.EXIT_OK
    assert page.read_text() == fresh


def test_a_page_without_a_module_map_is_a_usage_error(tmp_path: Path) -> None:
    from bnprops.commands import cli

    page = tmp_path / "notes.md"
    page.write_text("# no map here\n")
    with pytest.raises(SystemExit) as done:
        cli.main(["modules", "--write", str(page)])
    assert done.value.code == 2 and page.read_text() == "# no map here\n"


def test_the_family_table_is_the_registrys_own() -> None:
    from bnprops.commands import family_table

    page = (ROOT / family_table.PAGE).read_text()
    assert family_table.rewritten(page) == page, (
        f"the family table is stale: rewrite it with  {family_table.REGENERATE}"
    )


def test_a_stale_family_table_is_refused_and_rewritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bnprops.commands import cli, family_table

    page = tmp_path / "family.md"
    fresh = (ROOT / family_table.PAGE).read_text()
    page.write_text(fresh.replace("| `sym-v1` |", "| `sym-v2` |"))
    assert cli.main(["family", "--check", str(page)]) == cli.EXIT_FOUND
    assert family_table.REGENERATE in capsys.readouterr().err
    assert cli.main(["family", "--write", str(page)]) == cli.EXIT_OK
    assert page.read_text() == fresh

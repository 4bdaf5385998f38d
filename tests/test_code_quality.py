"""ruff and mypy on the package are part of the test suite, so CI enforces them."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "bnprops", "tests", "conftest.py"),
        ("ruff", "format", "--check", "bnprops", "tests", "conftest.py"),
        ("mypy", "bnprops"),
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_the_package_passes_static_checks(command: tuple[str, ...]) -> None:
    if shutil.which(command[0]) is None and run_tool(command[0], "--version").returncode != 0:
        pytest.fail(f"{command[0]} is not installed: install the dev extras with  pip install -e '.[mxnet,dev]'")
    result = run_tool(*command)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"


# The subpackages, bottom up: a module imports from its own layer and the ones before it (docs: architecture).
LAYERS = ("base", "model", "mx", "judging", "search", "fuzzing", "commands")
PACKAGE = ROOT / "bnprops"


def imported_modules(path: Path) -> set[str]:
    """Every bnprops module a file imports, at the top or inside a function (``bnprops.x.y`` or ``bnprops.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bnprops":
            found.update(
                f"{node.module}.{alias.name}" if is_module(f"{node.module}.{alias.name}") else node.module
                for alias in node.names
            )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "bnprops")
    return found


def is_module(dotted: str) -> bool:
    """Is ``bnprops.x.y`` a module or package (not a name inside one)?"""
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_module_lives_in_a_layer() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside the subpackages {LAYERS}: {loose}; move each into the layer of its concern"
    # A layer may hold subpackages of its own (judging's deviations registry): what counts is the top one.
    unknown = sorted({p.relative_to(PACKAGE).parts[0] for p in package_modules()} - set(LAYERS))
    assert not unknown, f"subpackages not in LAYERS {LAYERS}: {unknown}; add them in their place, bottom up"


def test_modules_import_only_from_their_own_layer_and_those_below() -> None:
    upward = []
    for path in package_modules():
        own = layer_of(module_name(path))
        assert own is not None
        for target in sorted(imported_modules(path)):
            layer = layer_of(target)
            if layer is not None and layer > own:
                upward.append(f"{module_name(path)} imports {target} ({LAYERS[own]} < {LAYERS[layer]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_no_module_imports_itself_back_through_a_circle() -> None:
    graph = {module_name(p): {m for m in imported_modules(p) if layer_of(m) is not None} for p in package_modules()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            circle = visit(target, [*path, node])
            if circle:
                return circle
        done.add(node)
        return None

    for module in sorted(graph):
        circle = visit(module, [])
        assert circle is None, "import circle: " + " -> ".join(circle)


def test_no_class_is_longer_than_150_lines() -> None:
    long = [
        f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path in package_modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and node.end_lineno and node.end_lineno - node.lineno + 1 > 150
    ]
    assert not long, "classes that do several jobs (split them):\n" + "\n".join(long)


def test_no_two_classes_in_the_package_share_a_name() -> None:
    # One name, one meaning: a reader (or a grep) finds the class a name stands for without reading the imports.
    where: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(module_name(path))
    shared = {name: modules for name, modules in where.items() if len(modules) > 1}
    assert not shared, "class names used more than once (name each for what it is):\n" + "\n".join(
        f"{name}: {', '.join(modules)}" for name, modules in sorted(shared.items())
    )

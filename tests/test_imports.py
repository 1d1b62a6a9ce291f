"""No import circle among the package's modules, counting imports inside functions and under
TYPE_CHECKING too: a module that needs another's name at run time and is needed by it back is two
modules that belong together, or a piece that belongs in a third."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MODULES = {
    ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
    for p in (SRC / "appraiser").rglob("*.py")
    if "migrations" not in p.parts
}


def owner(name: str) -> str | None:
    """The package module `name` lives in (appraiser.store.tables.Promotion -> ...tables)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imported(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            name = owner(target)
            # a submodule's import of its own package's __init__ is Python's doing, not a cycle
            if name and name != module and not module.startswith(name + "."):
                found.add(name)
    return found


def test_the_package_has_no_import_circle() -> None:
    graph = {module: imported(module) for module in MODULES}
    assert len(graph) > 30 and graph["appraiser.tracking"], "the walk found the imports"
    graphlib.TopologicalSorter(graph).prepare()  # CycleError names the circle


def test_the_check_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"a"}}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError:
        return
    raise AssertionError("a circle went unnoticed")

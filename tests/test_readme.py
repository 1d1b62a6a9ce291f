"""The README stays readable in one sitting, and its layout is the code's: every path it names
exists, and every module of the package is named (a new module without a line fails here)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PACKAGE = REPO / "src" / "appraiser"


def layout() -> set[str]:
    """The paths the `## Layout` tree names, relative to the repository ("src/appraiser/cli/")."""
    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    named: set[str] = set()
    parents: list[tuple[int, str]] = []  # (indent, folder) of the enclosing entries
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        entry = line.split()[0]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        base = parents[-1][1] if parents else ""
        for part in re.split(r",\s*", entry):
            named.add(base + part)
        if entry.endswith("/"):
            parents.append((indent, base + entry))
    return named


def test_the_readme_is_short_and_starts_with_the_quick_start() -> None:
    lines = README.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines (at most 300: details go to docs/)"
    assert "## Quick start" in lines[:40]


def test_every_path_the_layout_names_exists() -> None:
    missing = sorted(p for p in layout() if not (REPO / p).exists())
    assert not missing, f"the README's layout names what is not there: {missing}"


def test_every_module_of_the_package_is_in_the_layout() -> None:
    named = layout()
    # these folders' lines stand for their modules: one module per command group or resource
    summarised = ("src/appraiser/cli/", "src/appraiser/api/routers/")
    modules = [
        path.relative_to(REPO).as_posix()
        for path in PACKAGE.rglob("*.py")
        if path.name not in {"__init__.py", "__main__.py"} and "migrations" not in path.parts
    ]
    unnamed = sorted(m for m in modules if m not in named and not m.startswith(summarised))
    assert not unnamed, f"modules the README's layout does not name: {unnamed}"

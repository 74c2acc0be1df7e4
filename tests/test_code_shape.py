"""The team's shape rules for reqcheck/, checked: short functions, imports that flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reqcheck"
MAX_FUNCTION_LINES = 80


def _trees() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    """The reqcheck modules a module imports anywhere (at the top, inside functions, for type checking)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reqcheck."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "reqcheck":
            found.update(alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("reqcheck."))
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    long = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, tree in _trees().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_no_import_cycle() -> None:
    graph = {module: _imports(tree) - {module} for module, tree in _trees().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start]
        )

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert cycles == []


def test_nothing_below_the_cli_imports_it() -> None:
    importers = sorted(m for m, tree in _trees().items() if "cli" in _imports(tree) and m != "__main__")
    assert importers == []

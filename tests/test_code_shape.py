"""The team's shape rules for reqcheck/, checked: short functions and files, imports that flow one way by layer.

`LAYERS` is the one written copy of which sub-package may import which; docs/design.md explains it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reqcheck"
PLUGIN = ROOT / "pytest_plugin"
MAX_FUNCTION_LINES = 80
MAX_TRAINING_FUNCTION_LINES = 60  # the training loop reads as its steps: each one a short function
MAX_FILE_LINES = 450  # past this a module holds more than one job
BACKEND_CALLS = {"classify", "judge", "check", "check_batch", "generate"}  # what only a backend answers
FOUNDATION = {"errors", "atomic", "choices"}  # modules at reqcheck/ that every layer may import
TOP = {"cli", "demo", "__main__"}
# layer: the layers it may import (besides itself). `top` (CLI, demo, plugin) may import every layer.
LAYERS: dict[str, set[str]] = {
    "foundation": set(),
    "formats": {"foundation"},
    "models": {"foundation", "formats"},
    "training": {"foundation", "formats", "models"},
    "checking": {"foundation", "formats", "models"},
    "gating": {"foundation", "formats"},
    "publishing": {"foundation", "formats", "gating"},
    "serving": {"foundation", "formats", "models", "checking"},
    "top": {
        "foundation",
        "formats",
        "models",
        "training",
        "checking",
        "gating",
        "publishing",
        "serving",
        "top",
    },
}
TORCH_FREE = {"foundation", "formats", "gating"}
HEAVY = ("torch", "transformers", "peft", "accelerate")  # safetensors reads headers with numpy


def _module_name(path: Path) -> str:
    if path.is_relative_to(PLUGIN):
        return "pytest_reqcheck." + path.stem
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _trees() -> dict[str, ast.Module]:
    files = sorted(PACKAGE.rglob("*.py")) + sorted(PLUGIN.glob("*.py"))
    return {
        _module_name(p): ast.parse(p.read_text(encoding="utf-8"))
        for p in files
        if "examples" not in p.relative_to(ROOT).parts
    }


def layer(module: str) -> str:
    """The layer a module (dotted name) belongs to."""
    parts = module.split(".")
    if parts[0] == "pytest_reqcheck" or (len(parts) == 2 and parts[1] in TOP):
        return "top"
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in FOUNDATION):
        return "foundation"  # the root package holds only __version__ and lazy exports
    return parts[1]


def _imports(tree: ast.Module) -> set[str]:
    """Every module a module imports anywhere (at the top, inside functions, for type checking)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "reqcheck imports absolutely (from reqcheck.x import y)"
            found.add(node.module or "")
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _internal(module: str, tree: ast.Module, known: set[str]) -> set[str]:
    return {name for name in _imports(tree) if name in known and name != module}


def test_no_function_is_longer_than_80_lines() -> None:
    long = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, tree in _trees().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_no_training_function_is_longer_than_60_lines() -> None:
    long = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, tree in _trees().items()
        if layer(module) == "training"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_TRAINING_FUNCTION_LINES
    ]
    assert long == []


def test_no_module_is_longer_than_450_lines() -> None:
    files = sorted(PACKAGE.rglob("*.py")) + sorted(PLUGIN.glob("*.py"))
    long = [
        f"{path.relative_to(ROOT)}: {lines} lines"
        for path in files
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES
    ]
    assert long == []


def test_gating_calls_no_backend() -> None:
    """Gating receives predictions; only the plugin's runner (and the CLI, demo, serving) call a model."""
    calls = sorted(
        f"{module} calls .{node.func.attr}()"
        for module, tree in _trees().items()
        if layer(module) == "gating"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in BACKEND_CALLS
    )
    assert calls == []


def test_imports_follow_the_layer_table() -> None:
    trees = _trees()
    known = set(trees)
    wrong = sorted(
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, tree in trees.items()
        for target in _internal(module, tree, known)
        if layer(target) != layer(module) and layer(target) not in LAYERS[layer(module)]
    )
    assert wrong == []


def test_checking_never_imports_publishing_and_nothing_imports_the_top() -> None:
    assert "publishing" not in LAYERS["checking"]
    trees = _trees()
    known = set(trees)
    importers = {
        target: sorted(m for m, tree in trees.items() if target in _internal(m, tree, known))
        for target in ("reqcheck.cli", "reqcheck.demo", "pytest_reqcheck.plugin")
    }
    assert importers == {"reqcheck.cli": ["reqcheck.__main__"], "reqcheck.demo": ["reqcheck.cli"],
                         "pytest_reqcheck.plugin": []}  # fmt: skip


def test_the_torch_free_layers_import_no_torch() -> None:
    heavy = sorted(
        f"{module} imports {name}"
        for module, tree in _trees().items()
        if layer(module) in TORCH_FREE
        for name in _imports(tree)
        if name.split(".")[0] in HEAVY
    )
    assert heavy == []
    modules = [m for m in _trees() if layer(m) in TORCH_FREE]
    code = "".join(f"import {m}\n" for m in ["sys", *modules])
    code += f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert loaded.stdout.strip() == "[]"


def test_no_import_cycle() -> None:
    trees = _trees()
    known = set(trees)
    graph = {module: _internal(module, tree, known) for module, tree in trees.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start]
        )

    cycles = sorted(m for m in graph if reaches(m, m, {m}))
    assert cycles == []


def test_every_layer_named_in_the_table_is_a_folder() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists() and p.name != "examples"}
    assert folders == set(LAYERS) - {"foundation", "top"}

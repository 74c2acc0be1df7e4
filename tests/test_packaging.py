"""What a plain `pip install reqcheck` gets: every module the code imports, the examples, the plugin."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

from reqcheck.demo import DemoConfig

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"reqcheck", "pytest_reqcheck", "pytest_plugin"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> where it is imported, for every import (at any depth) in the shipped code."""
    found: dict[str, list[str]] = {}
    for path in sorted([*(ROOT / "reqcheck").rglob("*.py"), *(ROOT / "pytest_plugin").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {canonical(re.match(r"[A-Za-z0-9._-]+", dep).group(0)) for dep in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert {"torch", "transformers", "peft", "pytest", "yaml"} <= set(imports)
    # an optional feature's extra (not `test`) may provide a module: the code that imports it says in one
    # sentence which extra to install (tested with the feature, e.g. tests/test_serve.py)
    extras = {
        canonical(re.match(r"[A-Za-z0-9._-]+", dep).group(0))
        for name, deps in project["optional-dependencies"].items()
        if name != "test"
        for dep in deps
    }
    uncovered = {
        module: where
        for module, where in imports.items()
        if not {canonical(dist) for dist in providers.get(module, [])} & (declared | extras)
    }
    assert uncovered == {}, "imported but in no dependency or feature extra (a plain install lacks them)"


def test_the_demo_finds_its_example_inside_the_package() -> None:
    example = DemoConfig().example
    assert (example / "train.jsonl").is_file() and (example / "test.reqcheck.jsonl").is_file()


def test_the_wheel_ships_the_examples_and_the_pytest_plugin(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources (so the checkout stays clean) and read what it holds."""
    source = tmp_path / "source"
    for folder in ("reqcheck", "pytest_plugin", "examples"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("reqcheck-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(info).decode()
        metadata = archive.read(info.replace("entry_points.txt", "METADATA")).decode()
    for example in ("support-polite", "failure-triage"):
        for data in ("train.jsonl", "test.reqcheck.jsonl", "io.yaml"):
            assert f"reqcheck/examples/{example}/{data}" in names
    assert "pytest_reqcheck/plugin.py" in names and "reqcheck/demo.py" in names
    assert re.search(r"\[pytest11\]\s+reqcheck = pytest_reqcheck\.plugin", entry_points)
    assert re.search(r"\[console_scripts\]\s+reqcheck = reqcheck\.cli:main", entry_points)
    assert re.search(r"^Requires-Dist: pytest>=8$", metadata, re.MULTILINE)

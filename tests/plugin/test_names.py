"""Names and labels are data: an adapter folder called anything, and labels written in any Unicode form,
gate as a plain name and label do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CASES = [
    {"id": "c1", "item": "the reply please is late", "label": "yes"},
    {"id": "c2", "item": "the reply is late", "label": "no"},
]
ODD_NAMES = ["checker-v1.2", "my checker", "prüfer-ü", "a.b.c d"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_an_adapter_folder_name_with_dots_spaces_or_non_ascii_gates(
    name: str, pytester: pytest.Pytester, quick_adapter: Path
) -> None:
    """Fault: a dot in the folder name made PEFT raise `module name can't contain "."` in every case."""
    shutil.copytree(quick_adapter, pytester.path / name)
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c) for c in CASES))
    result = pytester.runpytest(f"--adapter={pytester.path / name}", "--reqcheck-report", "r.json")
    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert "failed" not in outcomes and "error" not in outcomes and "errors" not in outcomes
    report = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))
    assert [entry["name"] for entry in report["adapters"]] == [name]
    assert report["adapters"][0]["modes"]["adapter"]["n"] == len(CASES)

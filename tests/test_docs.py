"""docs/gating.md lists every option and gate the code defines (and no other), so the two cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_reqcheck.options import FILES_INI, OPTIONS
from reqcheck.gating.gates import GATES

GATING_DOC = Path(__file__).resolve().parent.parent / "docs" / "gating.md"


def _first_cells() -> list[str]:
    """The first cell of every table row of docs/gating.md."""
    lines = GATING_DOC.read_text(encoding="utf-8").splitlines()
    return [line.split(" | ")[0] for line in lines if line.startswith("| ") and " | " in line]


def test_every_option_and_ini_key_has_its_row_in_the_gating_doc() -> None:
    cells = _first_cells()
    flags = {flag for cell in cells for flag in re.findall(r"`(--[a-z-]*[a-z])", cell)}
    keys = {key for cell in cells for key in re.findall(r"\(`([a-z_]+)`\)", cell)}
    assert [option.flag for option in OPTIONS if option.flag not in flags] == []
    assert [option.ini_key for option in OPTIONS if option.ini_key and option.ini_key not in keys] == []
    assert FILES_INI in keys


def test_the_gating_doc_names_no_option_the_plugin_lacks() -> None:
    named = set(re.findall(r"--reqcheck-[a-z-]*[a-z]", GATING_DOC.read_text(encoding="utf-8")))
    assert named - {option.flag for option in OPTIONS} == set()


def test_every_gate_has_its_row_in_the_gating_docs_gate_table() -> None:
    rows = {name for cell in _first_cells() for name in re.findall(r"^\| `([a-z_]+)`$", cell)}
    assert [kind.name for kind in GATES if kind.name not in rows] == []
    assert rows <= {kind.name for kind in GATES}

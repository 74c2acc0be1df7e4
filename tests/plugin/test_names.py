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


NFC, NFD = "s\u00ed", "si\u0301"


@pytest.fixture(scope="module")
def si_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained on the labels `sí` (written NFC) and `no`: bare labels, one epoch."""
    from reqcheck.training.config import TrainConfig
    from reqcheck.training.loop import train
    from tests.helpers import FAST
    from tests.tiny import marker_task, write_jsonl

    data = write_jsonl(tmp_path_factory.mktemp("si") / "train.jsonl", marker_task(40, seed=4, positive=NFC))
    out = tmp_path_factory.mktemp("si-adapter") / "si"
    config = TrainConfig(data, str(tiny_model_dir), out, renderer="chat-v1", **{**FAST, "epochs": 1})
    train(config, report=lambda _: None)
    return out


def _with_nfd_labels(adapter: Path, where: Path) -> Path:
    """A copy of `adapter` whose manifest spells `sí` NFD, as an adapter trained on NFD lines before
    reqcheck normalised labels does."""
    shutil.copytree(adapter, where)
    text = (where / "reqcheck.json").read_text(encoding="utf-8")
    (where / "reqcheck.json").write_text(text.replace(NFC, NFD), encoding="utf-8")
    return where


@pytest.mark.parametrize(
    ("adapter_form", "fixture_form"), [(NFC, NFD), (NFD, NFC)], ids=["nfd-fixture", "nfd-adapter"]
)
def test_a_label_in_another_unicode_form_than_the_adapters_is_the_same_label(
    adapter_form: str, fixture_form: str, pytester: pytest.Pytester, si_adapter: Path
) -> None:
    """Fault: a fixture writing `sí` NFD failed every case with "label 'sí' is not one of ['no', 'sí']"."""
    adapter = si_adapter if adapter_form == NFC else _with_nfd_labels(si_adapter, pytester.path / "old")
    lines = [
        {"item": "the reply please is late", "label": fixture_form},
        {"item": "the reply is late", "label": "no"},
    ]
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c, ensure_ascii=False) for c in lines))
    result = pytester.runpytest(
        f"--adapter={adapter}", "--reqcheck-validation", "on", "--reqcheck-report", "r.json"
    )
    assert result.ret == 0 and "is not one of" not in result.stdout.str(), result.stdout.str()[-3000:]
    entry = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))["adapters"][0]
    assert entry["modes"]["adapter"]["n"] == 2 and entry["cases"][0]["expected"] == adapter_form

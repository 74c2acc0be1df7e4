"""What leaves the machine: a packaged or uploaded adapter names no path, user or home of the trainer."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from reqcheck.formats.manifest import Manifest
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import train
from tests.helpers import FAST, PLEASE, run_cli

USER = "alice-reqcheck-test"


@pytest.fixture
def trainer_home(
    tmp_path: Path, tiny_model_dir: Path, marker_data: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A home of user `USER` holding the data, the base model and the reqcheck cache, as a trainer's would."""
    home = tmp_path / "home" / USER
    data = home / "clients" / "acme-health" / "patients-2024.jsonl"
    data.parent.mkdir(parents=True)
    shutil.copyfile(marker_data, data)
    model = Path(shutil.copytree(tiny_model_dir, home / "models" / "tiny-base"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("REQCHECK_CACHE", str(home / ".cache" / "reqcheck"))
    train(
        TrainConfig(data, str(model), home / "checkpoints" / "polite", requirement=PLEASE, **FAST),
        lambda _: None,
    )
    return home


@pytest.mark.slow
def test_a_packaged_adapter_holds_no_path_user_or_home_of_the_trainer(
    trainer_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = trainer_home / "checkpoints" / "polite"
    local = Manifest.read(adapter)
    assert str(trainer_home) in local.data.path  # the local manifest keeps where the data is, for the scan
    out = tmp_path / "package"
    code, err = run_cli(
        ["package", str(adapter), "--name", "acme/polite", "--out", str(out)], capsys, monkeypatch
    )
    assert code == 0, err
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"README.md", "io.yaml", "reqcheck.json", "adapter_config.json"}
    private = [str(trainer_home), str(tmp_path), USER, str(Path.home())]
    absolute = re.compile(r"(?<![\w.])(/(home|root|tmp|Users|var|private)/|[A-Za-z]:\\)")
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        assert [p for p in private if p in text] == [], path
        assert absolute.search(text) is None, (path, absolute.search(text))
    (packaged,) = out.rglob("reqcheck.json")
    public = Manifest.read(packaged.parent)
    assert public.data.path is None and public.data.file == "patients-2024.jsonl"
    assert public.data.fingerprint == local.data.fingerprint
    assert public.base_model.path is None and public.base_model.spec == public.base_model.name == "tiny-base"
    assert json.loads(packaged.read_text())["base_model"]["revision"] == local.base_model.revision

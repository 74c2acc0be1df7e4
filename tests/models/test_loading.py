"""Resolving --basemodel: a Hub id from the local cache, a model directory, and bad specs."""

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from reqcheck.errors import ReqcheckError
from reqcheck.models.loading import resolve_base_model


def test_hub_id_resolves_from_the_local_cache_offline(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    revision = "b" * 40
    snapshot = tmp_path / "models--acme--tiny" / "snapshots" / revision
    shutil.copytree(tiny_model_dir, snapshot)
    (tmp_path / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "models--acme--tiny" / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    ref = resolve_base_model("acme/tiny")
    assert (ref.name, ref.revision, Path(ref.path)) == ("acme/tiny", revision, snapshot)
    assert ref.short_name == "tiny"


def test_uncached_hub_id_offline_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ReqcheckError, match="not in the local Hugging Face cache"):
        resolve_base_model("acme/missing")


def test_local_directory_and_bad_specs(tiny_model_dir: Path, tmp_path: Path) -> None:
    ref = resolve_base_model(str(tiny_model_dir))
    assert ref.name == tiny_model_dir.name and ref.revision.startswith("dir-sha256:")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReqcheckError, match="has no config.json"):
        resolve_base_model(str(tmp_path / "empty"))
    with pytest.raises(ReqcheckError, match="is not a model directory, a .gguf file, a Hub id"):
        resolve_base_model("no such model")


def test_a_relative_model_directory_is_recorded_so_it_resolves_from_anywhere(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "project" / "models" / "tiny")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    ref = resolve_base_model("models/tiny")
    assert ref.spec == str((tmp_path / "project" / "models" / "tiny").resolve())
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = resolve_base_model(ref.spec)  # offline: a Hub lookup of models/tiny would fail here
    assert (again.name, again.revision, again.path) == (ref.name, ref.revision, ref.path)

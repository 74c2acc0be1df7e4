"""Publishing's fixtures: a fake Hub the real huggingface_hub client talks to, a private copy of the
tiny aLoRA adapter, and a backend to load what was published."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants

from reqcheck.checking.backend import LocalHFBackend
from tests.fake_hub import FakeHub


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A fresh fake Hub; huggingface_hub pointed at it (its constants were frozen at import, offline)."""
    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)  # snapshot_download's file URLs
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setenv("HF_TOKEN", "hf_" + "t" * 34)
    yield server
    server.stop()


@pytest.fixture
def adapter(tiny_adapters, tmp_path: Path) -> Path:
    """A private copy of the tiny aLoRA adapter, so tests may edit it."""
    return Path(shutil.copytree(tiny_adapters["alora"].outfile, tmp_path / "alora"))


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> LocalHFBackend:
    return LocalHFBackend(str(tiny_model_dir), device="cpu")

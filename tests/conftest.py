"""Session fixtures: the tiny model is built once per test session; no network is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import build_tiny_model, marker_task, write_jsonl


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep converted models and evaluation caches out of the user's home directory."""
    if "REQCHECK_CACHE" not in __import__("os").environ:
        monkeypatch.setenv("REQCHECK_CACHE", str(tmp_path_factory.getbasetemp() / "reqcheck-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def marker_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", marker_task(240, seed=1))

"""Session fixtures: the tiny model is built once per test session; no network is used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub reads it: the tests never touch the network

from reqcheck.config import TrainConfig
from reqcheck.training import TrainResult, train
from tests.helpers import FAST, PLEASE
from tests.tiny import build_tiny_model, marker_task, write_jsonl


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep converted models and evaluation caches out of the user's home directory."""
    if "REQCHECK_CACHE" not in os.environ:
        monkeypatch.setenv("REQCHECK_CACHE", str(tmp_path_factory.getbasetemp() / "reqcheck-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def marker_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", marker_task(240, seed=1))


@pytest.fixture(scope="session")
def tiny_adapters(
    tiny_model_dir: Path, marker_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, TrainResult]:
    """An aLoRA and a LoRA adapter trained on the marker task, once per session."""
    out = tmp_path_factory.mktemp("adapters")
    return {
        kind: train(
            TrainConfig(
                marker_data, str(tiny_model_dir), out / kind, adapter=kind, requirement=PLEASE, **FAST
            ),
            report=lambda _: None,
        )
        for kind in ("alora", "lora")
    }

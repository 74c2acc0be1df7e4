"""`reqcheck train --resume` continues the same run or refuses: a changed input that shapes what is trained
is named in one sentence, and a resumed run ends where the uninterrupted run of the same seed ends."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reqcheck.errors import ReqcheckError
from reqcheck.training.checkpoint import partial_dir
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import TrainResult, train
from tests.helpers import ALL_LINEAR, FAST, KILLER, PLEASE
from tests.tiny import marker_task, write_jsonl

# labels with no default positive: the prompt asks "Which label fits" until --positive-label is given
ROWS = marker_task(40, seed=5, positive="spam", negative="ham")
HEADER = "<|start_of_role|>{}<|end_of_role|>"


def _config(root: Path, out: Path, **changes) -> TrainConfig:
    settings = {**FAST, "epochs": 2, "requirement": PLEASE, "requirement_in_prompt": True, **changes}
    return TrainConfig(root / "data.jsonl", str(root.parent / "model"), out, **settings)


def _stop_at(prefix: str) -> Callable[[str], None]:
    def report(line: str) -> None:
        if line.startswith(prefix):
            raise KeyboardInterrupt

    return report


@pytest.fixture(scope="module")
def interrupted(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., TrainConfig]:
    """A run stopped after its first epoch (its checkpoint kept); returns a copy of it for each test."""
    root = tmp_path_factory.mktemp("resume")
    (root.parent / "model").symlink_to(tiny_model_dir)
    write_jsonl(root / "data.jsonl", ROWS)
    (root / "prompt.json").write_text(json.dumps({"invocation_prompt": HEADER.format("assistant")}))
    made: dict[bool, Path] = {}

    def copy(tmp_path: Path, promptfile: bool = False) -> TrainConfig:
        if promptfile not in made:
            out = root / f"stopped-{promptfile}"
            with pytest.raises(KeyboardInterrupt):
                train(_config(root, out, promptfile=root / "prompt.json" if promptfile else None),
                      report=_stop_at("epoch 2/"))  # fmt: skip
            made[promptfile] = out
        for name in ("data.jsonl", "prompt.json"):
            shutil.copy(root / name, tmp_path / name)
        out = tmp_path / "adapter"
        shutil.copytree(partial_dir(made[promptfile]), partial_dir(out))
        return _config(
            tmp_path, out, promptfile=tmp_path / "prompt.json" if promptfile else None, resume=True
        )

    return copy


def _append_a_line(config: TrainConfig) -> None:
    with Path(config.datafile).open("a") as data:
        data.write(json.dumps({"item": "one more reply", "label": "ham"}) + "\n")


def _edit_the_promptfile(config: TrainConfig) -> None:
    Path(config.promptfile).write_text(json.dumps({"invocation_prompt": HEADER.format("user")}))


CHANGES: dict[str, tuple[dict, Callable[[TrainConfig], None] | None, str]] = {
    "positive label added": ({"positive_labels": ["spam"]}, None, "--positive-label"),
    "requirement in the prompt": ({"requirement": "The reply says thanks."}, None, "--requirement"),
    "promptfile contents": ({}, _edit_the_promptfile, "the promptfile's contents"),
    "data": ({}, _append_a_line, "the data"),
    "epochs": ({"epochs": 3}, None, "--epochs"),
    "learning rate": ({"learning_rate": 1e-3}, None, "--learning-rate"),
    "span": ({"alora_span": "instruction"}, None, "--alora-span"),
}


@pytest.mark.parametrize("case", CHANGES, ids=list(CHANGES))
def test_a_changed_input_refuses_resume_naming_it(case: str, interrupted, tmp_path: Path) -> None:
    changes, edit, named = CHANGES[case]
    config = dataclasses.replace(interrupted(tmp_path, promptfile=case == "promptfile contents"), **changes)
    if edit:
        edit(config)
    with pytest.raises(ReqcheckError) as refused:
        train(config, report=lambda _: None)
    message = str(refused.value)
    assert f" {named} " in message and "without --resume" in message and len(message.splitlines()) == 1
    assert message.count(". ") == 0 and message.endswith(".")
    assert not config.outfile.exists() and (partial_dir(config.outfile) / "state.pt").exists()


def test_examples_rendered_differently_refuse_resume(interrupted, tmp_path: Path, monkeypatch) -> None:
    """A reqcheck that renders the same data and flags into other token ids (an upgrade) cannot go on."""
    from reqcheck.training import encoding

    config, render = interrupted(tmp_path), encoding.render

    def one_token_more(*args, **kwargs):
        rendered = render(*args, **kwargs)
        return dataclasses.replace(
            rendered,
            input_ids=[0, *rendered.input_ids],
            context_len=rendered.context_len + 1,
            invocation_start=rendered.invocation_start + 1,
        )

    monkeypatch.setattr(encoding, "render", one_token_more)
    with pytest.raises(ReqcheckError, match=r"^--resume refused: the examples as rendered "):
        train(config, report=lambda _: None)


def test_the_same_command_resumes(interrupted, tmp_path: Path) -> None:
    lines: list[str] = []
    result = train(interrupted(tmp_path, promptfile=True), report=lines.append)
    assert any(line.startswith("resuming after epoch 1") for line in lines)
    assert [h["epoch"] for h in result.manifest.metrics.history] == [1, 2]


def _weights(result: TrainResult) -> dict[str, torch.Tensor]:
    return load_file(Path(result.outfile) / "adapter_model.safetensors")


STOPS = {
    "at an epoch's end": (5e-3, "epoch 3/"),
    "mid-epoch": (5e-3, 6),  # 32 training examples in batches of 8: the 2nd step of the 2nd epoch
    "at an epoch's end after the rate sweep": ("auto", "epoch 3/"),
}


@pytest.mark.parametrize("case", STOPS, ids=list(STOPS))
def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(
    case: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """Dropout on: the random states and the data order travel in the checkpoint.

    The loop checkpoints at each epoch's end, so a run stopped mid-epoch resumes from the last one.
    """
    rate, stop = STOPS[case]
    (tmp_path / "model").symlink_to(tiny_model_dir)
    root = tmp_path / "data"
    root.mkdir()
    write_jsonl(root / "data.jsonl", ROWS)
    settings = {"epochs": 3, "learning_rate": rate, "dropout": 0.05}
    whole = train(_config(root, tmp_path / "whole", **settings), report=lambda _: None)

    step, taken = torch.optim.AdamW.step, []

    def stop_at_step(self, *args, **kwargs):
        taken.append(1)
        if len(taken) == stop:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        if isinstance(stop, int):
            patch.setattr(torch.optim.AdamW, "step", stop_at_step)
        train(_config(root, tmp_path / "stopped", **settings),
              report=_stop_at(stop) if isinstance(stop, str) else lambda _: None)  # fmt: skip
    lines: list[str] = []
    resumed = train(_config(root, tmp_path / "stopped", **settings, resume=True), report=lines.append)

    assert any(line.startswith("resuming after epoch") for line in lines)
    for ours, theirs in zip(resumed.manifest.metrics.history, whole.manifest.metrics.history, strict=True):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-5)
    theirs = _weights(whole)
    for key, tensor in _weights(resumed).items():
        torch.testing.assert_close(tensor, theirs[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_kill_9_during_the_rate_sweep_restarts_cleanly_with_the_same_result(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The sweep writes no checkpoint until it has chosen, so a run killed inside it starts over; with its
    random state seeded as before, it ends where the uninterrupted run ends."""
    (tmp_path / "model").symlink_to(tiny_model_dir)
    root = tmp_path / "data"
    root.mkdir()
    write_jsonl(root / "data.jsonl", ROWS)
    settings = {"epochs": 2, "learning_rate": "auto"}
    whole = train(_config(root, tmp_path / "whole", **settings), report=lambda _: None)

    out = tmp_path / "killed"
    args = ["train", str(root / "data.jsonl"), "--basemodel", str(tmp_path / "model"), "--outfile", str(out)]
    args += [
        "--epochs",
        "2",
        "--learning-rate",
        "auto",
        "--batch-size",
        "8",
        "--grad-accum",
        "1",
        "--device",
        "cpu",
    ]
    args += ["--target-modules", ",".join(ALL_LINEAR), "--requirement", PLEASE, "--requirement-in-prompt"]
    # 32 training examples in batches of 8: step 6 is the second step of the sweep's second rate
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "step 6", *args], capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists() and not (partial_dir(out) / "state.pt").exists()

    lines: list[str] = []
    resumed = train(_config(root, out, **settings, resume=True), report=lines.append)
    assert any(line.startswith("--resume: no interrupted run") for line in lines)
    assert resumed.manifest.metrics.lr_sweep == whole.manifest.metrics.lr_sweep
    theirs = _weights(whole)
    for key, tensor in _weights(resumed).items():
        torch.testing.assert_close(tensor, theirs[key], rtol=1e-5, atol=1e-6)

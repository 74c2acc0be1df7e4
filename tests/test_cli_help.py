"""`reqcheck train`'s flags, defaults and help text, pinned: refactoring the options must not change them."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

import pytest
import typer.main
import typer.rich_utils
from typer.testing import CliRunner

from reqcheck.cli import app
from reqcheck.errors import ReqcheckError
from tests.helpers import run_cli

SNAPSHOTS = Path(__file__).parent / "snapshots"

TRAIN_OPTIONS = [
    (["datafile"], "pathlib.Path", None, True, 'JSONL file, one {"item": ..., "label": ...} per line.'),
    (["--basemodel"], "str", None, True, "Hub id, model directory, .gguf file, or smollm2-135m-instruct."),
    (["--outfile"], "pathlib.Path", None, True, "Directory to write the adapter to."),
    (["--adapter"], ["alora", "lora"], "alora", False, "Adapter type."),
    (["--device"], ["auto", "cpu", "cuda", "mps"], "auto", False, "Device to train on."),
    (["--epochs"], "int", 6, False, "Number of training epochs."),
    (
        ["--learning-rate"],
        "str",
        "6e-06",
        False,
        "Learning rate, or auto: a short sweep on the validation split picks it.",
    ),
    (["--batch-size"], "int", 2, False, "Per-device batch size."),
    (["--max-length"], "int", 1024, False, "Maximum sequence length in tokens."),
    (["--grad-accum"], "int", 4, False, "Gradient accumulation steps."),
    (
        ["--promptfile"],
        "pathlib.Path",
        None,
        False,
        'JSON file {"invocation_prompt": "..."} overriding the invocation.',
    ),
    (["--requirement"], "str", None, False, "The requirement the labels answer, e.g. 'The reply is polite.'"),
    (
        ["--positive-label"],
        "list[str]",
        None,
        False,
        "Label meaning 'requirement met' (repeatable; default: yes/pass/...).",
    ),
    (["--seed"], "int", 42, False, "Seed for the split, initialisation and shuffling."),
    (["--val-fraction"], "float", 0.2, False, "Fraction of examples held out for validation."),
    (["--rank"], "int", 32, False, "LoRA rank."),
    (["--alpha"], "int", 32, False, "LoRA alpha."),
    (["--dropout"], "float", 0.05, False, "LoRA dropout."),
    (["--target-modules"], "str", "q_proj,k_proj,v_proj", False, "Comma-separated modules to adapt."),
    (
        ["--renderer"],
        "str",
        "intrinsic-v1",
        False,
        "Prompt and output: intrinsic-v1 (granite-common's prompt, JSON output, runs in Mellea), "
        "chat-v1 (bare label), or mellea-v1 (Mellea's training format).",
    ),
    (
        ["--alora-span"],
        "str",
        "generation",
        False,
        "intrinsic-v1: where the aLoRA starts: generation (the generation prompt) or instruction (the "
        "header of the instruction's turn, so the adapter reads the instruction and requirement). The "
        "prompt is the same; --promptfile overrides both.",
    ),
    (
        ["--resume", "--no-resume"],
        "bool",
        False,
        False,
        "Continue an interrupted run of the same command.",
    ),
    (
        ["--prefix-cache"],
        "str",
        "auto",
        False,
        "aLoRA: auto (keep item caches while they fit the budget), memory, recompute, or off "
        "(full-sequence training).",
    ),
    (
        ["--prefix-cache-budget-mb"],
        "int",
        None,
        False,
        "Memory for kept item caches (default: a quarter of free memory).",
    ),
    (
        ["--lr-schedule"],
        "str",
        "linear",
        False,
        "Learning-rate schedule: linear (5% warm-up, then linear decay), constant, or cosine.",
    ),
    (
        ["--loss"],
        "str",
        "lm+label-set",
        False,
        "lm (label tokens over the whole vocabulary), label-set (the label against the other labels only), "
        "or lm+label-set.",
    ),
    (
        ["--balance", "--no-balance"],
        "bool",
        False,
        False,
        "Weight each example by its label's inverse frequency.",
    ),
    (
        ["--item-role"],
        "str",
        "assistant",
        False,
        "Chat role the checked item is rendered as: assistant or user.",
    ),
    (
        ["--system-prompt"],
        "str",
        None,
        False,
        "System prompt of every rendered example (default: the chat template's own).",
    ),
    (
        ["--requirement-in-prompt", "--no-requirement-in-prompt"],
        "bool",
        False,
        False,
        "Render --requirement into every example's prompt (training and inference alike).",
    ),
]


def _describe(param) -> tuple:
    annotation = param.type_descriptor.annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        kind = [member.value for member in annotation]
    else:
        kind = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        kind = "pathlib.Path" if annotation is Path else kind
    default = param.default.value if isinstance(param.default, enum.Enum) else param.default
    return (param.opts + param.secondary_opts, kind, default, param.required, param.help)


def test_train_options_defaults_and_help_are_unchanged() -> None:
    command = typer.main.get_command(app).commands["train"]
    assert [_describe(p) for p in command.params] == TRAIN_OPTIONS


def test_train_help_text_is_unchanged(monkeypatch) -> None:
    """The rendered help at a fixed width, without colours whatever the environment (CI forces them)."""
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 100)
    monkeypatch.setattr(typer.rich_utils, "FORCE_TERMINAL", False)
    monkeypatch.setattr(typer.rich_utils, "COLOR_SYSTEM", None)
    result = CliRunner().invoke(app, ["train", "--help"], prog_name="reqcheck", env={"COLUMNS": "100"})
    assert result.exit_code == 0
    assert result.output == (SNAPSHOTS / "train-help.txt").read_text(encoding="utf-8")


def _config_from(args: list[str], capsys, monkeypatch) -> dict:
    """The TrainConfig that `reqcheck train ARGS` hands to the trainer (the trainer itself does not run)."""
    import reqcheck.training.loop

    seen = []

    def capture(config, report):
        seen.append(config)
        raise ReqcheckError("captured")

    monkeypatch.setattr(reqcheck.training.loop, "train", capture)
    code, err = run_cli(["train", *args], capsys, monkeypatch)
    assert (code, err.strip()) == (2, "error: captured")
    return dataclasses.asdict(seen[0])


def test_train_defaults_reach_the_config(capsys, monkeypatch) -> None:
    config = _config_from(["d.jsonl", "--basemodel", "m", "--outfile", "out"], capsys, monkeypatch)
    assert config == {
        "datafile": Path("d.jsonl"),
        "basemodel": "m",
        "outfile": Path("out"),
        "adapter": "alora",
        "device": "auto",
        "epochs": 6,
        "learning_rate": 6e-06,
        "batch_size": 2,
        "max_length": 1024,
        "grad_accum": 4,
        "promptfile": None,
        "requirement": None,
        "positive_labels": [],
        "seed": 42,
        "val_fraction": 0.2,
        "rank": 32,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj"],
        "renderer": "intrinsic-v1",
        "alora_span": "generation",
        "resume": False,
        "prefix_cache": "auto",
        "prefix_cache_budget_mb": None,
        "lr_schedule": "linear",
        "loss": "lm+label-set",
        "balance": False,
        "item_role": "assistant",
        "system_prompt": None,
        "requirement_in_prompt": False,
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--adapter", "lora", "--device", "cpu"], {"adapter": "lora", "device": "cpu"}),
        (["--epochs", "3", "--learning-rate", "1e-4"], {"epochs": 3, "learning_rate": 1e-4}),
        (["--learning-rate", "auto"], {"learning_rate": "auto"}),
        (
            ["--loss", "lm+label-set", "--lr-schedule", "constant"],
            {"loss": "lm+label-set", "lr_schedule": "constant"},
        ),
        (["--positive-label", "ok", "--positive-label", "fine"], {"positive_labels": ["ok", "fine"]}),
        (["--target-modules", " q_proj, ,o_proj "], {"target_modules": ["q_proj", "o_proj"]}),
        (
            ["--promptfile", "p.json", "--requirement", "R."],
            {"promptfile": Path("p.json"), "requirement": "R."},
        ),
        (["--renderer", "mellea-v1", "--resume"], {"renderer": "mellea-v1", "resume": True}),
        (
            ["--prefix-cache", "off", "--prefix-cache-budget-mb", "5"],
            {"prefix_cache": "off", "prefix_cache_budget_mb": 5},
        ),
        (
            ["--seed", "7", "--val-fraction", "0.5", "--rank", "4", "--alpha", "8", "--dropout", "0"],
            {"seed": 7, "val_fraction": 0.5, "rank": 4, "alpha": 8, "dropout": 0.0},
        ),
        (
            ["--batch-size", "3", "--max-length", "64", "--grad-accum", "2"],
            {"batch_size": 3, "max_length": 64, "grad_accum": 2},
        ),
    ],
)
def test_train_flags_reach_the_config(args: list[str], expected: dict, capsys, monkeypatch) -> None:
    config = _config_from(["d.jsonl", "--basemodel", "m", "--outfile", "out", *args], capsys, monkeypatch)
    assert {k: config[k] for k in expected} == expected

"""TrainConfig: one declaration per option, every bad value refused on construction in one sentence."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reqcheck.errors import ReqcheckError
from reqcheck.training.config import AdapterType, Device, PrefixCacheMode, Renderer, TrainConfig


def _config(**overrides) -> TrainConfig:
    return TrainConfig(datafile=Path("d.jsonl"), basemodel="m", outfile=Path("out"), **overrides)


def test_choices_are_members_that_read_as_their_values() -> None:
    config = _config(adapter="lora", device="cpu", renderer="mellea-v1", prefix_cache="off")
    assert (config.adapter, config.device, config.renderer, config.prefix_cache) == (
        AdapterType.lora,
        Device.cpu,
        Renderer.mellea,
        PrefixCacheMode.off,
    )
    assert config.adapter == "lora" and f"{config.renderer}" == "mellea-v1"
    assert json.dumps({"renderer": config.renderer}) == '{"renderer": "mellea-v1"}'


def test_list_defaults_are_not_shared() -> None:
    first, second = _config(), _config()
    first.target_modules.append("o_proj")
    assert second.target_modules == ["q_proj", "k_proj", "v_proj"]


BAD_VALUES = {
    "epochs": (0, "--epochs must be at least 1."),
    "batch_size": (0, "--batch-size must be at least 1."),
    "grad_accum": (-1, "--grad-accum must be at least 1."),
    "rank": (0, "--rank must be at least 1."),
    "alpha": (0, "--alpha must be at least 1."),
    "max_length": (7, "--max-length must be at least 8 tokens."),
    "learning_rate": (0.0, "--learning-rate must be positive."),
    "learning_rate nan": (float("nan"), "--learning-rate must be a finite number, not nan."),
    "learning_rate inf": (float("inf"), "--learning-rate must be a finite number, not inf."),
    "val_fraction": (1.0, "--val-fraction must be in [0, 1), got 1.0."),
    "val_fraction negative": (-0.1, "--val-fraction must be in [0, 1), got -0.1."),
    "dropout": (1.0, "--dropout must be in [0, 1), got 1.0."),
    "dropout nan": (float("nan"), "--dropout must be a finite number, not nan."),
    "seed": (
        2**63,
        "--seed must be in [-9223372036854775808, 9223372036854775808), got 9223372036854775808.",
    ),
    "prefix_cache_budget_mb": (-1, "--prefix-cache-budget-mb must be zero or more."),
    "adapter": ("qlora", "Unknown --adapter 'qlora'; use alora or lora."),
    "device": ("tpu", "Unknown --device 'tpu'; use auto, cpu, cuda or mps."),
    "renderer": ("chat-v2", "Unknown --renderer 'chat-v2'; use intrinsic-v1, chat-v1 or mellea-v1."),
    "prefix_cache": ("disk", "Unknown --prefix-cache 'disk'; use auto, memory, recompute or off."),
}


@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_a_bad_value_is_refused_on_construction(case: str) -> None:
    value, message = BAD_VALUES[case]
    with pytest.raises(ReqcheckError) as raised:
        _config(**{case.split()[0]: value})
    assert str(raised.value) == message


@pytest.mark.parametrize("mode", ["memory", "recompute"])
def test_a_prefix_cache_for_lora_is_refused_before_training(mode: str) -> None:
    config = _config(adapter="lora", prefix_cache=mode)
    with pytest.raises(ReqcheckError, match=f"--prefix-cache {mode} needs --adapter alora"):
        config.check()
    for fine in ("auto", "off"):
        _config(adapter="lora", prefix_cache=fine).check()


IGNORED_SPAN = {
    "chat-v1": ({"renderer": "chat-v1"}, "--alora-span instruction needs --renderer intrinsic-v1"),
    "mellea-v1": ({"renderer": "mellea-v1"}, "--alora-span instruction needs --renderer intrinsic-v1"),
    "promptfile": ({"promptfile": Path("prompt.json")}, "is overridden by --promptfile"),
    "lora": ({"adapter": "lora"}, "applies to --adapter alora only"),
}


@pytest.mark.parametrize("case", IGNORED_SPAN, ids=list(IGNORED_SPAN))
def test_an_alora_span_the_run_would_ignore_is_refused(case: str) -> None:
    """The manifest would record `alora_span: instruction` for an adapter that does not start there."""
    given, message = IGNORED_SPAN[case]
    with pytest.raises(ReqcheckError) as refused:
        _config(alora_span="instruction", **given).check()
    assert message in str(refused.value) and len(str(refused.value).splitlines()) == 1
    _config(alora_span="generation", **given).check()
    _config(alora_span="instruction").check()


def test_check_catches_a_value_set_after_construction() -> None:
    config = _config()
    config.epochs = 0
    with pytest.raises(ReqcheckError, match="--epochs must be at least 1"):
        config.check()


def test_hyperparameters_are_the_options_that_change_what_is_learned() -> None:
    assert set(_config().hyperparameters()) == {
        "epochs",
        "learning_rate",
        "batch_size",
        "max_length",
        "grad_accum",
        "rank",
        "alpha",
        "dropout",
        "target_modules",
        "seed",
        "val_fraction",
        "lr_schedule",
        "loss",
        "balance",
        "item_role",
        "system_prompt",
        "requirement_in_prompt",
        "alora_span",
    }


def test_every_field_is_a_command_line_option() -> None:
    """A field without a flag (as `dropout` was) is an option users cannot set."""
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))


def test_the_config_and_the_cli_do_not_import_torch() -> None:
    """`reqcheck train --help` stays fast because building the options needs no torch."""
    code = "import sys, reqcheck.cli, reqcheck.training.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

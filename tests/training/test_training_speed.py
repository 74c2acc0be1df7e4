"""aLoRA training on base-model prefix caches equals full-sequence training; torchrun equals one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import Example
from reqcheck.formats.manifest import Manifest
from reqcheck.formats.output import LabelSet
from reqcheck.formats.prompting import PromptSpec, default_invocation, invocation_ids, label_ids
from reqcheck.training.config import TrainConfig
from reqcheck.training.distributed import SOLO
from reqcheck.training.encoding import LM, Encoded, batches, encode, forward_groups, label_loss
from reqcheck.training.loop import train
from reqcheck.training.prefix_cache import PrefixCache, suffix_eval, suffix_loss
from reqcheck.training.run import Trainable
from reqcheck.training.steps import train_step
from reqcheck.training.validation import _full_eval
from tests.helpers import ALL_LINEAR
from tests.tiny import marker_task, write_jsonl

QUICK = {"epochs": 1, "learning_rate": 5e-3, "batch_size": 8, "device": "cpu", "target_modules": ALL_LINEAR}


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path):
    """A tiny aLoRA model with non-zero B weights (so every gradient is non-trivial) and labels of 2 and 3 tokens."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = PromptSpec(default_invocation(tokenizer))
    torch.manual_seed(0)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=ALL_LINEAR,
        alora_invocation_tokens=invocation_ids(tokenizer, spec.invocation),
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    labels = LabelSet(
        ["no", "polite spam"], [label_ids(tokenizer, "no"), label_ids(tokenizer, "polite spam")]
    )
    rows = marker_task(16, seed=3, positive="polite spam")
    examples = [Example(r["item"], r["label"], source="mem", line=i) for i, r in enumerate(rows)]
    return model, tokenizer.pad_token_id, labels, encode(examples, tokenizer, spec, labels, 128)


def _grads(model, loss_fn) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, tokens = loss_fn()
    (loss / tokens).backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("keep", [False, True], ids=["recompute", "memory"])
def test_prefix_cache_gradients_equal_full_sequence_gradients(setup, keep: bool) -> None:
    model, pad_id, _, encoded = setup
    batch = encoded[:8]
    assert len({len(e.label) for e in batch}) == 2 and len({e.invocation_start for e in batch}) > 1
    full_loss, full = _grads(model, lambda: label_loss(model, batch, pad_id, alora=True))
    prefixes = PrefixCache(model, pad_id, keep=keep)
    for _ in range(2):  # in memory mode the second step runs on the stored caches
        loss, grads = _grads(model, lambda: suffix_loss(prefixes, batch))
        assert loss == pytest.approx(full_loss, rel=1e-5)
        for ours, reference in zip(grads, full, strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    assert len(prefixes.stored) == (len(batch) if keep else 0)


def test_prefix_cache_validation_equals_full_sequence_validation(setup) -> None:
    model, pad_id, labels, encoded = setup
    prefixes = PrefixCache(model, pad_id, keep=True)
    for batch in batches(encoded, 8):
        loss, tokens, scores = suffix_eval(prefixes, batch, labels)
        ref_loss, ref_tokens, ref_scores = _full_eval(model, batch, labels, pad_id, alora=True)
        assert tokens == ref_tokens
        torch.testing.assert_close(scores.cpu(), ref_scores.cpu(), rtol=1e-4, atol=1e-4)
        assert loss == pytest.approx(ref_loss, rel=1e-5)


def _one_step(model, pad_id: int, step, prefixes, forward_tokens: int) -> list[torch.Tensor]:
    """The adapter weights after one plain-SGD optimizer step over `step`, then the start restored."""
    start = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    run = Trainable(
        model, params, optimizer, scheduler, pad_id, True, prefixes, len(step), LM, forward_tokens
    )
    model.eval()  # no dropout in the fixture's adapter either way
    train_step(run, step, SOLO)
    after = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)
    return after


@pytest.mark.parametrize("cached", [False, True], ids=["full-sequence", "prefix-cache"])
def test_a_step_in_one_forward_equals_a_step_in_one_forward_per_batch(setup, cached: bool) -> None:
    """Fusing a step's batches into one forward changes nothing the optimizer sees."""
    model, pad_id, _, encoded = setup
    step = batches(encoded[:8], 2)
    prefixes = PrefixCache(model, pad_id, keep=True) if cached else None
    apart = _one_step(model, pad_id, step, prefixes, forward_tokens=1)
    fused = _one_step(model, pad_id, step, prefixes, forward_tokens=10_000)
    for a, f in zip(apart, fused, strict=True):
        torch.testing.assert_close(f, a, rtol=1e-4, atol=1e-6)


def test_forward_groups_keep_order_and_the_token_budget() -> None:
    examples = [Encoded([1] * n, 0, 0, [2], 0) for n in (3, 9, 2, 2, 5)]
    groups = forward_groups(examples, budget=20, width=lambda e: e.length)
    assert [e for g in groups for e in g] == examples
    assert [len(g) for g in groups] == [2, 3]  # 2 rows x 10 tokens, then 3 rows x 6
    assert all(len(g) * max(e.length for e in g) <= 20 for g in groups)
    assert forward_groups(examples, budget=1, width=lambda e: e.length) == [[e] for e in examples]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("small") / "train.jsonl", marker_task(64, seed=5))


def _config(model_dir: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig(datafile=data, basemodel=str(model_dir), outfile=out, **{**QUICK, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("requested", "budget", "used"),
    [("auto", None, "memory"), ("auto", 0, "recompute"), ("off", None, "off")],
)
def test_prefix_cache_mode_follows_the_budget(
    tiny_model_dir: Path, small_data: Path, tmp_path: Path, requested: str, budget: int | None, used: str
) -> None:
    lines: list[str] = []
    config = _config(
        tiny_model_dir, small_data, tmp_path / "a", prefix_cache=requested, prefix_cache_budget_mb=budget
    )
    result = train(config, report=lines.append)
    assert result.manifest.hyperparameters["prefix_cache"] == used
    assert Manifest.read(result.outfile).hyperparameters["prefix_cache"] == used
    assert any(line.startswith(f"prefix cache: {used}") for line in lines) or used == "off"


def test_memory_mode_over_budget_and_lora_with_a_cache_are_clear_errors(
    tiny_model_dir: Path, small_data: Path, tmp_path: Path
) -> None:
    over = _config(
        tiny_model_dir, small_data, tmp_path / "a", prefix_cache="memory", prefix_cache_budget_mb=0
    )
    with pytest.raises(ReqcheckError, match="prefix-cache-budget-mb"):
        train(over, report=lambda _: None)
    lora = _config(tiny_model_dir, small_data, tmp_path / "b", adapter="lora", prefix_cache="recompute")
    with pytest.raises(ReqcheckError, match="--adapter alora"):
        train(lora, report=lambda _: None)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(
    tiny_model_dir: Path, small_data: Path, tmp_path: Path
) -> None:
    """Two processes with one batch each per step make the updates of one process accumulating two.

    Only dropout masks differ (each process draws its own; with dropout 0 the runs match to the bit),
    so the losses agree within 2% while the weights drift apart too far to compare; a wrong gradient
    scale or step count misses the losses by far more.
    """
    common = ["--basemodel", str(tiny_model_dir), "--device", "cpu", "--epochs", "2", "--batch-size", "8"]
    common += ["--grad-accum", "1", "--learning-rate", "5e-3", "--target-modules", ",".join(ALL_LINEAR)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run(
        [*launcher, "-m", "reqcheck", "train", str(small_data), "--outfile", str(tmp_path / "two"), *common],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stderr.count("saved alora adapter") == 1  # only rank 0 reports
    single = train(
        _config(tiny_model_dir, small_data, tmp_path / "one", epochs=2, grad_accum=2), lambda _: None
    )
    multi = Manifest.read(tmp_path / "two")
    assert multi.hyperparameters["processes"] == 2
    for ours, theirs in zip(multi.metrics.history, single.manifest.metrics.history, strict=True):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=2e-2)
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=2e-2)

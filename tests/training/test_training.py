import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from reqcheck.formats.data import load_examples
from reqcheck.formats.manifest import Manifest, content_hash
from reqcheck.formats.prompting import render
from reqcheck.models.scoring import score_labels
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import partial_dir, train
from tests.helpers import FAST
from tests.tiny import marker_task, write_jsonl


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("held-out") / "test.jsonl", marker_task(100, seed=99))


def accuracy_with_plain_peft(adapter_dir: Path, base_dir: Path, data: Path) -> tuple[float, torch.Tensor]:
    """Load the adapter with PEFT alone (PEFT finds the invocation itself) and score the labels.

    The labels' JSON lead (`{"score": "`) is fed as prompt; the label's first token is read after it.
    """
    manifest = Manifest.read(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    lead, labels = manifest.label_set(tokenizer).after_lead()
    names = labels.names
    first_tokens = [ids[0] for ids in labels.token_ids]
    correct, all_scores = 0, []
    for example in load_examples(data):
        ids = render(tokenizer, example.item, manifest.prompt).input_ids + lead
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        scores = torch.log_softmax(logits, -1)[first_tokens]
        all_scores.append(scores)
        correct += names[int(scores.argmax())] == example.label
    return correct / len(load_examples(data)), torch.stack(all_scores)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["alora", "lora"])
def test_adapter_learns_the_task_on_held_out_data(
    tiny_adapters, tiny_model_dir: Path, held_out: Path, kind: str
) -> None:
    result = tiny_adapters[kind]
    assert result.manifest.metrics.val_accuracy >= 0.9
    accuracy, _ = accuracy_with_plain_peft(result.outfile, tiny_model_dir, held_out)
    assert accuracy >= 0.9


@pytest.mark.slow
def test_plain_peft_scores_equal_reqcheck_scores(tiny_adapters, tiny_model_dir: Path, held_out: Path) -> None:
    adapter_dir = tiny_adapters["alora"].outfile
    _, peft_scores = accuracy_with_plain_peft(adapter_dir, tiny_model_dir, held_out)
    manifest = Manifest.read(adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter_dir
    ).eval()
    labels = manifest.label_set(tokenizer)
    rendered = [render(tokenizer, e.item, manifest.prompt) for e in load_examples(held_out)]
    ours = score_labels(
        model,
        [r.input_ids for r in rendered],
        [r.invocation_start for r in rendered],
        labels,
        tokenizer.pad_token_id,
    )
    torch.testing.assert_close(ours, peft_scores, rtol=1e-4, atol=1e-4)


def test_alora_config_carries_invocation_ids_and_lora_does_not(tiny_adapters) -> None:
    alora = json.loads((tiny_adapters["alora"].outfile / "adapter_config.json").read_text())
    lora = json.loads((tiny_adapters["lora"].outfile / "adapter_config.json").read_text())
    assert alora["alora_invocation_tokens"] == tiny_adapters["alora"].manifest.invocation_ids
    assert len(alora["alora_invocation_tokens"]) == 3
    assert lora.get("alora_invocation_tokens") is None


def test_manifest_holds_what_design_lists(tiny_adapters, marker_data: Path) -> None:
    result = tiny_adapters["alora"]
    data = json.loads((result.outfile / "reqcheck.json").read_text())
    assert data["format_version"] == 2
    assert data["adapter_type"] == "alora"
    assert data["base_model"]["revision"].startswith("dir-sha256:")
    assert data["prompt"] == {
        "invocation": "<|start_of_role|>assistant<|end_of_role|>",
        "renderer": "intrinsic-v1",
        "requirement_in_prompt": False,
        "item_role": "assistant",
        "system_prompt": None,
        "instruction": "Does the message above meet the requirement?",
    }
    assert data["output"] == {"format": "json-v1", "field": "score"}
    assert data["labels"] == {"no": 120, "yes": 120}
    assert data["positive_labels"] == ["yes"]
    assert data["requirement"] == "The reply says please."
    assert len(data["data"]["fingerprint"]) == 64 and data["data"]["n_val"] == 48
    assert data["split_seed"] == 42
    assert data["hyperparameters"]["learning_rate"] == 5e-3
    metrics = data["metrics"]
    assert metrics["best_val_loss"] == min(h["val_loss"] for h in metrics["history"])
    assert metrics["majority_baseline"] == 0.5
    assert {"reqcheck", "torch", "transformers", "peft"} <= set(data["versions"])
    assert sorted(p.name for p in result.outfile.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "reqcheck.json",
    ] or sorted(p.name for p in result.outfile.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "reqcheck.json",
    ]
    assert content_hash(result.outfile).startswith("sha256:")


@pytest.mark.slow
def test_interrupted_run_leaves_no_finished_looking_adapter_and_resumes(
    tiny_model_dir: Path, marker_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    config = TrainConfig(datafile=marker_data, basemodel=str(tiny_model_dir), outfile=out, **FAST)

    def interrupt_after_first_epoch(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, report=interrupt_after_first_epoch)
    assert not out.exists()
    assert not any((p / "reqcheck.json").exists() for p in tmp_path.iterdir())
    assert (partial_dir(out) / "state.pt").exists()

    lines: list[str] = []
    config.resume = True
    result = train(config, report=lines.append)
    assert any("resuming after epoch 1" in line for line in lines)
    assert [h["epoch"] for h in result.manifest.metrics.history] == [1, 2, 3, 4]
    assert (out / "reqcheck.json").exists() and not partial_dir(out).exists()


@pytest.mark.slow
def test_retraining_replaces_an_earlier_adapter(
    tiny_model_dir: Path, marker_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    config = TrainConfig(
        datafile=marker_data, basemodel=str(tiny_model_dir), outfile=out, **{**FAST, "epochs": 1}
    )
    first = content_hash(train(config, report=lambda _: None).outfile)
    config.seed = 7
    assert content_hash(train(config, report=lambda _: None).outfile) != first

"""Training choices for quality: --learning-rate auto, the label-set objective, --balance, prompt options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import load_examples
from reqcheck.formats.manifest import Manifest
from reqcheck.formats.prompting import render
from reqcheck.models.scoring import score_labels
from reqcheck.training import prefix_cache, sweep
from reqcheck.training.config import TrainConfig
from reqcheck.training.encoding import Encoded, Objective, encode, label_loss
from reqcheck.training.loop import train
from reqcheck.training.sweep import LR_CANDIDATES, LR_START, climb
from tests.helpers import FAST, PLEASE
from tests.tiny import marker_task, write_jsonl


@pytest.fixture(scope="module")
def swept(tiny_model_dir: Path, marker_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """One --learning-rate auto run on the tiny model, counting the item prefixes computed."""
    computed: list[int] = []
    original = prefix_cache.PrefixCache._compute

    def counting(self, batch):
        computed.extend(id(e) for e in batch)
        return original(self, batch)

    patch = pytest.MonkeyPatch()
    patch.setattr(prefix_cache.PrefixCache, "_compute", counting)
    try:
        out = tmp_path_factory.mktemp("swept") / "adapter"
        result = train(
            TrainConfig(
                datafile=marker_data,
                basemodel=str(tiny_model_dir),
                outfile=out,
                requirement=PLEASE,
                prefix_cache="memory",
                **{**FAST, "learning_rate": "auto"},
            ),
            report=lambda _: None,
        )
    finally:
        patch.undo()
    return result, computed


@pytest.mark.slow
def test_auto_learning_rate_keeps_the_candidate_with_the_lowest_validation_loss(swept) -> None:
    result, _ = swept
    sweep = result.manifest.metrics.lr_sweep
    losses = {c["learning_rate"]: c["val_loss"] for c in sweep.candidates}
    assert LR_START in losses and len(losses) >= 2
    finite = {rate: loss for rate, loss in losses.items() if math.isfinite(loss)}
    assert sweep.chosen == min(finite, key=finite.__getitem__)
    # the chosen rate is a low point of the grid: each neighbour was tried and did worse
    at = LR_CANDIDATES.index(sweep.chosen)
    for neighbour in LR_CANDIDATES[max(at - 1, 0) : at + 2]:
        assert neighbour in losses
    assert result.manifest.hyperparameters["learning_rate"] == sweep.chosen
    assert len(set(losses.values())) > 1  # the candidates really trained differently
    assert result.manifest.metrics.val_accuracy >= 0.9


@pytest.mark.parametrize("low", range(len(LR_CANDIDATES)))
def test_the_sweep_finds_the_lowest_rate_of_a_u_shaped_loss_and_stops_climbing(low: int) -> None:
    calls: list[float] = []

    def score(rate: float) -> float:
        calls.append(rate)
        return abs(math.log(rate) - math.log(LR_CANDIDATES[low]))

    tried = climb(score, LR_CANDIDATES, LR_START)
    assert min(tried, key=tried.__getitem__) == LR_CANDIDATES[low]
    assert len(calls) == len(set(calls)) == len(tried)
    start = LR_CANDIDATES.index(LR_START)
    # it walks one way only, one step past the low point (or the edge), plus the first step up
    assert len(calls) <= abs(start - low) + 3


def test_a_short_run_limits_the_rates_tried() -> None:
    """--epochs 1 tries at most two rates, so the sweep never costs more than the run once more."""
    calls: list[float] = []
    walk = climb(lambda rate: calls.append(rate) or rate, LR_CANDIDATES, LR_START)
    assert len(walk) == len(LR_CANDIDATES)  # the lowest rate scores best: unlimited, the walk goes there
    calls.clear()
    tried = climb(lambda rate: calls.append(rate) or rate, LR_CANDIDATES, LR_START, most=2)
    assert calls == [LR_START, LR_CANDIDATES[LR_CANDIDATES.index(LR_START) + 1]] and len(tried) == 2


def test_a_diverged_rate_counts_as_worse_than_any_finite_loss() -> None:
    losses = dict(zip(LR_CANDIDATES, [5.0, 3.0, 1.0, float("nan"), float("inf")], strict=True))
    tried = climb(losses.__getitem__, LR_CANDIDATES, LR_START)
    finite = {r: v for r, v in tried.items() if math.isfinite(v)}
    assert min(finite, key=finite.__getitem__) == 3e-4


@pytest.mark.slow
def test_the_sweep_reuses_the_prefix_caches(swept) -> None:
    """Every item's prefix is computed once for the whole sweep and the run after it."""
    result, computed = swept
    n_items = result.manifest.data.n_train + result.manifest.data.n_val
    assert len(computed) == len(set(computed)) == n_items


@pytest.mark.slow
def test_the_sweeps_winner_goes_on_as_a_run_at_its_rate_would(
    tiny_model_dir: Path, marker_data: Path, tmp_path: Path
) -> None:
    """The sweep's epochs are the run's first epoch: auto ends where a run at the chosen rate ends.

    Dropout is 0 so no random mask tells the runs apart; the sweep costs only the other rates' epochs.
    """
    lines: list[str] = []

    def run(rate: float | str, out: str) -> Manifest:
        config = TrainConfig(
            datafile=marker_data,
            basemodel=str(tiny_model_dir),
            outfile=tmp_path / out,
            requirement=PLEASE,
            dropout=0.0,
            **{**FAST, "learning_rate": rate},
        )
        return train(config, report=lines.append).manifest

    auto = run("auto", "auto")
    chosen = auto.metrics.lr_sweep.chosen
    fixed = run(chosen, "fixed")
    assert sum(line.startswith("epoch ") and ": val loss" in line for line in lines) == 2 * FAST["epochs"] - 1
    for key in ("best_val_loss", "best_epoch", "val_accuracy"):
        assert getattr(auto.metrics, key) == pytest.approx(getattr(fixed.metrics, key), rel=1e-4)
    for ours, theirs in zip(auto.metrics.history, fixed.metrics.history, strict=True):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
    auto_weights = load_file(tmp_path / "auto" / "adapter_model.safetensors")
    fixed_weights = load_file(tmp_path / "fixed" / "adapter_model.safetensors")
    for name, tensor in fixed_weights.items():
        torch.testing.assert_close(auto_weights[name], tensor, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_sweep_where_every_rate_diverged_is_a_clear_error(
    tiny_model_dir: Path, marker_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan = {"val_loss": math.nan, "val_label_loss": math.nan, "val_accuracy": 0.0, "val_recall": {}}
    monkeypatch.setattr(sweep, "evaluate", lambda *args, **kwargs: dict(nan))
    config = TrainConfig(
        datafile=marker_data,
        basemodel=str(tiny_model_dir),
        outfile=tmp_path / "a",
        **{**FAST, "epochs": 1, "learning_rate": "auto"},
    )
    with pytest.raises(ReqcheckError, match="Every learning rate of the sweep diverged"):
        train(config, report=lambda _: None)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_resume_without_an_interrupted_run_says_so_before_the_sweep(
    tiny_model_dir: Path, marker_data: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    config = TrainConfig(
        datafile=marker_data,
        basemodel=str(tiny_model_dir),
        outfile=tmp_path / "a",
        resume=True,
        **{**FAST, "epochs": 1, "learning_rate": "auto"},
    )
    train(config, report=lines.append)
    said = [i for i, line in enumerate(lines) if line.startswith("--resume: no interrupted run")]
    swept = [i for i, line in enumerate(lines) if line.startswith("lr sweep")]
    assert len(said) == 1 and swept and said[0] < swept[0]


def test_auto_learning_rate_needs_a_validation_split(
    tiny_model_dir: Path, marker_data: Path, tmp_path
) -> None:
    config = TrainConfig(
        datafile=marker_data,
        basemodel=str(tiny_model_dir),
        outfile=tmp_path / "a",
        val_fraction=0.0,
        **{**FAST, "learning_rate": "auto"},
    )
    with pytest.raises(ReqcheckError, match="validation split"):
        train(config, report=lambda _: None)


@pytest.mark.parametrize("value", ["fast", "1e-3x", ""])
def test_learning_rate_is_a_number_or_auto(value: str, tmp_path) -> None:
    with pytest.raises(ReqcheckError, match="--learning-rate must be a number or auto"):
        TrainConfig(datafile=tmp_path, basemodel="m", outfile=tmp_path, learning_rate=value)
    assert (
        TrainConfig(datafile=tmp_path, basemodel="m", outfile=tmp_path, learning_rate="2e-4").learning_rate
        == 2e-4
    )


def _rows(labels: list[int]) -> list[Encoded]:
    return [Encoded([1, 2], 1, label, [10 + label, 0], 0) for label in labels]


def test_label_set_loss_is_the_cross_entropy_over_the_labels_first_tokens() -> None:
    torch.manual_seed(0)
    logits, batch = torch.randn(3, 2, 20), _rows([0, 1, 1])
    targets = torch.tensor([[e.label[0], e.label[1]] for e in batch])
    first = torch.zeros(3, dtype=torch.long)
    loss, tokens = Objective("label-set", (10, 11))(logits, targets, first, batch)
    expected = torch.nn.functional.cross_entropy(logits[:, 0][:, [10, 11]], torch.tensor([0, 1, 1]))
    assert tokens == 6
    torch.testing.assert_close(loss / tokens, expected)
    lm, _ = Objective("lm", (10, 11))(logits, targets, first, batch)
    both, _ = Objective("lm+label-set", (10, 11))(logits, targets, first, batch)
    torch.testing.assert_close(both, lm + loss)


def test_balance_weights_each_example_by_its_label() -> None:
    torch.manual_seed(0)
    logits, batch = torch.randn(3, 2, 20), _rows([0, 1, 1])
    targets = torch.tensor([[e.label[0], e.label[1]] for e in batch])
    first = torch.zeros(3, dtype=torch.long)
    plain = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none").sum(-1)
    loss, _ = Objective("lm", (10, 11), (3.0, 0.5))(logits, targets, first, batch)
    torch.testing.assert_close(loss, 3.0 * plain[0] + 0.5 * plain[1] + 0.5 * plain[2])


def test_label_set_loss_reads_the_labels_where_the_checker_scores_them(
    tiny_adapters, tiny_model_dir: Path, tmp_path
) -> None:
    """Under the JSON contract the labels part after `{"score": "`: the label-set loss, full-sequence and on
    cached prefixes, is the cross-entropy of the scores `score_labels` (the backend's check) reads there."""
    from peft import PeftModel

    adapter = tiny_adapters["alora"].outfile
    manifest = Manifest.read(adapter)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    labels = manifest.label_set(tokenizer)
    assert manifest.output.is_json and labels.lead > 0
    examples = load_examples(write_jsonl(tmp_path / "batch.jsonl", marker_task(12, seed=9)))
    batch = encode(examples, tokenizer, manifest.prompt, labels, 1024)
    objective = Objective("label-set", labels.first_ids, lead=labels.lead)
    pad = tokenizer.pad_token_id
    truth = torch.tensor([e.label_index for e in batch])
    with torch.no_grad():
        scores = score_labels(
            model, [e.prompt for e in batch], [e.invocation_start for e in batch], labels, pad
        )
        full, tokens = label_loss(model, batch, pad, True, objective)
        cached, cached_tokens = prefix_cache.suffix_loss(
            prefix_cache.PrefixCache(model, pad, False), batch, objective
        )
    expected = torch.nn.functional.cross_entropy(scores, truth)
    torch.testing.assert_close(full / tokens, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached / cached_tokens, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["label-set", "lm+label-set"])
def test_the_best_epoch_is_chosen_by_the_validation_loss_of_the_loss_trained(
    loss: str, tiny_model_dir: Path, marker_data: Path, tmp_path: Path
) -> None:
    """`--loss label-set` keeps the epoch with the lowest label-set validation loss, not the lowest
    label-token loss, which it does not train (that kept a near-chance first epoch on trec_questions)."""
    config = TrainConfig(
        datafile=marker_data,
        basemodel=str(tiny_model_dir),
        outfile=tmp_path / "adapter",
        requirement=PLEASE,
        loss=loss,
        **FAST,
    )
    metrics = train(config, report=lambda _: None).manifest.metrics
    history = metrics.history
    trained = [h["val_label_loss"] + (h["val_lm_loss"] if loss == "lm+label-set" else 0.0) for h in history]
    assert [h["val_loss"] for h in history] == pytest.approx(trained)
    assert metrics.best_epoch == history[trained.index(min(trained))]["epoch"]
    assert metrics.best_val_loss == pytest.approx(min(trained))


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["lm", "lm+label-set"])
def test_the_predicted_label_is_the_models_top_next_token(
    loss: str, tiny_model_dir: Path, marker_data: Path, tmp_path
) -> None:
    """Mellea and granite-common read a label by generation: greedy decoding after the prompt emits the
    JSON up to the value, and the value's first token wins over the whole vocabulary there."""
    result = train(
        TrainConfig(
            datafile=marker_data, basemodel=str(tiny_model_dir), outfile=tmp_path / "a", loss=loss, **FAST
        ),
        report=lambda _: None,
    )
    from peft import PeftModel

    manifest = Manifest.read(result.outfile)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.outfile
    ).eval()
    labels = manifest.label_set(tokenizer)
    assert manifest.output.is_json and labels.lead > 0
    first_tokens = dict(zip(labels.first_ids, labels.names, strict=True))
    lead = labels.token_ids[0][: labels.lead]
    held_out = write_jsonl(tmp_path / "held.jsonl", marker_task(60, seed=7))
    top_is_right = 0
    for example in load_examples(held_out):
        ids = render(tokenizer, example.item, manifest.prompt).input_ids
        for _ in range(labels.lead + 1):
            with torch.no_grad():
                top = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids = [*ids, top]
        emitted_lead, value = ids[-labels.lead - 1 : -1], ids[-1]
        top_is_right += emitted_lead == lead and first_tokens.get(value) == example.label
    assert top_is_right / 60 >= 0.9


@pytest.mark.slow
def test_requirement_in_prompt_renders_the_requirement_for_training_and_inference(
    tiny_model_dir: Path, marker_data: Path, tmp_path
) -> None:
    result = train(
        TrainConfig(
            datafile=marker_data,
            basemodel=str(tiny_model_dir),
            outfile=tmp_path / "a",
            requirement=PLEASE,
            requirement_in_prompt=True,
            **{**FAST, "epochs": 1},
        ),
        report=lambda _: None,
    )
    spec = Manifest.read(result.outfile).prompt
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with_req = render(tokenizer, "the reply", spec, PLEASE).input_ids
    assert spec.requirement_in_prompt and "{requirement}" in spec.instruction
    assert with_req != render(tokenizer, "the reply", spec, "The reply is late.").input_ids
    with pytest.raises(ReqcheckError, match="none was given"):
        render(tokenizer, "the reply", spec)

"""Fine-tune a LoRA or activated-LoRA adapter from labelled JSONL, top to bottom.

prepare → encode → train epochs (loss on label tokens only) → evaluate each epoch → keep the best
validation loss → write PEFT files + reqcheck.json atomically. Interrupted runs keep a resume
checkpoint beside the output, never a directory that looks like a finished adapter.

aLoRA runs forward and backward over the invocation and label tokens only, on base-model prefix
caches of the items (see `prefix_cache`); `--prefix-cache off` trains on full sequences, the
reference. Under torchrun each process trains on its share of every step (see `distributed`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reqcheck import data as data_mod
from reqcheck import distributed
from reqcheck import prefix_cache as prefix_mod
from reqcheck.atomic import atomic_directory
from reqcheck.data import Example
from reqcheck.distributed import Group
from reqcheck.errors import ReqcheckError
from reqcheck.manifest import Manifest, default_positive_labels, is_reqcheck_adapter, library_versions
from reqcheck.models import (
    BaseModelRef,
    load_model,
    load_tokenizer,
    resolve_base_model,
    resolve_device,
    training_dtype,
)
from reqcheck.output import check_labels, contract
from reqcheck.prompting import (
    INTRINSIC_RENDERER,
    RENDERERS,
    PromptSpec,
    find_subsequence,
    invocation_ids,
    render,
)
from reqcheck.scoring import LabelSet, left_pad, score_labels

ADAPTER_TYPES = ("alora", "lora")
DEVICES = ("auto", "cpu", "cuda", "mps")
Reporter = Callable[[str], None]


@dataclass
class TrainConfig:
    """The flags of `reqcheck train`; defaults are those of Mellea's `m alora train`."""

    datafile: Path
    basemodel: str
    outfile: Path
    adapter: str = "alora"
    device: str = "auto"
    epochs: int = 6
    learning_rate: float = 6e-6
    batch_size: int = 2
    max_length: int = 1024
    grad_accum: int = 4
    promptfile: Path | None = None
    requirement: str | None = None
    positive_labels: list[str] = field(default_factory=list)
    seed: int = 42
    val_fraction: float = 0.2
    rank: int = 32
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    renderer: str = INTRINSIC_RENDERER
    resume: bool = False
    prefix_cache: str = "auto"
    prefix_cache_budget_mb: int | None = None

    def hyperparameters(self) -> dict[str, Any]:
        """The flags that change what is learned (the prefix cache only changes how fast)."""
        keys = (
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
        )
        return {k: getattr(self, k) for k in keys}


@dataclass
class Encoded:
    """One example as token ids: the prompt (ending with the invocation) and its label."""

    prompt: list[int]
    invocation_start: int
    label_index: int
    label: list[int]
    truncated: int

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.label)


@dataclass
class TrainResult:
    outfile: Path
    manifest: Manifest
    seconds: float
    tokens_per_second: float
    main_process: bool = True


def read_promptfile(path: Path) -> str:
    """The invocation prompt from a Mellea-style promptfile `{"invocation_prompt": "..."}`."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReqcheckError(
            f"Promptfile {path} does not exist; pass a JSON file with 'invocation_prompt'."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReqcheckError(
            f'Promptfile {path} is not valid JSON ({exc}); write {{"invocation_prompt": "..."}}.'
        ) from exc
    prompt = content.get("invocation_prompt") if isinstance(content, dict) else None
    if not isinstance(prompt, str) or not prompt:
        raise ReqcheckError(f"Promptfile {path} has no non-empty 'invocation_prompt' string; add one.")
    return prompt


def _check_config(config: TrainConfig) -> None:
    if config.adapter not in ADAPTER_TYPES:
        raise ReqcheckError(f"Unknown adapter type {config.adapter!r}; use alora or lora.")
    if config.device not in DEVICES:
        raise ReqcheckError(f"Unknown device {config.device!r}; use auto, cpu, cuda or mps.")
    if config.renderer not in RENDERERS:
        raise ReqcheckError(f"Unknown renderer {config.renderer!r}; use one of {', '.join(RENDERERS)}.")
    for name in ("epochs", "batch_size", "grad_accum", "rank", "alpha"):
        if getattr(config, name) < 1:
            raise ReqcheckError(f"--{name.replace('_', '-')} must be at least 1.")
    if config.learning_rate <= 0:
        raise ReqcheckError("--learning-rate must be positive.")
    if config.max_length < 8:
        raise ReqcheckError("--max-length must be at least 8 tokens.")
    prefix_mod.check_mode(config.prefix_cache, config.adapter == "alora")
    if config.prefix_cache_budget_mb is not None and config.prefix_cache_budget_mb < 0:
        raise ReqcheckError("--prefix-cache-budget-mb must be zero or more.")
    out = Path(config.outfile)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_reqcheck_adapter(out))):
        raise ReqcheckError(
            f"--outfile {out} exists and is not a reqcheck adapter; choose a new path or remove it yourself."
        )


def load_training_data(config: TrainConfig) -> tuple[list[Example], list[Example], list[Example]]:
    """All examples, then the stratified (train, val) split; every data problem is raised here."""
    examples = data_mod.load_examples(config.datafile)
    counts = data_mod.label_counts(examples)
    if len(counts) < 2:
        only = next(iter(counts))
        raise ReqcheckError(
            f"{config.datafile} has only one label ({only!r}); a checker needs examples of at least two labels."
        )
    unknown = [p for p in config.positive_labels if p not in counts]
    if unknown:
        raise ReqcheckError(
            f"--positive-label {unknown[0]!r} is not a label in the data; use one of {sorted(counts)}."
        )
    train, val = data_mod.stratified_split(examples, config.val_fraction, config.seed)
    if config.val_fraction > 0 and not val:
        raise ReqcheckError(
            f"{config.datafile} has {len(examples)} examples, too few for a validation split; add examples "
            "(at least two of one label) or pass --val-fraction 0."
        )
    return examples, train, val


def encode(
    examples: list[Example], tokenizer: Any, spec: PromptSpec, labels: LabelSet, max_length: int
) -> list[Encoded]:
    """Render every example with the shared renderer and check its invocation survived tokenisation."""
    inv = invocation_ids(tokenizer, spec.invocation)
    budget = max_length - max(len(ids) for ids in labels.token_ids)
    encoded: list[Encoded] = []
    missing: list[str] = []
    for example in examples:
        rendered = render(tokenizer, example.item, spec, example.requirement, max_length=budget)
        if find_subsequence(rendered.input_ids, inv) != rendered.invocation_start:
            missing.append(f"{example.source}:{example.line}")
            continue
        index = labels.names.index(example.label)
        encoded.append(
            Encoded(
                rendered.input_ids,
                rendered.invocation_start,
                index,
                labels.token_ids[index],
                rendered.truncated,
            )
        )
    if missing:
        raise ReqcheckError(
            f"The invocation's token ids are missing after tokenisation in {len(missing)} example(s) "
            f"({', '.join(missing[:10])}); the adapter would silently run as the base model there; "
            "choose an invocation_prompt that tokenises the same in context."
        )
    return encoded


def label_loss(model: Any, batch: list[Encoded], pad_id: int, alora: bool) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the label tokens of a left-padded batch, and how many tokens it covers.

    Left padding aligns every label at the end, so logits are computed only for the last K+1 positions.
    """
    device = next(model.parameters()).device
    sequences = [e.prompt + e.label for e in batch]
    ids, mask, positions = left_pad(sequences, pad_id, device)
    k = max(len(e.label) for e in batch)
    targets = torch.full((len(batch), k), -100, dtype=torch.long)
    for row, e in enumerate(batch):
        targets[row, k - len(e.label) :] = torch.tensor(e.label)
    extra = (
        {"alora_offsets": [len(s) - e.invocation_start for s, e in zip(sequences, batch, strict=True)]}
        if alora
        else {}
    )
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        logits_to_keep=k + 1,
        use_cache=False,
        **extra,
    )
    logits = out.logits[:, :-1].float()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.to(device).reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return loss, int((targets != -100).sum())


def batches(encoded: list[Encoded], size: int, rng: random.Random | None = None) -> list[list[Encoded]]:
    """Batches of similar length (little padding); shuffled order when an rng is given."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    if rng is not None:
        order = sorted(order, key=lambda i: (encoded[i].length // 16, rng.random()))
    groups = [[encoded[i] for i in order[start : start + size]] for start in range(0, len(order), size)]
    if rng is not None:
        rng.shuffle(groups)
    return groups


@torch.no_grad()
def _full_eval(
    model: Any, batch: list[Encoded], labels: LabelSet, pad_id: int, alora: bool
) -> tuple[float, int, int]:
    """(summed label loss, label tokens, correct argmax) of a batch, from full-sequence forwards."""
    loss, tokens = label_loss(model, batch, pad_id, alora)
    scores = score_labels(
        model, [e.prompt for e in batch], [e.invocation_start for e in batch], labels, pad_id
    )
    correct = sum(int(s.argmax()) == e.label_index for s, e in zip(scores, batch, strict=True))
    return float(loss), tokens, correct


@torch.no_grad()
def evaluate(
    model: Any,
    val: list[Encoded],
    labels: LabelSet,
    pad_id: int,
    alora: bool,
    batch_size: int,
    prefixes: prefix_mod.PrefixCache | None = None,
    group: Group = distributed.SOLO,
) -> dict[str, float]:
    """Validation loss (label tokens) and accuracy (argmax of label scores), over all processes' shares."""
    model.eval()
    totals = [0.0, 0.0, 0.0]
    for batch in batches(val, max(batch_size, 8))[group.rank :: group.world]:
        if prefixes is not None:
            result = prefix_mod.suffix_eval(prefixes, batch, labels)
        else:
            result = _full_eval(model, batch, labels, pad_id, alora)
        totals = [t + r for t, r in zip(totals, result, strict=True)]
    total, tokens, correct = distributed.sum_values(totals, group, str(next(model.parameters()).device))
    return {"val_loss": total / max(tokens, 1), "val_accuracy": correct / max(len(val), 1)}


def prefix_caches(
    config: TrainConfig, model: Any, encoded: list[Encoded], pad_id: int, device: str, report: Reporter
) -> tuple[str, prefix_mod.PrefixCache | None]:
    """The prefix-cache mode this run uses (reported, and recorded in the manifest) and its caches."""
    alora = config.adapter == "alora"
    if not alora or config.prefix_cache == "off":
        return "off", None
    needed_mb = (
        sum(e.invocation_start for e in encoded) * prefix_mod.kv_bytes_per_token(model) / prefix_mod.MB
    )
    budget_mb = config.prefix_cache_budget_mb
    if budget_mb is None:
        budget_mb = prefix_mod.default_budget_mb(device)
    plain = prefix_mod.has_plain_kv_cache(model)
    mode = prefix_mod.resolve_mode(config.prefix_cache, alora, needed_mb, budget_mb, plain)
    report(f"prefix cache: {mode} (the caches need {needed_mb:.0f} MB; budget {budget_mb} MB)")
    if mode == "off":
        return mode, None
    return mode, prefix_mod.PrefixCache(model, pad_id, keep=mode == "memory")


def _run_key(config: TrainConfig, ref: BaseModelRef, fingerprint: str) -> str:
    material = json.dumps(
        {
            "hp": config.hyperparameters(),
            "base": ref.revision,
            "data": fingerprint,
            "adapter": config.adapter,
            "promptfile": str(config.promptfile),
            "renderer": config.renderer,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def partial_dir(outfile: Path) -> Path:
    """Where an unfinished run keeps its resume checkpoint (never mistaken for an adapter)."""
    outfile = Path(outfile)
    return outfile.parent / f".{outfile.name}.reqcheck-partial"


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def train(config: TrainConfig, report: Reporter = print) -> TrainResult:
    """Train an adapter as `config` says and write it to `config.outfile`.

    Under torchrun every process calls this; only rank 0 reports and writes.
    """
    _check_config(config)
    device = resolve_device(config.device)
    group, rank_device = distributed.start(device)
    try:
        return _train(config, report if group.main else lambda _: None, group, rank_device)
    finally:
        distributed.stop(group)


def _train(config: TrainConfig, report: Reporter, group: Group, device: str) -> TrainResult:
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import get_linear_schedule_with_warmup

    started = time.perf_counter()
    invocation = read_promptfile(config.promptfile) if config.promptfile else None
    examples, train_examples, val_examples = load_training_data(config)
    fingerprint = data_mod.fingerprint(examples)
    ref = resolve_base_model(config.basemodel)
    report(
        f"base model {ref.name} on {device}; {len(train_examples)} train / {len(val_examples)} val examples"
    )

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(ref)
    names = sorted(data_mod.label_counts(examples))
    positives = config.positive_labels or default_positive_labels(names)
    spec, output = contract(
        tokenizer, config.renderer, invocation, any(e.requirement for e in examples), positives
    )
    labels = output.label_set(tokenizer, names)
    check_labels(output, tokenizer, labels)
    train_set = encode(train_examples, tokenizer, spec, labels, config.max_length)
    val_set = encode(val_examples, tokenizer, spec, labels, config.max_length)
    truncated = sum(1 for e in train_set + val_set if e.truncated)
    if truncated:
        report(
            f"{truncated} example(s) longer than --max-length {config.max_length} were truncated from the start"
        )

    base = load_model(ref, device, training_dtype(device.split(":")[0]))
    inv_ids = invocation_ids(tokenizer, spec.invocation)
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
        alora_invocation_tokens=inv_ids if config.adapter == "alora" else None,
    )
    try:
        model = get_peft_model(base, lora_config)
    except ValueError as exc:
        raise ReqcheckError(
            f"Could not attach the adapter ({exc}); check --target-modules for this model."
        ) from exc
    torch.manual_seed(config.seed + group.rank)  # the same initial adapter everywhere; own dropout masks
    alora = config.adapter == "alora"
    pad_id = tokenizer.pad_token_id
    cache_mode, prefixes = prefix_caches(config, model, train_set + val_set, pad_id, device, report)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    step_batches = config.grad_accum * group.world  # batches per optimizer step, over all processes
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / config.batch_size) / step_batches)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, max(1, total_steps // 20), total_steps)

    state: dict[str, Any] = {"epoch": 0, "best": None, "best_val_loss": math.inf, "history": []}
    checkpoint = partial_dir(config.outfile)
    run_key = _run_key(config, ref, fingerprint)
    if config.resume:
        saved = checkpoint / "state.pt"
        if saved.exists():
            loaded = torch.load(saved, map_location=device, weights_only=False)
            if loaded["run_key"] != run_key:
                raise ReqcheckError(
                    f"The interrupted run in {checkpoint} used other data, model or flags; rerun without --resume."
                )
            set_peft_model_state_dict(model, loaded["adapter"])
            optimizer.load_state_dict(loaded["optimizer"])
            scheduler.load_state_dict(loaded["scheduler"])
            state = loaded["state"]
            report(f"resuming after epoch {state['epoch']} from {checkpoint}")
        else:
            report(f"--resume: no interrupted run for {config.outfile}; starting from scratch")
    distributed.broadcast_params(params, group)

    rng = random.Random(config.seed)
    first_epoch = state["epoch"]
    for _ in range(first_epoch):
        batches(train_set, config.batch_size, rng)
    tokens_seen, train_seconds = 0, 0.0
    for epoch in range(first_epoch, config.epochs):
        model.train()
        epoch_batches = batches(train_set, config.batch_size, rng)
        steps = [epoch_batches[i : i + step_batches] for i in range(0, len(epoch_batches), step_batches)]
        epoch_start = time.perf_counter()
        running, running_tokens, last_report = 0.0, 0, 0.0
        for index, step in enumerate(steps):
            for batch in step[group.rank :: group.world]:
                if prefixes is not None:
                    loss_sum, n_tokens = prefix_mod.suffix_loss(prefixes, batch)
                else:
                    loss_sum, n_tokens = label_loss(model, batch, pad_id, alora)
                (loss_sum / max(n_tokens, 1) / step_batches).backward()
                running, running_tokens = running + float(loss_sum.detach()), running_tokens + n_tokens
                tokens_seen += sum(e.length for e in batch)
            distributed.sum_grads(params, group)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            now = time.perf_counter()
            if now - last_report > 2.0 or index + 1 == len(steps):
                last_report = now
                elapsed = now - epoch_start
                done = (epoch - first_epoch) * len(steps) + index + 1
                remaining = (config.epochs - first_epoch) * len(steps) - done
                eta = (train_seconds + elapsed) / done * remaining
                report(
                    f"epoch {epoch + 1}/{config.epochs} step {index + 1}/{len(steps)} "
                    f"loss {running / max(running_tokens, 1):.4f} eta {_format_eta(eta)}"
                )
        train_seconds += time.perf_counter() - epoch_start
        running, running_tokens = distributed.sum_values([running, running_tokens], group, device)
        metrics = {"epoch": epoch + 1, "train_loss": running / max(running_tokens, 1)}
        if val_set:
            metrics.update(
                evaluate(model, val_set, labels, pad_id, alora, config.batch_size, prefixes, group)
            )
            report(
                f"epoch {epoch + 1}: val loss {metrics['val_loss']:.4f}, val accuracy {metrics['val_accuracy']:.3f}"
            )
        state["history"].append(metrics)
        score = metrics.get("val_loss", -epoch)
        if score < state["best_val_loss"] or state["best"] is None:
            state["best_val_loss"] = score
            state["best"] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
            state["best_epoch"] = epoch + 1
        state["epoch"] = epoch + 1
        if group.main:
            checkpoint.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "run_key": run_key,
                    "adapter": get_peft_model_state_dict(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": state,
                },
                checkpoint / "state.pt.tmp",
            )
            (checkpoint / "state.pt.tmp").replace(checkpoint / "state.pt")
        distributed.barrier(group)

    set_peft_model_state_dict(model, state["best"])
    best = next(m for m in state["history"] if m["epoch"] == state["best_epoch"])
    val_counts = data_mod.label_counts(val_examples)
    majority = max(val_counts.values()) / len(val_examples) if val_examples else None
    manifest = Manifest(
        base_model=ref.to_dict(),
        adapter_type=config.adapter,
        prompt=spec,
        invocation_ids=inv_ids,
        labels=data_mod.label_counts(examples),
        label_token_ids=dict(zip(labels.names, labels.token_ids, strict=True)),
        positive_labels=positives,
        requirement=config.requirement,
        data={
            "path": str(Path(config.datafile).resolve()),
            "fingerprint": fingerprint,
            "n_train": len(train_examples),
            "n_val": len(val_examples),
            "truncated": truncated,
        },
        split_seed=config.seed,
        hyperparameters={**config.hyperparameters(), "prefix_cache": cache_mode, "processes": group.world},
        metrics={
            "best_epoch": state["best_epoch"],
            "best_val_loss": best.get("val_loss"),
            "val_accuracy": best.get("val_accuracy"),
            "majority_baseline": majority,
            "history": state["history"],
        },
        versions=library_versions(),
        output=output,
    )
    if group.main:
        with atomic_directory(config.outfile, replace_existing=True) as tmp:
            model.save_pretrained(tmp)
            _name_base_model(tmp, ref.name)
            manifest.write(tmp)
        shutil.rmtree(checkpoint, ignore_errors=True)
    distributed.barrier(group)
    (tokens_seen,) = distributed.sum_values([tokens_seen], group, device)
    seconds = time.perf_counter() - started
    return TrainResult(
        Path(config.outfile), manifest, seconds, tokens_seen / max(train_seconds, 1e-9), group.main
    )


def _name_base_model(directory: Path, name: str) -> None:
    """adapter_config.json names the base model as the Hub and Mellea do, never by this machine's path.

    Set after PEFT saved it: PEFT looks a name that is not a local path up on the Hub while saving.
    """
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**config, "base_model_name_or_path": name}, indent=2, sort_keys=True) + "\n")


def summary(result: TrainResult) -> list[str]:
    """The closing lines a user reads after training, including a plain warning when nothing was learned.

    Under torchrun only rank 0 has any, so the user reads them once.
    """
    if not result.main_process:
        return []
    m = result.manifest.metrics
    lines = [f"saved {result.manifest.adapter_type} adapter to {result.outfile}"]
    if m.get("val_accuracy") is not None:
        lines.append(
            f"best epoch {m['best_epoch']}: val loss {m['best_val_loss']:.4f}, val accuracy "
            f"{m['val_accuracy']:.3f} (majority-class baseline {m['majority_baseline']:.3f})"
        )
        if m["val_accuracy"] <= m["majority_baseline"]:
            lr = result.manifest.hyperparameters["learning_rate"]
            lines.append(
                f"warning: validation accuracy does not beat the majority-class baseline; the adapter has not "
                f"learned the task. Raise --learning-rate (now {lr:g}; 1e-4 to 5e-4 suits models under 1B, "
                "the default 6e-6 suits 8B models), train more --epochs, or add data."
            )
    lines.append(
        f"examples truncated: {result.manifest.data['truncated']}; {result.tokens_per_second:.0f} tokens/s; "
        f"wall time {_format_eta(result.seconds)}"
    )
    return lines

"""Fine-tune a LoRA or activated-LoRA adapter from labelled JSONL, top to bottom.

`_train` reads as the steps it takes, each a function below in the same order: prepare the data →
build the model → the objective → the learning rate (under `auto`, the first epoch at each rate of a
sweep, the best going on) → optimizer and schedule, resumed or fresh → for every epoch: run it,
evaluate, keep the best weights, save a checkpoint → write the adapter and its manifest. An optimizer
step's batches run as one forward where they fit (`forward_groups`). The loss covers the label
tokens only; the kept checkpoint is the one with the best validation loss. Interrupted runs keep a
resume checkpoint beside the output, never a directory that looks like a finished adapter.

aLoRA runs forward and backward over the invocation and label tokens only, on base-model prefix
caches of the items (see `prefix_cache`); `--prefix-cache off` trains on full sequences, the
reference. Under torchrun each process trains on its share of every step (see `distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reqcheck.atomic import atomic_directory
from reqcheck.errors import ReqcheckError
from reqcheck.formats import data as data_mod
from reqcheck.formats.data import Example
from reqcheck.formats.manifest import (
    DataRecord,
    LrSweep,
    Manifest,
    TrainingMetrics,
    default_positive_labels,
    is_reqcheck_adapter,
)
from reqcheck.formats.output import LabelSet, OutputSpec, check_labels, contract
from reqcheck.formats.prompting import PromptSpec, invocation_ids
from reqcheck.models.loading import (
    BaseModelRef,
    load_model,
    load_tokenizer,
    quiet_peft_wrap,
    resolve_base_model,
    resolve_device,
    training_dtype,
)
from reqcheck.models.scoring import score_labels
from reqcheck.training import distributed
from reqcheck.training import prefix_cache as prefix_mod
from reqcheck.training.checkpoint import Checkpoint, RunState, output_lock, partial_dir
from reqcheck.training.config import AdapterType, Loss, LRSchedule, TrainConfig
from reqcheck.training.distributed import Group
from reqcheck.training.encoding import LM, Encoded, Objective, batches, encode, forward_groups, label_loss

Reporter = Callable[[str], None]
PROGRESS_EVERY = 2.0  # seconds between progress lines of training steps and of validation batches


@dataclass
class TrainResult:
    outfile: Path
    manifest: Manifest
    seconds: float
    tokens_per_second: float
    main_process: bool = True
    phases: dict[str, float] = dataclasses.field(default_factory=dict)


class Stopwatch:
    """Seconds per phase of a run, so a benchmark can say where training time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Any:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - began


@dataclass
class Prepared:
    """Everything known before the model loads: the data, its split and tokens, and the run's identity."""

    examples: list[Example]
    train_examples: list[Example]
    val_examples: list[Example]
    fingerprint: str
    ref: BaseModelRef
    tokenizer: Any
    spec: PromptSpec
    invocation_ids: list[int]
    labels: LabelSet
    output: OutputSpec
    positive_labels: list[str]
    train_set: list[Encoded]
    val_set: list[Encoded]
    run_key: str
    saved: Checkpoint | None = None

    @property
    def truncated(self) -> int:
        return sum(1 for e in self.train_set + self.val_set if e.truncated)


@dataclass
class Trainable:
    """The model in training and what feeds and updates it."""

    model: Any
    params: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    pad_id: int
    alora: bool
    prefixes: prefix_mod.PrefixCache | None
    step_batches: int  # batches per optimizer step, over all processes
    objective: Objective = LM
    forward_tokens: int = 2048  # most rows x width one forward takes (forward_groups)


def train(config: TrainConfig, report: Reporter = print) -> TrainResult:
    """Train an adapter as `config` says and write it to `config.outfile`.

    Under torchrun every process calls this; only rank 0 reports, writes, and holds --outfile against
    other runs (`output_lock`).
    """
    config.check()
    config = dataclasses.replace(config, outfile=_check_outfile(Path(config.outfile)))
    device = resolve_device(config.device)
    group, rank_device = distributed.start(device)
    try:
        with output_lock(config.outfile) if group.main else contextlib.nullcontext():
            return _train(config, report if group.main else lambda _: None, group, rank_device)
    finally:
        distributed.stop(group)


def _train(config: TrainConfig, report: Reporter, group: Group, device: str) -> TrainResult:
    started, watch = time.perf_counter(), Stopwatch()

    # Prepare: read, check and split the data, resolve the base model, encode every example with the
    # shared renderer, and find the checkpoint to resume from. Every data problem is raised here.
    with watch("prepare"):
        prep = prepare(config, report, device)

    # Build the model: the base model with a fresh adapter; under aLoRA, the item prefix caches.
    with watch("model and prefix caches"):
        model = build_model(config, prep, device)
        torch.manual_seed(config.seed + group.rank)  # the same initial adapter everywhere; own dropout masks
        pad_id = prep.tokenizer.pad_token_id
        cache_mode, prefixes = prefix_caches(
            config, model, prep.train_set + prep.val_set, pad_id, device, report
        )
    warn_validation_cost(prep, prefixes is not None, report)

    # Objective: the loss over the label positions (--loss), weighted by label under --balance.
    objective = make_objective(config, prep, report)

    # Learning rate and start: resume an interrupted run; or (auto) train the first epoch at each rate of a
    # short sweep and go on from the best; or start fresh at the given rate.
    checkpoint = partial_dir(config.outfile)
    swept = None
    if config.learning_rate == "auto" and prep.saved is None:
        with watch("learning-rate sweep"):
            swept = lr_sweep(config, prep, model, pad_id, prefixes, objective, group, device, report)
    start = swept or prep.saved
    rate = start.state.sweep.chosen if config.learning_rate == "auto" else config.learning_rate
    run = optimizer_and_schedule(config, model, pad_id, prefixes, objective, rate, len(prep.train_set), group)
    state = restore(run, swept) if swept else resume_or_start(config, prep.saved, run, report)
    if swept and group.main:
        save_checkpoint(checkpoint, prep.run_key, run, state)
    distributed.broadcast_params(run.params, group)

    # Train: every epoch runs its optimizer steps over a fresh shuffle of the training set.
    rng = random.Random(config.seed)
    for _ in range(state.epoch):
        batches(prep.train_set, config.batch_size, rng)  # replay the finished epochs' shuffles
    progress = Progress(report, config.epochs, first_epoch=state.epoch)
    for epoch in range(state.epoch, config.epochs):
        with watch("training"):
            metrics = run_epoch(config, run, prep.train_set, rng, epoch, group, device, progress)

        # Evaluate: validation loss and accuracy; the epoch with the best loss keeps its weights.
        if prep.val_set:
            with watch("validation"):
                metrics.update(evaluate(run, prep.val_set, prep.labels, config.batch_size, group, report))
            report(
                f"epoch {epoch + 1}: val loss {metrics['val_loss']:.4f}, val accuracy {metrics['val_accuracy']:.3f}"
            )
        state.record(metrics, adapter_weights(model))

        # Save the checkpoint: all that --resume needs to continue after this epoch.
        if group.main:
            save_checkpoint(checkpoint, prep.run_key, run, state)
        distributed.barrier(group)

    # Write the adapter: the best epoch's weights and the manifest, atomically; then drop the checkpoint.
    load_adapter_weights(model, state.best)
    manifest = build_manifest(config, prep, state, cache_mode, group.world)
    if group.main:
        write_adapter(Path(config.outfile), model, manifest, checkpoint)
    distributed.barrier(group)
    (tokens_seen,) = distributed.sum_values([progress.tokens], group, device)
    seconds = time.perf_counter() - started
    watch.seconds["other"] = seconds - sum(watch.seconds.values())
    if prefixes is not None:  # inside the sweep, training and validation above
        watch.seconds["of which prefix forwards"] = prefixes.seconds
    return TrainResult(
        Path(config.outfile),
        manifest,
        seconds,
        tokens_seen / max(progress.seconds, 1e-9),
        group.main,
        watch.seconds,
    )


# --- prepare ---------------------------------------------------------------------------------------


def prepare(config: TrainConfig, report: Reporter, device: str) -> Prepared:
    """Data, split, base model, tokens and run identity: all the checks that need no model weights."""
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
    if config.requirement_in_prompt:
        examples, train_examples, val_examples = (
            [dataclasses.replace(e, requirement=e.requirement or config.requirement) for e in part]
            for part in (examples, train_examples, val_examples)
        )
    names = sorted(data_mod.label_counts(examples))
    framing = PromptSpec(
        invocation="",
        requirement_in_prompt=any(e.requirement for e in examples),
        item_role=config.item_role.value,
        system_prompt=config.system_prompt,
    )
    positives = config.positive_labels or default_positive_labels(names)
    spec, output = contract(
        tokenizer, config.renderer.value, invocation, positives, framing, config.alora_span.value
    )
    labels = output.label_set(tokenizer, names)
    check_labels(output, tokenizer, labels)
    prep = Prepared(
        examples,
        train_examples,
        val_examples,
        fingerprint,
        ref,
        tokenizer,
        spec,
        invocation_ids(tokenizer, spec.invocation),
        labels,
        output,
        positives,
        train_set=encode(train_examples, tokenizer, spec, labels, config.max_length),
        val_set=encode(val_examples, tokenizer, spec, labels, config.max_length),
        run_key=_run_key(config, ref, fingerprint),
    )
    if prep.truncated:
        report(
            f"{prep.truncated} example(s) longer than --max-length {config.max_length} were truncated "
            "from the start"
        )
    if config.resume:
        prep.saved = Checkpoint.read(partial_dir(config.outfile), prep.run_key, device)
        if prep.saved is None:
            report(f"--resume: no interrupted run for {config.outfile}; starting from scratch")
    return prep


def read_promptfile(path: Path) -> str:
    """The invocation prompt from a Mellea-style promptfile `{"invocation_prompt": "..."}`."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReqcheckError(
            f"Promptfile {path} does not exist; pass a JSON file with 'invocation_prompt'."
        ) from None
    except OSError as exc:  # a directory, a path under a file, no permission
        raise ReqcheckError(
            f"Promptfile {path} cannot be read ({exc.strerror or type(exc).__name__}); pass a JSON file with "
            "'invocation_prompt'."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReqcheckError(
            f'Promptfile {path} is not valid JSON ({exc}); write {{"invocation_prompt": "..."}}.'
        ) from exc
    prompt = content.get("invocation_prompt") if isinstance(content, dict) else None
    if not isinstance(prompt, str) or not prompt:
        raise ReqcheckError(f"Promptfile {path} has no non-empty 'invocation_prompt' string; add one.")
    return prompt


def _replaceable(out: Path) -> bool:
    """True when --outfile is absent, empty, or an adapter reqcheck wrote: replacing it loses nothing."""
    return not out.exists() or (out.is_dir() and (not any(out.iterdir()) or is_reqcheck_adapter(out)))


def _check_outfile(given: Path) -> Path:
    """--outfile as an absolute path; refuse one that is not ours to replace, or cannot be written, up front.

    The path is resolved through symlinks, so a linked --outfile is written where the link points (the
    link stays), and the resume checkpoint of a run does not depend on the directory it ran from. The
    current directory (`.`, `./` or an empty path) and the directories above it are refused: writing the
    adapter would replace the directory the user works in.
    """
    out = given.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ReqcheckError(
            f"--outfile {given} is the current directory or one above it, which the adapter would replace; "
            "name a new directory, such as --outfile ./adapter."
        )
    if not _replaceable(out):
        raise ReqcheckError(
            f"--outfile {out} exists and is not a reqcheck adapter; choose a new path or remove it yourself."
        )
    parent = next(p for p in (out.parent, *out.parent.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ReqcheckError(
            f"--outfile {out} cannot be written: {parent} is not a directory you may write to; choose "
            "another path."
        )
    return out


def load_training_data(config: TrainConfig) -> tuple[list[Example], list[Example], list[Example]]:
    """All examples, then the stratified (train, val) split; every data problem is raised here."""
    examples = data_mod.load_examples(config.datafile)
    data_mod.check_label_spellings(examples)
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


def _run_key(config: TrainConfig, ref: BaseModelRef, fingerprint: str) -> str:
    """What a resumed run must share with the interrupted one: data, base model and every learning flag."""
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


# --- build the model, optimizer and schedule --------------------------------------------------------


def build_model(config: TrainConfig, prep: Prepared, device: str) -> Any:
    """The base model with a fresh LoRA or aLoRA adapter on `--target-modules`."""
    from peft import LoraConfig, get_peft_model

    base = load_model(prep.ref, device, training_dtype(device.split(":")[0]))
    alora = config.adapter == AdapterType.alora
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
        alora_invocation_tokens=prep.invocation_ids if alora else None,
    )
    try:
        with quiet_peft_wrap():
            return get_peft_model(base, lora_config)
    except ValueError as exc:
        raise ReqcheckError(
            f"Could not attach the adapter ({exc}); check --target-modules for this model."
        ) from exc


def prefix_caches(
    config: TrainConfig, model: Any, encoded: list[Encoded], pad_id: int, device: str, report: Reporter
) -> tuple[str, prefix_mod.PrefixCache | None]:
    """The prefix-cache mode this run uses (reported, and recorded in the manifest) and its caches."""
    alora = config.adapter == AdapterType.alora
    if not alora or config.prefix_cache == "off":
        return "off", None
    needed_mb = (
        sum(e.invocation_start for e in encoded) * prefix_mod.kv_bytes_per_token(model) / prefix_mod.MB
    )
    budget_mb = config.prefix_cache_budget_mb
    if budget_mb is None:
        budget_mb = prefix_mod.default_budget_mb(device)
    plain = prefix_mod.has_plain_kv_cache(model)
    mode = prefix_mod.resolve_mode(config.prefix_cache.value, alora, needed_mb, budget_mb, plain)
    report(f"prefix cache: {mode} (the caches need {needed_mb:.0f} MB; budget {budget_mb} MB)")
    if mode == "off":
        return mode, None
    return mode, prefix_mod.PrefixCache(model, pad_id, keep=mode == "memory")


def total_steps(config: TrainConfig, n_train: int, group: Group) -> int:
    """Optimizer steps of the whole run: each takes `grad_accum` batches from every process."""
    return (
        math.ceil(math.ceil(n_train / config.batch_size) / (config.grad_accum * group.world)) * config.epochs
    )


def make_scheduler(kind: LRSchedule, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """Constant, or a warm-up over the first 5% of `steps` then linear or cosine decay to zero."""
    from transformers import (
        get_constant_schedule,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    if kind == LRSchedule.constant:
        return get_constant_schedule(optimizer)
    warmup = max(1, steps // 20)
    if kind == LRSchedule.cosine:
        return get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    return get_linear_schedule_with_warmup(optimizer, warmup, steps)


def optimizer_and_schedule(
    config: TrainConfig,
    model: Any,
    pad_id: int,
    prefixes: prefix_mod.PrefixCache | None,
    objective: Objective,
    rate: float,
    n_train: int,
    group: Group,
) -> Trainable:
    """AdamW over the adapter's weights at `rate`, and --lr-schedule over the whole run."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=rate)
    scheduler = make_scheduler(config.lr_schedule, optimizer, total_steps(config, n_train, group))
    alora = config.adapter == AdapterType.alora
    step_batches = config.grad_accum * group.world
    forward_tokens = config.batch_size * config.max_length
    return Trainable(
        model, params, optimizer, scheduler, pad_id, alora, prefixes, step_batches, objective, forward_tokens
    )


# --- objective and learning rate ----------------------------------------------------------------------


def make_objective(config: TrainConfig, prep: Prepared, report: Reporter) -> Objective:
    """The loss of --loss, with per-label weights (inverse frequency in the training split) under --balance."""
    weights: tuple[float, ...] = ()
    if config.balance:
        counts = data_mod.label_counts(prep.train_examples)
        total = sum(counts.values())
        weights = tuple(total / (len(counts) * counts[name]) for name in prep.labels.names)
        report(
            "label weights: "
            + ", ".join(f"{n} {w:.2f}" for n, w in zip(prep.labels.names, weights, strict=True))
        )
    firsts = prep.labels.first_ids
    if config.loss != Loss.lm and len(set(firsts)) != len(firsts):
        raise ReqcheckError(
            f"--loss {config.loss} needs labels whose first tokens differ, and two of {prep.labels.names} "
            "share one; rename a label or use --loss lm."
        )
    return Objective(config.loss.value, firsts, weights, prep.labels.lead)


# 1e-2 is left out: on trec_questions a quarter-run at 1e-2 scored best, then the full run swung between
# 0.43 and 0.67 validation accuracy (bench/quality.py); 3e-3 was the highest rate that trained stably.
LR_CANDIDATES = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
LR_START = 1e-3  # where the sweep starts: the rate that trained every benchmark set and demo here


def climb(
    score: Callable[[float], float], grid: tuple[float, ...], start: float, most: int | None = None
) -> dict[float, float]:
    """Walk the grid from `start` toward lower scores and stop where the score rises: every rate tried.

    The validation loss over a log-spaced grid of rates is U-shaped (too low learns nothing, too high
    diverges), so the lowest point is found in two to four tries when it is `start` or next to it, and the walk
    never tries more than the grid, nor more than `most` rates. A non-finite score counts as worse than
    any finite one.
    """
    tried: dict[float, float] = {}
    most = len(grid) if most is None else max(most, 1)

    def loss(i: int) -> float:
        if grid[i] not in tried:
            tried[grid[i]] = score(grid[i])
        return tried[grid[i]] if math.isfinite(tried[grid[i]]) else math.inf

    first = best = grid.index(start)
    loss(first)
    for direction in (1, -1):
        i = best + direction
        while 0 <= i < len(grid) and len(tried) < most and loss(i) < loss(best):
            best, i = i, i + direction
        if best != first:
            break
    return tried


def lr_sweep(
    config: TrainConfig,
    prep: Prepared,
    model: Any,
    pad_id: int,
    prefixes: prefix_mod.PrefixCache | None,
    objective: Objective,
    group: Group,
    device: str,
    report: Reporter,
) -> Checkpoint:
    """Train the run's first epoch at each candidate rate; the one with the lowest validation loss goes on.

    Every candidate starts from the same adapter and runs exactly the run's first epoch (its schedule,
    its shuffle, the same prefix caches), so the winner's weights, optimizer and schedule are where the
    run at that rate stands after one epoch, returned as a checkpoint (`restore`). The sweep costs one
    epoch per other rate tried: a third of a 6-epoch run for the usual three. Rates are walked from
    LR_START (`climb`), at most epochs + 1 of them, so the whole run never costs more than twice one run.
    """
    if not prep.val_set:
        raise ReqcheckError("--learning-rate auto needs a validation split; pass --val-fraction above 0.")
    start = {k: v.detach().clone() for k, v in adapter_weights(model).items()}
    candidates: list[dict[str, Any]] = []
    best: dict[str, Any] = {}  # the lowest finite val loss so far: its rate and its end (one kept at a time)

    def score(rate: float) -> float:
        load_adapter_weights(model, start)
        torch.manual_seed(config.seed + group.rank)
        run = optimizer_and_schedule(
            config, model, pad_id, prefixes, objective, rate, len(prep.train_set), group
        )
        rng = random.Random(config.seed)
        metrics = run_epoch(
            config, run, prep.train_set, rng, 0, group, device, Progress(lambda _: None, 1, 0)
        )
        metrics.update(evaluate(run, prep.val_set, prep.labels, config.batch_size, group, report))
        report(
            f"lr sweep {rate:g}: val loss {metrics['val_loss']:.4f}, val accuracy {metrics['val_accuracy']:.3f}"
        )
        candidates.append({"learning_rate": rate, **{k: metrics[k] for k in ("val_loss", "val_accuracy")}})
        if math.isfinite(metrics["val_loss"]) and metrics["val_loss"] < best.get("val_loss", math.inf):
            state = RunState()
            state.record(metrics, adapter_weights(model))
            best.update(val_loss=metrics["val_loss"], rate=rate, state=state)
            best["end"] = {
                "adapter": state.best,
                "optimizer": copy.deepcopy(run.optimizer.state_dict()),
                "scheduler": run.scheduler.state_dict(),
            }
        return metrics["val_loss"]

    climb(score, LR_CANDIDATES, LR_START, most=config.epochs + 1)
    if not best:
        raise ReqcheckError(
            "Every learning rate of the sweep diverged; check the data, or pass --learning-rate."
        )
    report(
        f"lr sweep: chose {best['rate']:g} ({len(candidates)} rates, one epoch each); it goes on from there"
    )
    best["state"].sweep = LrSweep(candidates, best["rate"])
    end = best["end"]
    return Checkpoint(prep.run_key, end["adapter"], end["optimizer"], end["scheduler"], best["state"])


# --- resume or start ----------------------------------------------------------------------------------


def resume_or_start(
    config: TrainConfig, saved: Checkpoint | None, run: Trainable, report: Reporter
) -> RunState:
    """A fresh state, or the interrupted run's weights, optimizer, schedule and state."""
    if saved is None:
        return RunState()
    state = restore(run, saved)
    report(f"resuming after epoch {state.epoch} from {partial_dir(config.outfile)}")
    return state


def restore(run: Trainable, saved: Checkpoint) -> RunState:
    """Put a checkpoint's adapter weights, optimizer and schedule into `run`; its state."""
    load_adapter_weights(run.model, saved.adapter)
    run.optimizer.load_state_dict(saved.optimizer)
    run.scheduler.load_state_dict(saved.scheduler)
    return saved.state


# --- one epoch ----------------------------------------------------------------------------------------


class Progress:
    """Step, loss and eta lines, at most every 2 s and at each epoch's last step; tokens and time trained."""

    def __init__(self, report: Reporter, epochs: int, first_epoch: int) -> None:
        self.report, self.epochs, self.first_epoch = report, epochs, first_epoch
        self.tokens, self.seconds = 0, 0.0  # over this process's epochs
        self.epoch, self.steps, self.started, self.last = first_epoch, 0, 0.0, 0.0

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.epoch, self.steps = epoch, steps
        self.started, self.last = time.perf_counter(), 0.0

    def step(self, index: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self.last <= PROGRESS_EVERY and index + 1 != self.steps:
            return
        self.last = now
        done = (self.epoch - self.first_epoch) * self.steps + index + 1
        remaining = (self.epochs - self.first_epoch) * self.steps - done
        eta = (self.seconds + now - self.started) / done * remaining
        self.report(
            f"epoch {self.epoch + 1}/{self.epochs} step {index + 1}/{self.steps} "
            f"loss {loss:.4f} eta {_format_eta(eta)}"
        )

    def end_epoch(self) -> None:
        self.seconds += time.perf_counter() - self.started


def run_epoch(
    config: TrainConfig,
    run: Trainable,
    train_set: list[Encoded],
    rng: random.Random,
    epoch: int,
    group: Group,
    device: str,
    progress: Progress,
) -> dict[str, float]:
    """One shuffled pass in optimizer steps of `grad_accum` batches per process; its mean label loss."""
    run.model.train()
    epoch_batches = batches(train_set, config.batch_size, rng)
    size = run.step_batches
    steps = [epoch_batches[i : i + size] for i in range(0, len(epoch_batches), size)]
    progress.start_epoch(epoch, len(steps))
    running, running_tokens = 0.0, 0
    for index, step in enumerate(steps):
        loss, tokens, seen = train_step(run, step, group)
        running, running_tokens, progress.tokens = (
            running + loss,
            running_tokens + tokens,
            progress.tokens + seen,
        )
        progress.step(index, running / max(running_tokens, 1))
    progress.end_epoch()
    running, running_tokens = distributed.sum_values([running, running_tokens], group, device)
    return {"epoch": epoch + 1, "train_loss": running / max(running_tokens, 1)}


def train_step(run: Trainable, step: list[list[Encoded]], group: Group) -> tuple[float, int, int]:
    """One optimizer step over this process's share of `step`: (summed loss, label tokens, item tokens).

    The loss is the mean over the share's label tokens (as transformers' Trainer normalises gradient
    accumulation), weighted by the share's batches over all processes; its batches run in as few
    forwards as `forward_groups` allows.
    """
    mine = step[group.rank :: group.world]
    examples = [e for batch in mine for e in batch]
    label_tokens = sum(len(e.label) for e in examples)
    share = len(mine) / run.step_batches
    loss, tokens = 0.0, 0
    for chunk in forward_groups(examples, run.forward_tokens, _forward_width(run)):
        if run.prefixes is not None:
            loss_sum, n_tokens = prefix_mod.suffix_loss(run.prefixes, chunk, run.objective)
        else:
            loss_sum, n_tokens = label_loss(run.model, chunk, run.pad_id, run.alora, run.objective)
        (loss_sum / max(label_tokens, 1) * share).backward()
        loss, tokens = loss + float(loss_sum.detach()), tokens + n_tokens
    distributed.sum_grads(run.params, group)
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss, tokens, sum(e.length for e in examples)


def _forward_width(run: Trainable) -> Callable[[Encoded], int]:
    """Tokens of one example in a training forward: invocation and label on a cached prefix, else all."""
    if run.prefixes is not None:
        return lambda e: e.length - e.invocation_start
    return lambda e: e.length


# --- evaluate -----------------------------------------------------------------------------------------


@torch.no_grad()
def _full_eval(
    model: Any, batch: list[Encoded], labels: LabelSet, pad_id: int, alora: bool
) -> tuple[float, int, torch.Tensor]:
    """(summed label loss, label tokens, label scores) of a batch, from full-sequence forwards."""
    loss, tokens = label_loss(model, batch, pad_id, alora)
    scores = score_labels(
        model, [e.prompt for e in batch], [e.invocation_start for e in batch], labels, pad_id
    )
    return float(loss), tokens, scores


def warn_validation_cost(prep: Prepared, cached: bool, report: Reporter) -> None:
    """Warn before training when validating an epoch costs more than training it.

    Validation scores every label for every example (each label's tokens after the invocation on the
    prefix cache, or after the prompt when a label is longer than one token), so its cost grows with the
    label count and training's does not. Costs are counted in tokens through the model, a training token
    as three (forward and backward).
    """
    n = len(prep.labels.names)
    per_label = cached or not prep.labels.single_token
    label_width = max(len(ids) for ids in prep.labels.token_ids)
    validation = sum(
        (0 if cached else e.length)
        + (n * (e.length - e.invocation_start if cached else label_width) if per_label else 0)
        for e in prep.val_set
    )
    training = 3 * sum(e.length - e.invocation_start if cached else e.length for e in prep.train_set)
    if validation > training:
        report(
            f"warning: validation scores each of the {n} labels for each of the {len(prep.val_set)} "
            f"validation examples, about {validation / max(training, 1):.0f}x the work of training an epoch; "
            "expect every epoch's validation to take longer than its training, or pass --val-fraction 0 "
            "to skip it."
        )


@torch.no_grad()
def evaluate(
    run: Trainable,
    val: list[Encoded],
    labels: LabelSet,
    batch_size: int,
    group: Group = distributed.SOLO,
    report: Reporter = lambda _: None,
) -> dict[str, float]:
    """Validation metrics over all processes' shares, from the label scores the checker reads.

    val_loss: the validation value of the run's objective (what the sweep and the best epoch go by);
    val_lm_loss: label-token loss; val_label_loss: cross-entropy of the label scores (what --loss label-set
    trains); val_accuracy; val_recall: per label, the share of its examples scored highest. A progress
    line goes to `report` every PROGRESS_EVERY seconds: with many labels validation can take longer than
    training.
    """
    run.model.eval()
    n = len(labels.names)
    totals = [0.0] * (3 + 2 * n)  # loss, tokens, label-set loss, then per label: correct, support
    mine = batches(val, max(batch_size, 8))[group.rank :: group.world]
    started = shown = time.perf_counter()
    for index, batch in enumerate(mine):
        if run.prefixes is not None:
            loss, tokens, scores = prefix_mod.suffix_eval(run.prefixes, batch, labels)
        else:
            loss, tokens, scores = _full_eval(run.model, batch, labels, run.pad_id, run.alora)
        truth = torch.tensor([e.label_index for e in batch])
        scores = scores.float().cpu()
        totals[0], totals[1] = totals[0] + loss, totals[1] + tokens
        totals[2] += float(torch.nn.functional.cross_entropy(scores, truth, reduction="sum"))
        for guess, true in zip(scores.argmax(-1).tolist(), truth.tolist(), strict=True):
            totals[3 + true] += guess == true
            totals[3 + n + true] += 1
        now = time.perf_counter()
        if now - shown > PROGRESS_EVERY and index + 1 < len(mine):
            shown, eta = now, (now - started) / (index + 1) * (len(mine) - index - 1)
            report(f"validation: batch {index + 1}/{len(mine)} eta {_format_eta(eta)}")
    device = str(next(run.model.parameters()).device)
    totals = distributed.sum_values(totals, group, device)
    correct, support = totals[3 : 3 + n], totals[3 + n :]
    lm_loss, label_loss = totals[0] / max(totals[1], 1), totals[2] / max(len(val), 1)
    return {
        "val_loss": run.objective.validation_loss(lm_loss, label_loss),
        "val_lm_loss": lm_loss,
        "val_label_loss": label_loss,
        "val_accuracy": sum(correct) / max(len(val), 1),
        "val_recall": {name: c / s for name, c, s in zip(labels.names, correct, support, strict=True) if s},
    }


# --- save the checkpoint ------------------------------------------------------------------------------


def adapter_weights(model: Any) -> dict[str, torch.Tensor]:
    """The trainable adapter's weights by name (what PEFT saves)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def load_adapter_weights(model: Any, weights: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, weights)


def save_checkpoint(checkpoint: Path, run_key: str, run: Trainable, state: RunState) -> None:
    """Everything `--resume` needs after this epoch."""
    weights = adapter_weights(run.model)
    Checkpoint(run_key, weights, run.optimizer.state_dict(), run.scheduler.state_dict(), state).save(
        checkpoint
    )


# --- write the adapter and its manifest ---------------------------------------------------------------


def build_manifest(
    config: TrainConfig, prep: Prepared, state: RunState, cache_mode: str, processes: int
) -> Manifest:
    """The adapter's reqcheck.json: how to use it exactly as trained, and where it came from."""
    best = next(m for m in state.history if m["epoch"] == state.best_epoch)
    val_counts = data_mod.label_counts(prep.val_examples)
    majority = max(val_counts.values()) / len(prep.val_examples) if prep.val_examples else None
    return Manifest(
        base_model=prep.ref,
        adapter_type=config.adapter.value,
        prompt=prep.spec,
        invocation_ids=prep.invocation_ids,
        labels=data_mod.label_counts(prep.examples),
        label_token_ids=dict(zip(prep.labels.names, prep.labels.token_ids, strict=True)),
        positive_labels=prep.positive_labels,
        requirement=config.requirement,
        data=DataRecord(
            fingerprint=prep.fingerprint,
            n_train=len(prep.train_examples),
            n_val=len(prep.val_examples),
            truncated=prep.truncated,
            file=Path(config.datafile).name,
            path=str(Path(config.datafile).resolve()),
        ),
        split_seed=config.seed,
        hyperparameters={
            **config.hyperparameters(),
            "learning_rate": state.sweep.chosen if state.sweep else config.learning_rate,
            "prefix_cache": cache_mode,
            "processes": processes,
        },
        metrics=TrainingMetrics(
            best_epoch=state.best_epoch,
            best_val_loss=best.get("val_loss"),
            val_accuracy=best.get("val_accuracy"),
            val_recall=best.get("val_recall"),
            majority_baseline=majority,
            history=state.history,
            lr_sweep=state.sweep,
        ),
        versions=library_versions(),
        output=prep.output,
    )


def write_adapter(outfile: Path, model: Any, manifest: Manifest, checkpoint: Path) -> None:
    """PEFT's files plus reqcheck.json in one rename; the resume checkpoint goes once they are in place.

    --outfile is checked again first: files the user put there during training are never replaced.
    adapter_config.json names the base model as the manifest does (its Hub id or given name), never by
    this machine's path; set after PEFT saved it, as PEFT looks a name that is not a local path up on
    the Hub while saving.
    """
    if not _replaceable(outfile):
        raise ReqcheckError(
            f"--outfile {outfile} now holds files reqcheck did not write, so it was left alone; move them "
            "away and rerun the same command with --resume to write the trained adapter."
        )
    with atomic_directory(outfile, replace_existing=True) as tmp:
        model.save_pretrained(tmp)
        _name_base_model(tmp, manifest.base_model.name)
        manifest.write(tmp)
    shutil.rmtree(checkpoint, ignore_errors=True)


def _name_base_model(directory: Path, name: str) -> None:
    """adapter_config.json names the base model as the Hub and Mellea do, never by this machine's path.

    Set after PEFT saved it: PEFT looks a name that is not a local path up on the Hub while saving.
    """
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**config, "base_model_name_or_path": name}, indent=2, sort_keys=True) + "\n")


# --- report -------------------------------------------------------------------------------------------


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def summary(result: TrainResult) -> list[str]:
    """The closing lines a user reads after training, including a plain warning when nothing was learned.

    Under torchrun only rank 0 has any, so the user reads them once.
    """
    if not result.main_process:
        return []
    m = result.manifest.metrics
    lines = [f"saved {result.manifest.adapter_type} adapter to {result.outfile}"]
    if m.val_accuracy is not None:
        lines.append(
            f"best epoch {m.best_epoch}: val loss {m.best_val_loss:.4f}, val accuracy "
            f"{m.val_accuracy:.3f} (majority-class baseline {m.majority_baseline:.3f})"
        )
        if m.val_recall:
            lines.append(
                "val recall per label: " + ", ".join(f"{k} {v:.3f}" for k, v in m.val_recall.items())
            )
        if m.lr_sweep:
            tried = ", ".join(f"{c['learning_rate']:g} ({c['val_loss']:.3f})" for c in m.lr_sweep.candidates)
            lines.append(f"learning rate {m.lr_sweep.chosen:g} chosen by val loss from: {tried}")
        if m.val_accuracy <= m.majority_baseline:
            lr = result.manifest.hyperparameters["learning_rate"]
            lines.append(
                f"warning: validation accuracy does not beat the majority-class baseline; the adapter has not "
                f"learned the task (--learning-rate {lr:g}). Rerun with --learning-rate auto, which tries "
                "rates on the validation split and keeps the best; or train more --epochs, or add data."
            )
    lines.append(
        f"examples truncated: {result.manifest.data.truncated}; {result.tokens_per_second:.0f} tokens/s; "
        f"wall time {_format_eta(result.seconds)}"
    )
    return lines


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    from reqcheck import __version__

    return {
        "reqcheck": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }

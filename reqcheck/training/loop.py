"""Fine-tune a LoRA or activated-LoRA adapter from labelled JSONL, top to bottom.

`_train` reads as the steps it takes, each in its own room: prepare the data and build the model
(`prepare`) → the learning rate (under `auto`, the first epoch at each rate of a sweep, the best going on:
`sweep`) → optimizer and schedule, resumed or fresh (`run`) → for every epoch: run it (`steps`), validate
(`validation`), keep the best weights, save a checkpoint → write the adapter and its manifest
(`outputs`); `progress` tells the user. Every step reads and writes one `Run`. The loss covers the label
tokens only; the kept checkpoint is the one with the best validation loss. Interrupted runs keep a resume
checkpoint beside the output, never a directory that looks like a finished adapter.

aLoRA runs forward and backward over the invocation and label tokens only, on base-model prefix
caches of the items (see `prefix_cache`); `--prefix-cache off` trains on full sequences, the
reference. Under torchrun each process trains on its share of every step (see `distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from pathlib import Path

import torch

from reqcheck.formats.manifest import Manifest
from reqcheck.models.loading import resolve_device
from reqcheck.training import distributed
from reqcheck.training.checkpoint import RunState, output_lock, partial_dir
from reqcheck.training.config import TrainConfig
from reqcheck.training.distributed import Group
from reqcheck.training.outputs import build_manifest, check_outfile, save_checkpoint, write_adapter
from reqcheck.training.prepare import build_model, make_objective, prefix_caches, prepare
from reqcheck.training.progress import Progress, Reporter, Stopwatch, format_eta
from reqcheck.training.run import Run, adapter_weights, load_adapter_weights, restore
from reqcheck.training.steps import run_epoch
from reqcheck.training.sweep import lr_sweep
from reqcheck.training.validation import evaluate, warn_validation_cost


@dataclasses.dataclass
class TrainResult:
    outfile: Path
    manifest: Manifest
    seconds: float
    tokens_per_second: float
    main_process: bool = True
    phases: dict[str, float] = dataclasses.field(default_factory=dict)


def train(config: TrainConfig, report: Reporter = print) -> TrainResult:
    """Train an adapter as `config` says and write it to `config.outfile`.

    Under torchrun every process calls this; only rank 0 reports, writes, and holds --outfile against
    other runs (`output_lock`).
    """
    config.check()
    config = dataclasses.replace(config, outfile=check_outfile(Path(config.outfile)))
    device = resolve_device(config.device)
    group, rank_device = distributed.start(device)
    try:
        with output_lock(config.outfile) if group.main else contextlib.nullcontext():
            result = _train(config, report if group.main else lambda _: None, group, rank_device)
        # A rank that tears the group down while a peer still reads its last message aborts that peer
        # (once in CI: rank 1 died with SIGABRT after a finished run). Only a finished run waits here;
        # after a failure the peers may never arrive.
        distributed.barrier(group)
        return result
    finally:
        distributed.stop(group)


def _train(config: TrainConfig, report: Reporter, group: Group, device: str) -> TrainResult:
    started, watch = time.perf_counter(), Stopwatch()

    # Prepare: read, check and split the data, resolve the base model, encode every example with the
    # shared renderer, and find the checkpoint to resume from. Every data problem is raised here.
    with watch("prepare"):
        run = Run(config, device, group, report, prepare(config, report, device), watch)

    # Build the model: the base model with a fresh adapter; under aLoRA, the item prefix caches.
    with watch("model and prefix caches"):
        run.model = build_model(run)
        torch.manual_seed(config.seed + group.rank)  # the same initial adapter everywhere; own dropout masks
        run.cache_mode, run.prefixes = prefix_caches(run)
    warn_validation_cost(run.prep, run.prefixes is not None, report)

    # Objective: the loss over the label positions (--loss), weighted by label under --balance.
    run.objective = make_objective(run)

    # Learning rate and start: resume an interrupted run; or (auto) train the first epoch at each rate of a
    # short sweep and go on from the best; or start fresh at the given rate.
    state = starting_state(run)

    # Train: every epoch runs its optimizer steps over a fresh shuffle of the training set.
    progress = Progress(report, config.epochs, first_epoch=state.epoch)
    train_epochs(run, state, progress)

    # Write the adapter: the best epoch's weights and the manifest, atomically; then drop the checkpoint.
    load_adapter_weights(run.model, state.best)
    manifest = build_manifest(run, state)
    if group.main:
        write_adapter(run, manifest)
    distributed.barrier(group)
    (tokens_seen,) = distributed.sum_values([progress.tokens], group, device)
    seconds = time.perf_counter() - started
    watch.seconds["other"] = seconds - sum(watch.seconds.values())
    if run.prefixes is not None:  # inside the sweep, training and validation above
        watch.seconds["of which prefix forwards"] = run.prefixes.seconds
    return TrainResult(
        Path(config.outfile),
        manifest,
        seconds,
        tokens_seen / max(progress.seconds, 1e-9),
        group.main,
        watch.seconds,
    )


def starting_state(run: Run) -> RunState:
    """The state training starts from: an interrupted run's, the sweep's winner's, or a fresh one.

    A fresh run shuffles with a generator of its seed; a resumed one (or the sweep's winner) goes on with
    the random state its checkpoint holds, so it draws what the uninterrupted run would have drawn.
    """
    config, saved = run.config, run.prep.saved
    swept = None
    if config.learning_rate == "auto" and saved is None:
        with run.watch("learning-rate sweep"):
            swept = lr_sweep(run)
    begin = swept or saved
    run.trainable_at(begin.state.sweep.chosen if config.learning_rate == "auto" else config.learning_rate)
    if begin is None:
        state, run.shuffle = RunState(), random.Random(config.seed)
    else:
        state = restore(run, begin)
    if swept:
        save_checkpoint(run, state)
    elif saved is not None:
        run.report(f"resuming after epoch {state.epoch} from {partial_dir(config.outfile)}")
    distributed.broadcast_params(run.trainable.params, run.group)
    return state


def train_epochs(run: Run, state: RunState, progress: Progress) -> None:
    """The remaining epochs: train, validate (the best loss keeps its weights), save the checkpoint."""
    config, watch = run.config, run.watch
    for epoch in range(state.epoch, config.epochs):
        with watch("training"):
            metrics = run_epoch(run, run.shuffle, epoch, progress)
        if run.prep.val_set:
            with watch("validation"):
                metrics.update(evaluate(run))
            run.report(
                f"epoch {epoch + 1}: val loss {metrics['val_loss']:.4f}, val accuracy {metrics['val_accuracy']:.3f}"
            )
        state.record(metrics, adapter_weights(run.model))
        save_checkpoint(run, state)  # all that --resume needs to continue after this epoch
        distributed.barrier(run.group)


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
        f"wall time {format_eta(result.seconds)}"
    )
    return lines

"""The run object: one training run's options, device, process group, reporter, prepared data and what
trains, carried together through every step (as transformers' Trainer keeps its state on one object),
and the optimizer and schedule a run trains with.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from reqcheck.formats.data import Example
from reqcheck.formats.output import LabelSet, OutputSpec
from reqcheck.formats.prompting import PromptSpec
from reqcheck.models.loading import BaseModelRef
from reqcheck.training import distributed, randomness
from reqcheck.training import prefix_cache as prefix_mod
from reqcheck.training.checkpoint import Checkpoint, RunState
from reqcheck.training.config import AdapterType, LRSchedule, TrainConfig
from reqcheck.training.distributed import Group
from reqcheck.training.encoding import LM, Encoded, Objective
from reqcheck.training.progress import Reporter, Stopwatch


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
    identity: dict[str, str] = field(default_factory=dict)  # what a resumed run must share (`run_identity`)
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


@dataclass
class Run:
    """One training run as each step sees it. `model`, `prefixes` (aLoRA's base-model prefix caches, under
    `cache_mode`) and `objective` are set once the model is built; `trainable` is what the current epoch
    trains (each rate of a learning-rate sweep gets its own), `shuffle` what orders its data."""

    config: TrainConfig
    device: str
    group: Group
    report: Reporter
    prep: Prepared
    watch: Stopwatch
    model: Any = None
    prefixes: prefix_mod.PrefixCache | None = None
    cache_mode: str = "off"
    objective: Objective = LM
    trainable: Trainable | None = None
    shuffle: random.Random | None = None  # draws every epoch's data order; travels in the checkpoint

    @property
    def pad_id(self) -> int:
        return self.prep.tokenizer.pad_token_id

    def trainable_at(self, rate: float) -> Trainable:
        """AdamW over the adapter's weights at `rate`, and --lr-schedule over the whole run: what trains now."""
        config, group = self.config, self.group
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=rate)
        scheduler = make_scheduler(
            config.lr_schedule, optimizer, total_steps(config, len(self.prep.train_set), group)
        )
        alora = config.adapter == AdapterType.alora
        step_batches = config.grad_accum * group.world
        forward_tokens = config.batch_size * config.max_length
        self.trainable = Trainable(
            self.model,
            params,
            optimizer,
            scheduler,
            self.pad_id,
            alora,
            self.prefixes,
            step_batches,
            self.objective,
            forward_tokens,
        )
        return self.trainable


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


def adapter_weights(model: Any) -> dict[str, torch.Tensor]:
    """The trainable adapter's weights by name (what PEFT saves)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def load_adapter_weights(model: Any, weights: dict[str, torch.Tensor]) -> None:
    """Put adapter weights (as `adapter_weights` returned them) back into the model."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, weights)


def restore(run: Run, saved: Checkpoint) -> RunState:
    """Go on from a checkpoint: its adapter weights, optimizer, schedule and random state; its run state.

    Each process takes its own random state back. Under another number of processes than the checkpoint
    holds states for, the run goes on with fresh random streams (seeded as a new run's), and says so.
    """
    trainable = run.trainable
    load_adapter_weights(trainable.model, saved.adapter)
    trainable.optimizer.load_state_dict(saved.optimizer)
    trainable.scheduler.load_state_dict(saved.scheduler)
    if len(saved.random) == run.group.world:
        run.shuffle = randomness.restore(saved.random[run.group.rank], run.device)
    else:
        run.report(
            f"the checkpoint holds the random state of {len(saved.random)} process(es), not {run.group.world}; "
            "dropout and the data order go on from fresh random streams"
        )
        torch.manual_seed(run.config.seed + run.group.rank + saved.state.epoch)
        run.shuffle = random.Random(run.config.seed + saved.state.epoch)
    return saved.state


def checkpoint(run: Run, state: RunState) -> Checkpoint:
    """Where the run stands now, as `--resume` reads it; every process calls this at the same point.

    The weights, optimizer and schedule are the same on every process; the random states are not, so
    every process's is gathered.
    """
    trainable = run.trainable
    states = distributed.gather(randomness.capture(run.shuffle, run.device), run.group)
    return Checkpoint(
        run.prep.identity,
        {k: v.detach().clone() for k, v in adapter_weights(trainable.model).items()},
        copy.deepcopy(trainable.optimizer.state_dict()),
        trainable.scheduler.state_dict(),
        state,
        states,
    )

"""One epoch: a fresh shuffle of the training set in optimizer steps of `grad_accum` batches per process,
each step's batches in as few forwards as fit (`forward_groups`), on aLoRA's prefix caches when it has them.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from reqcheck.training import distributed
from reqcheck.training import prefix_cache as prefix_mod
from reqcheck.training.distributed import Group
from reqcheck.training.encoding import Encoded, batches, forward_groups, label_loss
from reqcheck.training.progress import Progress
from reqcheck.training.run import Run, Trainable


def run_epoch(run: Run, rng: random.Random, epoch: int, progress: Progress) -> dict[str, float]:
    """One shuffled pass in optimizer steps of `grad_accum` batches per process; its mean label loss."""
    trainable = run.trainable
    trainable.model.train()
    epoch_batches = batches(run.prep.train_set, run.config.batch_size, rng)
    size = trainable.step_batches
    steps = [epoch_batches[i : i + size] for i in range(0, len(epoch_batches), size)]
    progress.start_epoch(epoch, len(steps))
    running, running_tokens = 0.0, 0
    for index, step in enumerate(steps):
        loss, tokens, seen = train_step(trainable, step, run.group)
        running, running_tokens, progress.tokens = (
            running + loss,
            running_tokens + tokens,
            progress.tokens + seen,
        )
        progress.step(index, running / max(running_tokens, 1))
    progress.end_epoch()
    running, running_tokens = distributed.sum_values([running, running_tokens], run.group, run.device)
    return {"epoch": epoch + 1, "train_loss": running / max(running_tokens, 1)}


def train_step(trainable: Trainable, step: list[list[Encoded]], group: Group) -> tuple[float, int, int]:
    """One optimizer step over this process's share of `step`: (summed loss, label tokens, item tokens).

    The loss is the mean over the share's label tokens (as transformers' Trainer normalises gradient
    accumulation), weighted by the share's batches over all processes; its batches run in as few
    forwards as `forward_groups` allows.
    """
    mine = step[group.rank :: group.world]
    examples = [e for batch in mine for e in batch]
    label_tokens = sum(len(e.label) for e in examples)
    share = len(mine) / trainable.step_batches
    loss, tokens = 0.0, 0
    for chunk in forward_groups(examples, trainable.forward_tokens, _forward_width(trainable)):
        if trainable.prefixes is not None:
            loss_sum, n_tokens = prefix_mod.suffix_loss(trainable.prefixes, chunk, trainable.objective)
        else:
            loss_sum, n_tokens = label_loss(
                trainable.model, chunk, trainable.pad_id, trainable.alora, trainable.objective
            )
        (loss_sum / max(label_tokens, 1) * share).backward()
        loss, tokens = loss + float(loss_sum.detach()), tokens + n_tokens
    distributed.sum_grads(trainable.params, group)
    torch.nn.utils.clip_grad_norm_(trainable.params, 1.0)
    trainable.optimizer.step()
    trainable.scheduler.step()
    trainable.optimizer.zero_grad(set_to_none=True)
    return loss, tokens, sum(e.length for e in examples)


def _forward_width(trainable: Trainable) -> Callable[[Encoded], int]:
    """Tokens of one example in a training forward: invocation and label on a cached prefix, else all."""
    if trainable.prefixes is not None:
        return lambda e: e.length - e.invocation_start
    return lambda e: e.length

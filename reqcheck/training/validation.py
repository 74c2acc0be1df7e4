"""Validation: the metrics an epoch is judged by (loss of the run's objective, accuracy, per-label
recall), from the same label scores the checker reads, and a warning when validating costs more than
training.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from reqcheck.formats.output import LabelSet
from reqcheck.models.scoring import score_labels
from reqcheck.training import distributed
from reqcheck.training import prefix_cache as prefix_mod
from reqcheck.training.encoding import Encoded, batches, label_loss
from reqcheck.training.progress import Reporter, due, format_eta
from reqcheck.training.run import Prepared, Run


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
def evaluate(run: Run) -> dict[str, float]:
    """Validation metrics over all processes' shares, from the label scores the checker reads.

    val_loss: the validation value of the run's objective (what the sweep and the best epoch go by);
    val_lm_loss: label-token loss; val_label_loss: cross-entropy of the label scores (what --loss label-set
    trains); val_accuracy; val_recall: per label, the share of its examples scored highest. A progress
    line goes to `report` every PROGRESS_EVERY seconds: with many labels validation can take longer than
    training.
    """
    trainable, labels, val, group = run.trainable, run.prep.labels, run.prep.val_set, run.group
    trainable.model.eval()
    n = len(labels.names)
    totals = [0.0] * (3 + 2 * n)  # loss, tokens, label-set loss, then per label: correct, support
    mine = batches(val, max(run.config.batch_size, 8))[group.rank :: group.world]
    started = shown = time.perf_counter()
    for index, batch in enumerate(mine):
        if trainable.prefixes is not None:
            loss, tokens, scores = prefix_mod.suffix_eval(trainable.prefixes, batch, labels)
        else:
            loss, tokens, scores = _full_eval(
                trainable.model, batch, labels, trainable.pad_id, trainable.alora
            )
        truth = torch.tensor([e.label_index for e in batch])
        scores = scores.float().cpu()
        totals[0], totals[1] = totals[0] + loss, totals[1] + tokens
        totals[2] += float(torch.nn.functional.cross_entropy(scores, truth, reduction="sum"))
        for guess, true in zip(scores.argmax(-1).tolist(), truth.tolist(), strict=True):
            totals[3 + true] += guess == true
            totals[3 + n + true] += 1
        now = time.perf_counter()
        if due(shown, now) and index + 1 < len(mine):
            shown, eta = now, (now - started) / (index + 1) * (len(mine) - index - 1)
            run.report(f"validation: batch {index + 1}/{len(mine)} eta {format_eta(eta)}")
    device = str(next(trainable.model.parameters()).device)
    totals = distributed.sum_values(totals, group, device)
    correct, support = totals[3 : 3 + n], totals[3 + n :]
    lm_loss, label_loss = totals[0] / max(totals[1], 1), totals[2] / max(len(val), 1)
    return {
        "val_loss": trainable.objective.validation_loss(lm_loss, label_loss),
        "val_lm_loss": lm_loss,
        "val_label_loss": label_loss,
        "val_accuracy": sum(correct) / max(len(val), 1),
        "val_recall": {name: c / s for name, c, s in zip(labels.names, correct, support, strict=True) if s},
    }

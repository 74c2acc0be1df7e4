"""`--learning-rate auto`: the run's first epoch at each rate of a short sweep, the best going on.

Rates are walked from LR_START over a log-spaced grid (`climb`), stopping where the validation loss rises.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch

from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import LrSweep
from reqcheck.training.checkpoint import Checkpoint, RunState
from reqcheck.training.progress import Progress
from reqcheck.training.run import Run, adapter_weights, checkpoint, load_adapter_weights
from reqcheck.training.steps import run_epoch
from reqcheck.training.validation import evaluate

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


def lr_sweep(run: Run) -> Checkpoint:
    """Train the run's first epoch at each candidate rate; the one with the lowest validation loss goes on.

    Every candidate starts from the same adapter and runs exactly the run's first epoch (its schedule,
    its shuffle, the same prefix caches), so the winner's weights, optimizer and schedule are where the
    run at that rate stands after one epoch, returned as a checkpoint (`restore`). The sweep costs one
    epoch per other rate tried: a third of a 6-epoch run for the usual three. Rates are walked from
    LR_START (`climb`), at most epochs + 1 of them, so the whole run never costs more than twice one run.
    """
    if not run.prep.val_set:
        raise ReqcheckError("--learning-rate auto needs a validation split; pass --val-fraction above 0.")
    start = {k: v.detach().clone() for k, v in adapter_weights(run.model).items()}
    candidates: list[dict[str, Any]] = []
    best: dict[str, Any] = {}  # the lowest finite val loss so far: its rate and its end (one kept at a time)

    def score(rate: float) -> float:
        load_adapter_weights(run.model, start)
        torch.manual_seed(run.config.seed + run.group.rank)
        run.trainable_at(rate)
        run.shuffle = random.Random(run.config.seed)
        metrics = run_epoch(run, run.shuffle, 0, Progress(lambda _: None, 1, 0))
        metrics.update(evaluate(run))
        run.report(
            f"lr sweep {rate:g}: val loss {metrics['val_loss']:.4f}, val accuracy {metrics['val_accuracy']:.3f}"
        )
        candidates.append({"learning_rate": rate, **{k: metrics[k] for k in ("val_loss", "val_accuracy")}})
        if math.isfinite(metrics["val_loss"]) and metrics["val_loss"] < best.get("val_loss", math.inf):
            state = RunState()
            state.record(metrics, adapter_weights(run.model))
            best.update(val_loss=metrics["val_loss"], rate=rate, end=checkpoint(run, state))
        return metrics["val_loss"]

    climb(score, LR_CANDIDATES, LR_START, most=run.config.epochs + 1)
    if not best:
        raise ReqcheckError(
            "Every learning rate of the sweep diverged; check the data, or pass --learning-rate."
        )
    run.report(
        f"lr sweep: chose {best['rate']:g} ({len(candidates)} rates, one epoch each); it goes on from there"
    )
    best["end"].state.sweep = LrSweep(candidates, best["rate"])
    return best["end"]

"""aLoRA training that never recomputes or back-propagates through the item.

An activated LoRA applies its weights only from the invocation on, so the keys and values of every
token before it are the frozen base model's: they do not depend on the trainable weights. Training
therefore computes that prefix once without gradients (and keeps it across epochs while it fits a
memory budget) and runs forward and backward only over the invocation and label tokens. The loss
and its gradients equal those of full-sequence training.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from reqcheck.errors import ReqcheckError
from reqcheck.formats.output import LabelSet
from reqcheck.models import kvcache
from reqcheck.models.scoring import left_pad
from reqcheck.training.encoding import LM, Encoded, Objective

MB = 1024 * 1024


def default_budget_mb(device: str) -> int:
    """A quarter of the free memory where the caches live, shared by the processes on this host."""
    if device.startswith("cuda"):
        free = torch.cuda.mem_get_info(torch.device(device))[0]
        return int(free / 4 / MB)
    import psutil

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return int(psutil.virtual_memory().available / 4 / local / MB)


def has_plain_kv_cache(model: Any) -> bool:
    """True when every layer keeps a full key/value cache (no sliding window, no recurrent state)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


@torch.no_grad()
def kv_bytes_per_token(model: Any) -> int:
    """Bytes one token's keys and values take over all layers, measured on a one-token forward."""
    device = next(model.parameters()).device
    out = model(
        input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=True, alora_offsets=[0]
    )
    return sum(t.numel() * t.element_size() for layer in out.cache.layers for t in (layer.keys, layer.values))


def resolve_mode(requested: str, alora: bool, needed_mb: float, budget_mb: float, plain_cache: bool) -> str:
    """The mode training runs in: `auto` keeps caches that fit the budget and recomputes otherwise.

    `memory` over budget is an error rather than a silent fallback: who asks for it wants the speed.
    `requested` is a valid mode for this adapter type (`TrainConfig.check`).
    """
    if not alora or requested == "off":
        return "off"
    if not plain_cache:
        if requested != "auto":
            raise ReqcheckError(
                f"--prefix-cache {requested} needs a model with plain full-attention key/value caches; "
                "use --prefix-cache auto or off."
            )
        return "off"
    if requested == "memory" and needed_mb > budget_mb:
        raise ReqcheckError(
            f"The prefix caches need {needed_mb:.0f} MB but the budget is {budget_mb:.0f} MB; raise "
            "--prefix-cache-budget-mb or use --prefix-cache auto."
        )
    if requested == "auto":
        return "memory" if needed_mb <= budget_mb else "recompute"
    return requested


class PrefixCache:
    """Base-model keys and values of each item's prefix (the tokens before its invocation).

    With `keep`, each item's prefix is stored unpadded the first time it is computed and assembled
    into a fresh left-padded cache for every later batch (a transformers cache grows on every forward,
    so one is never passed twice). `seconds` sums the time spent computing prefixes, for benchmarks.
    """

    def __init__(self, model: Any, pad_id: int, keep: bool) -> None:
        self.model, self.pad_id, self.keep = model, pad_id, keep
        self.stored: dict[int, kvcache.KV] = {}
        self.seconds = 0.0

    def batch(self, batch: list[Encoded]) -> tuple[Any, torch.Tensor]:
        """(cache, left-padded attention mask) of the batch's prefixes."""
        if all(id(e) in self.stored for e in batch):
            return kvcache.left_pad_batch([self.stored[id(e)] for e in batch])
        began = time.perf_counter()
        cache, mask = self._compute(batch)
        self.seconds += time.perf_counter() - began
        if self.keep:
            kv = kvcache.tensors(cache)
            for index, e in enumerate(batch):
                self.stored[id(e)] = kvcache.row(kv, index, mask.shape[1] - e.invocation_start)
        return cache, mask

    @torch.no_grad()
    def _compute(self, batch: list[Encoded]) -> tuple[Any, torch.Tensor]:
        device = next(self.model.parameters()).device
        ids, mask, positions = left_pad([e.prompt[: e.invocation_start] for e in batch], self.pad_id, device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            alora_offsets=[0] * len(batch),
        )
        return out.cache, mask


def _suffix_forward(
    model: Any, cache: Any, prefix_mask: torch.Tensor, suffixes: list[list[int]], pad_id: int, keep: int
) -> torch.Tensor:
    """Logits of the last `keep` suffix positions; suffixes are right-padded after their prefix.

    Every suffix starts with the invocation, so the adapter applies to all of it: PEFT adapts the
    last `alora_offsets[i]` positions of row i, here the whole padded suffix.
    """
    device = prefix_mask.device
    width = max(len(s) for s in suffixes)
    ids = torch.full((len(suffixes), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(suffixes), width), dtype=torch.long)
    for row, s in enumerate(suffixes):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
    positions = prefix_mask.sum(-1, keepdim=True) + torch.arange(width, device=device)
    out = model(
        input_ids=ids.to(device),
        attention_mask=torch.cat([prefix_mask, mask.to(device)], dim=1),
        position_ids=positions,
        cache=cache,
        use_cache=True,
        logits_to_keep=keep,
        alora_offsets=[width] * len(suffixes),
    )
    return out.logits.float()


def _label_logits(
    model: Any,
    cache: Any,
    prefix_mask: torch.Tensor,
    batch: list[Encoded],
    labels: list[list[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting `labels[i]` after item i's invocation, and the targets (-100 past each label)."""
    suffixes = [e.prompt[e.invocation_start :] + label for e, label in zip(batch, labels, strict=True)]
    k = max(len(label) for label in labels)
    logits = _suffix_forward(model, cache, prefix_mask, suffixes, pad_id, k + 1)[:, :-1]
    targets = torch.full((len(batch), k), -100, dtype=torch.long)
    for row, label in enumerate(labels):
        targets[row, : len(label)] = torch.tensor(label)
    return logits, targets.to(logits.device)


def suffix_loss(
    prefixes: PrefixCache, batch: list[Encoded], objective: Objective = LM
) -> tuple[torch.Tensor, int]:
    """The objective over the label tokens, forward and backward over invocation + label only."""
    cache, mask = prefixes.batch(batch)
    logits, targets = _label_logits(
        prefixes.model, cache, mask, batch, [e.label for e in batch], prefixes.pad_id
    )
    first = torch.zeros(len(batch), dtype=torch.long, device=logits.device)
    return objective(logits, targets, first, batch)


@torch.no_grad()
def suffix_eval(
    prefixes: PrefixCache, batch: list[Encoded], labels: LabelSet
) -> tuple[float, int, torch.Tensor]:
    """(summed label loss, label tokens, label scores) of a validation batch.

    Scored as `score_labels` does: every label after the same prefix in one batched suffix pass;
    single-token label sets by their first token after the shared lead (the JSON up to the value),
    others by their full log-likelihood after it.
    """
    cache, mask = prefixes.batch(batch)
    n = len(labels.names)
    cache.batch_repeat_interleave(n)
    rows = [e for e in batch for _ in range(n)]
    logits, targets = _label_logits(
        prefixes.model,
        cache,
        mask.repeat_interleave(n, dim=0),
        rows,
        labels.token_ids * len(batch),
        prefixes.pad_id,
    )
    real = targets != -100
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logp, real = (picked * real).view(len(batch), n, -1), real.view(len(batch), n, -1)
    scores = logp[:, :, labels.lead] if labels.single_token else logp[:, :, labels.lead :].sum(-1)
    truth = torch.tensor([e.label_index for e in batch], device=logp.device)
    rows_ = torch.arange(len(batch), device=logp.device)
    loss = -float(logp[rows_, truth].sum())
    tokens = int(real[rows_, truth].sum())
    return loss, tokens, scores

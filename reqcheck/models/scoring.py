"""Label scoring: the model's distribution over a known label set at the invocation position.

No free-form generation is parsed. Label sets whose labels are single, distinct tokens are read from
one forward pass; otherwise each label's full log-likelihood (its tokens and the end-of-text token)
is computed by extending the prompt's KV cache with every label in one more batched pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from reqcheck.formats.output import LabelSet


def is_alora(model: Any) -> bool:
    """True for a PEFT model whose active adapter is an activated LoRA."""
    config = getattr(model, "peft_config", None)
    if not config:
        return False
    active = model.active_adapter
    return getattr(config[active], "alora_invocation_tokens", None) is not None


def alora_offsets(sequences: list[list[int]], invocation_starts: list[int], alora: bool) -> dict[str, Any]:
    """The forward's `alora_offsets` keyword for an aLoRA (nothing for a LoRA): row i runs with the adapter
    from its invocation start to its end. Passed explicitly, rather than left to PEFT's search."""
    if not alora:
        return {}
    return {"alora_offsets": [len(s) - start for s, start in zip(sequences, invocation_starts, strict=True)]}


@contextmanager
def plain_lora(model: Any) -> Iterator[None]:
    """The active aLoRA run as a plain LoRA while the block lasts: for forwards whose every token is past the
    invocation, where both give the same numbers. PEFT masks an aLoRA's tokens in every LoRA layer (an
    index and an index_put each, about 12 % of a cached check) whatever the offsets, and has no switch to
    skip it; its layers take the plain LoRA path for an adapter that has no entry in `lora_variant`."""
    from peft.tuners.lora import LoraLayer

    name = model.active_adapter
    saved = {}
    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.lora_variant:
            saved[module] = module.lora_variant.pop(name)
    try:
        yield
    finally:
        for module, variant in saved.items():
            module.lora_variant[name] = variant


def left_pad(
    sequences: list[list[int]], pad_id: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids) for left-padded sequences.

    Explicit position ids keep a padded row's positions equal to the unpadded row's.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


@dataclass
class Prefix:
    """A batch of already-computed context KV caches that the prompts continue.

    `cache` is consumed (a forward pass appends to it): build a fresh one for every call.
    """

    cache: Any
    mask: torch.Tensor
    lengths: torch.Tensor


@torch.no_grad()
def score_labels(
    model: Any,
    prompts: list[list[int]],
    invocation_starts: list[int],
    labels: LabelSet,
    pad_id: int,
    prefix: Prefix | None = None,
) -> torch.Tensor:
    """Log-likelihood of each label after each prompt, shape (len(prompts), len(labels)).

    With `prefix`, each prompt is the suffix that follows that row's cached context (positions
    continue from the context's length). For an aLoRA model the adapter is switched on from each
    prompt's invocation start and over the label tokens; offsets are passed explicitly rather than left
    to PEFT's search. A label set's lead tokens are appended to every prompt.
    """
    if labels.lead:
        lead, labels = labels.after_lead()
        prompts = [p + lead for p in prompts]
    device = next(model.parameters()).device
    ids, mask, positions = left_pad(prompts, pad_id, device)
    past = None
    if prefix is not None:
        positions = positions + prefix.lengths.to(device).unsqueeze(1)
        mask = torch.cat([prefix.mask.to(device), mask], dim=1)
        past = prefix.cache
    alora = is_alora(model)
    extra = alora_offsets(prompts, invocation_starts, alora)
    # every token past the invocation (a cached check's suffix starts at it): no token to mask
    unmasked = alora and not any(invocation_starts)
    with plain_lora(model) if unmasked else nullcontext():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=past,
            use_cache=past is not None or not labels.single_token,
            logits_to_keep=1,
            **extra,
        )
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    first_ids = torch.tensor([t[0] for t in labels.token_ids], device=device)
    scores = first[:, first_ids]
    if labels.single_token:
        return scores.cpu()

    n_prompts, n_labels = len(prompts), len(labels.names)
    cache = out.cache
    cache.batch_repeat_interleave(n_labels)
    rest = [ids_[1:] for ids_ in labels.token_ids]
    feed = [ids_[:-1] for ids_ in labels.token_ids]
    steps = max(len(f) for f in feed)
    cont = torch.full((n_labels, steps), pad_id, dtype=torch.long)
    cont_mask = torch.zeros((n_labels, steps), dtype=torch.long)
    for j, f in enumerate(feed):
        cont[j, : len(f)] = torch.tensor(f)
        cont_mask[j, : len(f)] = 1
    cont, cont_mask = cont.repeat(n_prompts, 1).to(device), cont_mask.repeat(n_prompts, 1).to(device)
    full_mask = torch.cat([mask.repeat_interleave(n_labels, dim=0), cont_mask], dim=1)
    start = positions[:, -1:].repeat_interleave(n_labels, dim=0) + 1
    cont_positions = start + torch.arange(steps, device=device)
    extra = {"alora_offsets": [steps] * (n_prompts * n_labels)} if alora else {}
    with plain_lora(model) if alora else nullcontext():  # the label tokens are all past the invocation
        out2 = model(
            input_ids=cont,
            attention_mask=full_mask,
            position_ids=cont_positions,
            cache=cache,
            use_cache=True,
            **extra,
        )
    logp = torch.log_softmax(out2.logits.float(), dim=-1)
    for j, targets in enumerate(rest):
        rows = torch.arange(j, n_prompts * n_labels, n_labels, device=device)
        t = torch.tensor(targets, device=device)
        picked = logp[rows][:, torch.arange(len(t), device=device), t]
        scores[:, j] += picked.sum(-1)
    return scores.cpu()

"""Labelled examples as token ids for training: encode them, batch them, and the label loss of a batch.

Shared by full-sequence training (`label_loss`) and aLoRA training on cached prefixes (`prefix_cache`),
so neither imports the trainer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import Example
from reqcheck.formats.output import LabelSet
from reqcheck.formats.prompting import PromptSpec, find_subsequence, invocation_ids, render
from reqcheck.models.scoring import alora_offsets, left_pad


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


def encode(
    examples: list[Example], tokenizer: Any, spec: PromptSpec, labels: LabelSet, max_length: int
) -> list[Encoded]:
    """Render every example with the shared renderer and check its invocation survived tokenisation."""
    inv = invocation_ids(tokenizer, spec.invocation)
    reserve = max(len(ids) for ids in labels.token_ids)
    encoded: list[Encoded] = []
    missing: list[str] = []
    for example in examples:
        rendered = render(tokenizer, example.item, spec, example.requirement, max_length, reserve)
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


def batches(encoded: list[Encoded], size: int, rng: random.Random | None = None) -> list[list[Encoded]]:
    """Batches of similar length (little padding); shuffled order when an rng is given."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    if rng is not None:
        order = sorted(order, key=lambda i: (encoded[i].length // 16, rng.random()))
    groups = [[encoded[i] for i in order[start : start + size]] for start in range(0, len(order), size)]
    if rng is not None:
        rng.shuffle(groups)
    return groups


def forward_groups(
    examples: list[Encoded], budget: int, width: Callable[[Encoded], int]
) -> list[list[Encoded]]:
    """`examples` in order, cut into as few forwards as keep rows x longest `width` within `budget` tokens.

    One optimizer step's batches run as one forward when they fit: on a CPU a forward over a few
    hundred tokens costs about what one over twenty does (the weights are read once either way), so
    this is most of aLoRA training's speed. A group never exceeds the tokens of one --batch-size batch
    at --max-length, the memory the options already allow.
    """
    groups: list[list[Encoded]] = []
    widest = 0
    for e in examples:
        w = max(widest, width(e))
        if groups and w * (len(groups[-1]) + 1) <= budget:
            groups[-1].append(e)
            widest = w
        else:
            groups.append([e])
            widest = width(e)
    return groups


@dataclass(frozen=True)
class Objective:
    """What a training step minimises at the label positions.

    `lm`: cross-entropy of the label tokens (and end-of-text) over the whole vocabulary. `label-set`:
    cross-entropy of the label's first token against the other labels' first tokens only, the
    distribution the scorer reads (as PET and LM-BFF train). `lm+label-set`: both. `weights` scales each
    example by its label (inverse label frequency under --balance). `lead` counts the output tokens
    shared by every label before its value (the JSON `{"score": "` of the json-v1 contract): the
    label-set loss reads the position after them, where `score_labels` reads the labels.
    """

    kind: str = "lm"
    first_ids: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    lead: int = 0

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, first: torch.Tensor, batch: list[Encoded]
    ) -> tuple[torch.Tensor, int]:
        """(loss summed so that dividing by the label-token count gives the mean, label-token count).

        `logits` (B, K, V) predict `targets` (B, K; -100 where a row has no label token); `first[i]` is
        the position of row i's first output token (the lead's first, when there is a lead).
        """
        device = logits.device
        n_tokens = int((targets != -100).sum())
        index = torch.tensor([e.label_index for e in batch], device=device)
        weight = (
            torch.tensor(self.weights, device=device)[index]
            if self.weights
            else torch.ones(len(batch), device=device)
        )
        total = torch.zeros((), device=device)
        if self.kind != "label-set":
            per_token = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
            )
            total = total + (per_token.sum(-1) * weight).sum()
        if self.kind != "lm":
            rows = torch.arange(len(batch), device=device)
            restricted = logits[rows, first + self.lead][:, torch.tensor(self.first_ids, device=device)]
            per_row = torch.nn.functional.cross_entropy(restricted, index, reduction="none")
            total = total + (per_row * weight).sum() * n_tokens / len(batch)
        return total, n_tokens

    def validation_loss(self, lm: float, label_set: float) -> float:
        """The validation value of what this objective minimises: the sweep and the best epoch go by it.

        `lm`: mean label-token loss; `label_set`: mean cross-entropy of the label scores. Choosing by a
        loss the run does not train picks the wrong rate and epoch (`--loss label-set` chosen by the
        label-token loss kept its first, near-chance epoch on trec_questions).
        """
        return {"lm": lm, "label-set": label_set}.get(self.kind, lm + label_set)


LM = Objective()


def label_loss(
    model: Any, batch: list[Encoded], pad_id: int, alora: bool, objective: Objective = LM
) -> tuple[torch.Tensor, int]:
    """The objective's summed loss over the label tokens of a left-padded batch, and how many tokens it covers.

    Left padding aligns every label at the end, so logits are computed only for the last K+1 positions.
    """
    device = next(model.parameters()).device
    sequences = [e.prompt + e.label for e in batch]
    ids, mask, positions = left_pad(sequences, pad_id, device)
    k = max(len(e.label) for e in batch)
    targets = torch.full((len(batch), k), -100, dtype=torch.long)
    for row, e in enumerate(batch):
        targets[row, k - len(e.label) :] = torch.tensor(e.label)
    extra = alora_offsets(sequences, [e.invocation_start for e in batch], alora)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        logits_to_keep=k + 1,
        use_cache=False,
        **extra,
    )
    first = torch.tensor([k - len(e.label) for e in batch], device=device)
    return objective(out.logits[:, :-1].float(), targets.to(device), first, batch)

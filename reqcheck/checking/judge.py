"""Validation off: the base model judges a requirement from a question, read by label probabilities.

The judge renders the context with the same `render` function as the adapters (so it reuses the same
cached context KV), followed by a question turn; labels are read like an adapter's, with each label's
lower- and capitalised spellings pooled, since an instruct model answers "Yes" as readily as "yes".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from reqcheck.checking.routing import JUDGE_LABELS, Context
from reqcheck.formats.output import LabelSet
from reqcheck.formats.prompting import (
    CHAT_RENDERER,
    Messages,
    PromptSpec,
    as_messages,
    label_ids,
    question_invocation,
    requirement_text,
)

if TYPE_CHECKING:
    import torch

__all__ = ["JUDGE_LABELS", "judge_labels", "judge_messages", "judge_question", "judge_spec", "pool_variants"]


def judge_question(labels: list[str]) -> str:
    """The question the base model answers after the context (and the requirement turn, if any)."""
    if sorted(label.lower() for label in labels) == ["no", "yes"]:
        return "Does the message above meet the requirement? Answer yes or no."
    return (
        f"Which one of these labels fits the message above: {', '.join(labels)}? Answer with the label only."
    )


def judge_messages(context: Context, requirement: str | None, labels: list[str]) -> Messages:
    """The judge's prompt as chat messages: the context, a `Requirement: ...` turn when there is one, then
    the question. A served judge sends these; the in-process one renders the same turns (`judge_spec`)."""
    messages = as_messages(context)
    if requirement:
        messages.append({"role": "user", "content": requirement_text(requirement)})
    messages.append({"role": "user", "content": judge_question(labels)})
    return messages


def judge_spec(tokenizer: Any, labels: list[str]) -> PromptSpec:
    """The judge's prompt as `render` builds it token by token, so the context's cached ids are reused: the
    turns of `judge_messages` (the chat renderer writes the requirement turn, the invocation asks)."""
    return PromptSpec(
        invocation=question_invocation(tokenizer, judge_question(labels)),
        renderer=CHAT_RENDERER,
        requirement_in_prompt=True,
    )


def judge_labels(tokenizer: Any, labels: list[str]) -> tuple[LabelSet, list[int]]:
    """Spelling variants of each label, and for each variant the index of the label it belongs to."""
    names, ids, owner = [], [], []
    for index, label in enumerate(labels):
        for variant in dict.fromkeys([label, label.lower(), label.capitalize()]):
            names.append(variant)
            ids.append(label_ids(tokenizer, variant))
            owner.append(index)
    return LabelSet(names, ids), owner


def pool_variants(scores: torch.Tensor, owner: list[int], n_labels: int) -> torch.Tensor:
    """Per-label log-likelihoods from per-variant ones (logsumexp over each label's spellings)."""
    import torch  # here, so that the served judge (checking.remote) reads the question without torch

    pooled = torch.full((scores.shape[0], n_labels), float("-inf"))
    for column, index in enumerate(owner):
        pooled[:, index] = torch.logaddexp(pooled[:, index], scores[:, column])
    return pooled

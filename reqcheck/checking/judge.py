"""Validation off: the base model judges a requirement from a question, read by label probabilities.

The judge renders the context with the same `render` function as the adapters (so it reuses the same
cached context KV), followed by a question turn; labels are read like an adapter's, from the first token of
the answer, with the first tokens of each label's lower- and capitalised spellings pooled, since an instruct
model answers "Yes" as readily as "yes". The served judge reads the same tokens (`first_token_owners`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reqcheck.checking.routing import JUDGE_LABELS, Context
from reqcheck.errors import ReqcheckError
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

__all__ = [
    "JUDGE_LABELS",
    "first_token_owners",
    "judge_labels",
    "judge_messages",
    "judge_question",
    "judge_spec",
    "pool_variants",
]


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


def spellings(label: str) -> list[str]:
    """The spellings of a label an instruct model answers with: as written, lower-case, capitalised."""
    return list(dict.fromkeys([label, label.lower(), label.capitalize()]))


def first_token_owners(labels: list[str], first_token: Callable[[str], int]) -> dict[int, int]:
    """The distinct first tokens of the labels' spellings, each with the index of its label; two labels whose
    spellings start with the same token cannot be told apart."""
    owners: dict[int, int] = {}
    for index, label in enumerate(labels):
        for variant in spellings(label):
            other = owners.setdefault(first_token(variant), index)
            if other != index:
                raise ReqcheckError(
                    f"The judge cannot tell labels {labels[other]!r} and {label!r} apart: answers with either "
                    "start with the same token; rename one of them."
                )
    return owners


def judge_labels(tokenizer: Any, labels: list[str]) -> tuple[LabelSet, list[int]]:
    """One spelling per distinct first token (`first_token_owners`), read at that token, and for each the
    index of the label it belongs to."""
    ids = {variant: label_ids(tokenizer, variant) for label in labels for variant in spellings(label)}
    owners = first_token_owners(labels, lambda text: ids[text][0])
    first_spelling: dict[int, str] = {}
    for variant, variant_ids in ids.items():
        first_spelling.setdefault(variant_ids[0], variant)
    names = [first_spelling[token] for token in owners]
    return LabelSet(names, [ids[name] for name in names], first_token=True), list(owners.values())


def pool_variants(scores: torch.Tensor, owner: list[int], n_labels: int) -> torch.Tensor:
    """Per-label log-likelihoods from per-variant ones (logsumexp over each label's spellings)."""
    import torch  # here, so that the served judge (checking.remote) reads the question without torch

    pooled = torch.full((scores.shape[0], n_labels), float("-inf"))
    for column, index in enumerate(owner):
        pooled[:, index] = torch.logaddexp(pooled[:, index], scores[:, column])
    return pooled

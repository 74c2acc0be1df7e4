"""What a served chat completion must hold before a score is read from it, checked where it enters.

Scores are read from the first choice's logprobs, so every token there must be a string, every logprob a
finite number no greater than 0 (a probability in [0, 1]), and every `top_logprobs` a non-empty list: llama.cpp
writes a non-finite float as `null`, and a broken proxy may send anything. One exception: an alternative after
the most likely one whose probability underflowed a float is -inf, which llama.cpp writes as `null`; that is
probability 0, and it is read as -inf (a sharply trained adapter gives its unlikely tokens such values).
Whatever breaks that is one sentence for the check, never a made-up label and never a raw exception from the
readers downstream; the probabilities read in the end are checked the same way.

A one-step answer (`first_token_probs`) is llama-server's `post_sampling_probs` shape: one token whose
`top_probs` list `{id, token, prob}` after the request's logit bias raised every label's first token to the
top. The bias adds the same amount to each of them, so their probabilities keep the ratios the model gives
them; `label_probabilities` renormalises them among the labels, which is granite-common's `likelihood` rule
with every label in view and the in-process rule (`models.scoring`).
"""

from __future__ import annotations

import math
from typing import Any

from reqcheck.errors import ReqcheckError

# a logprob this far above 0 is a certain token's float rounding; above it, a probability over 1
ROUNDING = 1e-4


class NoLogprobs(Exception):
    """The answer carries no logprobs at all: the server was not asked right, or cannot give them."""


def first_token_logprobs(answer: Any, shown: str, what: str) -> list[dict[str, Any]]:
    """The first choice's logprobs entries, each checked; one sentence naming the fault otherwise.

    Raises `NoLogprobs` when the answer has none (no choices, logprobs or top_logprobs).
    """
    try:
        content = answer["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        raise NoLogprobs from None
    if not isinstance(content, list) or not content:
        raise NoLogprobs
    for position, entry in enumerate(content):
        if isinstance(entry, dict) and "top_logprobs" not in entry:
            raise NoLogprobs
        problem = _entry_problem(entry) or _alternatives_problem(entry["top_logprobs"])
        if problem:
            raise ReqcheckError(
                f"The server at {shown} answered {what} with {problem} at token {position + 1}, so no "
                "probability can be read from it; fix the server or the proxy in front of it, then rerun."
            )
    return content


def _entry_problem(entry: Any, underflow: bool = False) -> str:
    """What is wrong with one token's logprob entry (`{"token": ..., "logprob": ...}`); empty when nothing.

    With `underflow`, a null or -inf logprob is probability 0, and a null is set to -inf for the readers.
    """
    if not isinstance(entry, dict):
        return f"a logprobs entry that is not an object ({_shown(entry)})"
    token, logprob = entry.get("token"), entry.get("logprob", ...)
    if not isinstance(token, str):
        return f"a token that is not a string ({_shown(token)})"
    if logprob is ...:
        return "a logprobs entry without a logprob"
    if underflow and (logprob is None or logprob == -math.inf):
        entry["logprob"] = -math.inf
        return ""
    if logprob is None:
        return "a null logprob (how llama.cpp writes a non-finite number)"
    if isinstance(logprob, bool) or not isinstance(logprob, (int, float)):
        return f"a logprob that is not a number ({_shown(logprob)})"
    if not math.isfinite(logprob):
        return f"a logprob of {logprob}"
    if logprob > ROUNDING:
        return f"a logprob of {logprob:g} (a probability above 1)"
    return ""


def _alternatives_problem(alternatives: Any) -> str:
    if not isinstance(alternatives, list):
        return f"top_logprobs that are not a list ({_shown(alternatives)})"
    if not alternatives:
        return "an empty top_logprobs list (nothing to weigh the label against)"
    first, *rest = alternatives
    problems = [_entry_problem(first)] + [_entry_problem(entry, underflow=True) for entry in rest]
    return next(filter(None, problems), "")


def _shown(value: Any) -> str:
    """A server's value in a sentence: its repr (control characters escaped), cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def checked_probabilities(scores: dict[str, float], shown: str, what: str) -> dict[str, float]:
    """`scores` when every one is a finite probability (rounding past 0 or 1 clipped); one sentence otherwise."""
    bad = {label: p for label, p in scores.items() if not -ROUNDING <= p <= 1 + ROUNDING}  # NaN fails too
    if bad:
        label, p = next(iter(bad.items()))
        raise ReqcheckError(
            f"The server at {shown} answered {what} with logprobs that give label {label!r} the probability "
            f"{p}, which no probability is; fix the server or the proxy in front of it, then rerun."
        )
    return {label: min(max(p, 0.0), 1.0) for label, p in scores.items()}


def first_token_probs(answer: Any, shown: str, what: str) -> dict[int, float]:
    """A one-step answer's probabilities by token id; one sentence naming the fault otherwise.

    Raises `NoLogprobs` when the answer has no token probabilities at all.
    """
    try:
        entry = answer["choices"][0]["logprobs"]["content"][0]
    except (KeyError, IndexError, TypeError):
        raise NoLogprobs from None
    if not isinstance(entry, dict) or "top_probs" not in entry:
        if isinstance(entry, dict) and "top_logprobs" in entry:
            raise ReqcheckError(
                f"The server at {shown} answered {what} with probabilities before sampling, though it was asked "
                "for them after (post_sampling_probs), so the labels' probabilities cannot be read; serve with "
                "llama.cpp's server (reqcheck serve) or fix the proxy in front of it, then rerun."
            )
        raise NoLogprobs
    alternatives = entry["top_probs"]
    problem = (
        "" if isinstance(alternatives, list) else f"top_probs that are not a list ({_shown(alternatives)})"
    )
    probs: dict[int, float] = {}
    for alternative in alternatives if not problem else []:
        problem = _prob_problem(alternative, probs)
        if problem:
            break
        probs[alternative["id"]] = float(alternative["prob"])
    if problem:
        raise ReqcheckError(
            f"The server at {shown} answered {what} with {problem}, so no probability can be read from it; fix "
            "the server or the proxy in front of it, then rerun."
        )
    return probs


def _prob_problem(entry: Any, seen: dict[int, float]) -> str:
    """What is wrong with one `{id, token, prob}` alternative; empty when nothing."""
    if not isinstance(entry, dict):
        return f"a probability entry that is not an object ({_shown(entry)})"
    token_id, prob = entry.get("id"), entry.get("prob")
    if isinstance(token_id, bool) or not isinstance(token_id, int):
        return f"a token id that is not a number ({_shown(token_id)})"
    if token_id in seen:
        return f"token id {token_id} listed twice"
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not math.isfinite(prob):
        return f"a probability that is not a finite number ({_shown(prob)})"
    if not -ROUNDING <= prob <= 1 + ROUNDING:
        return f"a probability of {prob:g}"
    return ""


def label_probabilities(
    probs: dict[int, float], owners: dict[int, str], labels: list[str], shown: str, what: str
) -> dict[str, float]:
    """Each label's share of the probability on the first tokens it owns (`owners`: token id -> label)."""
    mass = dict.fromkeys(labels, 0.0)
    for token_id, prob in probs.items():
        if token_id in owners:
            mass[owners[token_id]] += prob
    total = sum(mass.values())
    if not total > 0:
        raise ReqcheckError(
            f"The server at {shown} answered {what} without any probability on the labels' first tokens, "
            "though the request raised them to the top (logit_bias); serve with llama.cpp's server "
            "(reqcheck serve) or fix the proxy in front of it, then rerun."
        )
    return checked_probabilities({label: m / total for label, m in mass.items()}, shown, what)

"""What a served chat completion must hold before a score is read from it, checked where it enters.

Scores are read from the first choice's logprobs, so every token there must be a string, every logprob a
finite number no greater than 0 (a probability in [0, 1]), and every `top_logprobs` a non-empty list: llama.cpp
writes a non-finite float as `null`, and a broken proxy may send anything. One exception: an alternative after
the most likely one whose probability underflowed a float is -inf, which llama.cpp writes as `null`; that is
probability 0, and it is read as -inf (a sharply trained adapter gives its unlikely tokens such values).
Whatever breaks that is one sentence for the check, never a made-up label and never a raw exception from the
readers downstream; the probabilities read in the end are checked the same way.
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

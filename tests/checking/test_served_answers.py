"""What a served answer may hold: every fault in a server's logprobs is one sentence for the check, never a
label and never a raw exception, on the adapter's path and on the judge's.

The answers are llama-server's shapes (`fakes.adapter_answer`, `fakes.judge_answer`) with one part broken,
sent by a fake llama-server.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.remote import RemoteBackend
from reqcheck.errors import ReqcheckError
from tests.checking.fakes import (
    REQUIREMENT,
    adapter_answer,
    fake_adapter,
    fake_llama,
    judge_answer,
    lora_entry,
)

Edit = Callable[[dict[str, Any]], None]  # breaks the deciding token's entry of a chat completion
DECIDING = {"adapter": 4, "judge": 0}  # the value token of `{"score": "yes"}`, the judge's one token


def _top(value: Any) -> Edit:
    def edit(entry: dict[str, Any]) -> None:
        entry["top_logprobs"][0]["logprob"] = value

    return edit


def _set(key: str, value: Any) -> Edit:
    return lambda entry: entry.__setitem__(key, value)


FAULTS: dict[str, tuple[Edit, str]] = {
    "nan": (_top(math.nan), r"a logprob of nan at token \d"),
    "infinity": (_top(math.inf), r"a logprob of inf at token"),
    "minus-infinity": (_top(-math.inf), r"a logprob of -inf at token"),
    "null": (_top(None), r"a null logprob \(how llama\.cpp writes a non-finite number\)"),
    "positive": (_top(5.0), r"a logprob of 5 \(a probability above 1\)"),
    "string": (_top("-0.1"), r"a logprob that is not a number \('-0\.1'\)"),
    "bool": (_top(True), r"a logprob that is not a number \(True\)"),
    "own-null": (_set("logprob", None), r"a null logprob"),
    "no-logprob-key": (lambda e: e["top_logprobs"][0].pop("logprob"), r"a logprobs entry without a logprob"),
    "token-number": (lambda e: e["top_logprobs"][0].update(token=7), r"a token that is not a string \(7\)"),
    "token-null": (_set("token", None), r"a token that is not a string \(None\)"),
    "empty-top": (
        _set("top_logprobs", []),
        r"an empty top_logprobs list \(nothing to weigh the label against\)",
    ),
    "top-string": (_set("top_logprobs", "yes"), r"top_logprobs that are not a list \('yes'\)"),
    "top-entry-number": (_set("top_logprobs", [3]), r"a logprobs entry that is not an object \(3\)"),
    "no-top-key": (lambda e: e.pop("top_logprobs"), r"returned no logprobs for (adapter polite|the judge)"),
}
ANSWER_FAULTS: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "no-choices": (lambda a: {**a, "choices": []}, r"returned no logprobs"),
    "choices-null": (lambda a: {**a, "choices": None}, r"returned no logprobs"),
    "no-logprobs": (lambda a: a["choices"][0].pop("logprobs") and a, r"returned no logprobs"),
    "content-empty": (lambda a: a["choices"][0]["logprobs"].update(content=[]) or a, r"returned no logprobs"),
    "entry-null": (
        lambda a: a["choices"][0]["logprobs"].update(content=[None]) or a,
        r"a logprobs entry that is not an object \(None\)",
    ),
    "a-list": (lambda a: [a], r"returned no logprobs"),
}


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_adapter(tmp_path_factory.mktemp("adapter"))


def _checked(adapter: Path, mode: str, answer: Any) -> list[dict[str, float]]:
    """What `mode` makes of a server that gives `answer` to every chat completion."""
    with fake_llama([lora_entry(adapter)], lambda body: (200, answer)) as (url, _):
        backend = RemoteBackend(url, retries=0)
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter)))
        if mode == "adapter":
            return backend.classify("polite", ["Thanks for waiting."])
        return backend.judge(["Thanks for waiting."], [REQUIREMENT])


def _one_sentence(adapter: Path, mode: str, answer: Any, pattern: str) -> None:
    with pytest.raises(ReqcheckError, match=pattern) as caught:
        _checked(adapter, mode, answer)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("The server at http://127.0.0.1:")
    assert message.endswith(("then rerun.", "(vLLM: --max-logprobs 20)."))


def _good(mode: str) -> dict[str, Any]:
    return adapter_answer() if mode == "adapter" else judge_answer()


@pytest.mark.parametrize("mode", ["adapter", "judge"])
def test_a_well_formed_answer_gives_probabilities(adapter: Path, mode: str) -> None:
    [scores] = _checked(adapter, mode, _good(mode))
    assert set(scores) == {"yes", "no"} and scores["yes"] > 0.5
    assert all(0.0 <= p <= 1.0 for p in scores.values()) and math.isclose(sum(scores.values()), 1.0)


@pytest.mark.parametrize("mode", ["adapter", "judge"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_broken_logprob_is_one_sentence(adapter: Path, mode: str, fault: str) -> None:
    edit, pattern = FAULTS[fault]
    answer = _good(mode)
    edit(answer["choices"][0]["logprobs"]["content"][DECIDING[mode]])
    _one_sentence(adapter, mode, answer, pattern)


@pytest.mark.parametrize("mode", ["adapter", "judge"])
@pytest.mark.parametrize("value", [None, -math.inf])
def test_an_unlikely_alternative_that_underflowed_is_probability_zero(
    adapter: Path, mode: str, value: Any
) -> None:
    """llama.cpp writes the -inf logprob of an alternative whose probability underflowed as null."""
    answer = _good(mode)
    for entry in answer["choices"][0]["logprobs"]["content"]:
        entry["top_logprobs"].append({"token": "zzz", "logprob": value, "bytes": [122, 122, 122]})
    [scores] = _checked(adapter, mode, answer)
    [expected] = _checked(adapter, mode, _good(mode))
    assert scores == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["adapter", "judge"])
@pytest.mark.parametrize("fault", list(ANSWER_FAULTS))
def test_an_answer_of_another_shape_is_one_sentence(adapter: Path, mode: str, fault: str) -> None:
    edit, pattern = ANSWER_FAULTS[fault]
    _one_sentence(adapter, mode, edit(copy.deepcopy(_good(mode))), pattern)


@pytest.mark.parametrize(
    ("message", "pattern"),
    [
        (None, r"answered adapter polite with something that is not a chat completion \(choices\.0\.message"),
        ({"role": "assistant", "content": 5}, r"not a chat completion \(choices\.0\.message\.\S*content"),
        ({"role": "assistant", "content": "yes"}, r"output for adapter polite, 'yes', is not the JSON"),
    ],
    ids=["no-message", "content-number", "content-not-json"],
)
def test_an_adapter_answer_without_its_json_is_one_sentence(
    adapter: Path, message: Any, pattern: str
) -> None:
    answer = adapter_answer()
    answer["choices"][0]["message"] = message
    with pytest.raises(ReqcheckError, match=pattern) as caught:
        _checked(adapter, "adapter", answer)
    assert "\n" not in str(caught.value)

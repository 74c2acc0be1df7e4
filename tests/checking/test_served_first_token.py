"""The one-step served check: on a server that continues a prefilled answer, a check is one decode step whose
label probabilities equal granite-common's `likelihood` rule with every label in view.

A fake llama-server (`fakes.fake_llama(..., prefill=True)`) records each request and answers in llama-server's
`post_sampling_probs` shape; the real server's side of the contract (the bias keeps the labels' ratios) is
tested against the prebuilt engine in tests/checking/test_remote.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.engines import LABEL_BIAS
from reqcheck.checking.remote import RemoteBackend
from reqcheck.checking.replica import _readers
from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import Manifest
from tests.checking.fakes import (
    REQUIREMENT,
    adapter_answer,
    fake_adapter,
    fake_llama,
    first_token_answer,
    lora_entry,
)

LEAD = [39428, 5072, 1799, 476]  # SmolLM2's `{"label": "`, as a real trec adapter's manifest lists it
FIRST = {"abbreviation": 369, "description": 10079, "entity": 20065, "human": 10621, "location": 10786}
TEXT = {
    "abbreviation": "ab",
    "description": "description",
    "entity": "entity",
    "human": "human",
    "location": "location",
}
TAIL = {"abbreviation": [41125, 2809]}  # the labels' later value tokens (one-token labels have none)
END = [23597, 2]  # `"}` and the end-of-text token


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ids = {label: [*LEAD, first, *TAIL.get(label, []), *END] for label, first in FIRST.items()}
    return fake_adapter(tmp_path_factory.mktemp("adapter"), "trec", label_token_ids=ids)


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_adapter(tmp_path_factory.mktemp("adapter"))


def _served(adapter: Path, answer: Any) -> tuple[Any, list[dict[str, Any]]]:
    """What a classify and a judge make of `answer` on a fake server, and the chat completion bodies sent."""
    bodies: list[dict[str, Any]] = []

    def complete(body: dict[str, Any]) -> tuple[int, Any]:
        bodies.append(body)
        return 200, answer

    with fake_llama([lora_entry(adapter)], complete, prefill=True) as (url, _):
        backend = RemoteBackend(url, retries=0)
        name = backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter))).name
        return backend.classify(name, ["When was the telephone invented?"]), bodies


def test_a_check_is_one_decode_step_that_reads_every_label(classifier: Path) -> None:
    probs = {FIRST["human"]: 0.5, FIRST["abbreviation"]: 0.2, FIRST["location"]: 0.1, 999: 0.2}
    (scores,), (body,) = _served(classifier, first_token_answer(probs))
    assert scores == pytest.approx(
        {"abbreviation": 0.25, "description": 0.0, "entity": 0.0, "human": 0.625, "location": 0.125}
    )
    # the answer is prefilled up to the value and one token is generated, every label's first token raised alike
    assert body["messages"][-1] == {"role": "assistant", "content": '{"label": "'}
    assert body["max_tokens"] == body["max_completion_tokens"] == 1
    assert body["logit_bias"] == {str(token): LABEL_BIAS for token in FIRST.values()}
    assert body["post_sampling_probs"] is True and body["top_logprobs"] == len(FIRST)
    assert body["temperature"] == 1.0 and body["top_k"] == 0 and body["top_p"] == 1.0 and body["min_p"] == 0.0
    assert "response_format" not in body and "extra_body" not in body


@pytest.mark.parametrize("route", ["missing", "closes the message"])
def test_a_server_that_cannot_continue_an_answer_generates_the_whole_json(check: Path, route: str) -> None:
    """An older llama-server lacks `/apply-template`; one started with --no-prefill-assistant closes the turn."""
    state = {} if route == "missing" else {"_template": lambda body: (200, {"prompt": "...<|im_end|>\n"})}
    with fake_llama(
        [lora_entry(check)], lambda body: (200, adapter_answer("yes")), prefill=route != "missing"
    ) as (
        url,
        fake,
    ):
        for key, value in state.items():
            setattr(fake, key, value)
        backend = RemoteBackend(url, retries=0)
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(check)))
        (scores,) = backend.classify("polite", ["Thanks for waiting."])
    assert scores["yes"] == pytest.approx(math.exp(-0.105) / (math.exp(-0.105) + math.exp(-2.303)))


def _granite(adapter: Path, probs: dict[str, float]) -> dict[str, float]:
    """granite-common's processors (as `RemoteBackend` builds them) on the whole JSON answer a greedy server
    gives, whose value token carries `probs` as its top logprobs."""
    from granite_common import ChatCompletion, ChatCompletionResponse

    manifest = Manifest.read(adapter)
    chosen = max(probs, key=probs.get)
    pieces = ['{"', "label", '":', ' "', TEXT[chosen], chosen[len(TEXT[chosen]) :], '"}']
    pieces = [piece for piece in pieces if piece]
    top = [
        {"token": TEXT[label], "logprob": math.log(p), "bytes": None} for label, p in probs.items() if p > 0
    ]
    content = [
        {"token": piece, "logprob": math.log(probs[chosen]) if i == 4 else -0.01, "bytes": None,
         "top_logprobs": top if i == 4 else [{"token": piece, "logprob": -0.01, "bytes": None}]}
        for i, piece in enumerate(pieces)
    ]  # fmt: skip
    response = ChatCompletionResponse.model_validate(
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces)},
                    "logprobs": {"content": content},
                    "finish_reason": "stop",
                }
            ]
        }  # fmt: skip
    )
    request = ChatCompletion.model_validate({"messages": [{"role": "user", "content": "q"}]})
    readers = _readers(manifest, {})
    return {
        label: json.loads(p.transform(response, request).choices[0].message.content)["label"]
        for label, p in readers.processors.items()
    }


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(
        st.one_of(st.floats(1e-30, 1.0), st.sampled_from([1e-12, 0.5, 1.0])),
        min_size=len(FIRST),
        max_size=len(FIRST),
    )
)
def test_served_scores_equal_granite_commons_processor(classifier: Path, weights: list[float]) -> None:
    """The one-step read equals granite-common's `likelihood` rule on the same probabilities, to 1e-6."""
    total = sum(weights)
    probs = {label: w / total for label, w in zip(FIRST, weights, strict=True)}
    (scores,), _ = _served(classifier, first_token_answer({FIRST[label]: p for label, p in probs.items()}))
    expected = _granite(classifier, probs)
    assert scores == pytest.approx(expected, abs=1e-6)


ONE_STEP_FAULTS: dict[str, tuple[Any, str]] = {
    "before-sampling": (
        {
            "id": 7,
            "token": "yes",
            "logprob": -0.1,
            "top_logprobs": [{"id": 7, "token": "yes", "logprob": -0.1}],
        },
        r"probabilities before sampling, though it was asked for them after \(post_sampling_probs\)",
    ),
    "no-top": ({"id": 7, "token": "yes", "prob": 1.0}, r"returned no token probabilities for adapter polite"),
    "top-string": ({"id": 7, "prob": 1.0, "top_probs": "yes"}, r"top_probs that are not a list \('yes'\)"),
    "entry-number": (
        {"id": 7, "prob": 1.0, "top_probs": [3]},
        r"a probability entry that is not an object \(3\)",
    ),
    "id-string": ({"top_probs": [{"id": "7", "prob": 0.5}]}, r"a token id that is not a number \('7'\)"),
    "id-bool": ({"top_probs": [{"id": True, "prob": 0.5}]}, r"a token id that is not a number \(True\)"),
    "id-twice": ({"top_probs": [{"id": 7, "prob": 0.5}, {"id": 7, "prob": 0.4}]}, r"token id 7 listed twice"),
    "prob-null": (
        {"top_probs": [{"id": 7, "prob": None}]},
        r"a probability that is not a finite number \(None\)",
    ),
    "prob-string": (
        {"top_probs": [{"id": 7, "prob": "1"}]},
        r"a probability that is not a finite number \('1'\)",
    ),
    "prob-above-one": ({"top_probs": [{"id": 7, "prob": 1.5}]}, r"a probability of 1\.5"),
    "prob-negative": ({"top_probs": [{"id": 7, "prob": -0.5}]}, r"a probability of -0\.5"),
    "no-label": (
        {"top_probs": [{"id": 999, "prob": 1.0}]},
        r"without any probability on the labels' first tokens",
    ),
    "empty": ({"top_probs": []}, r"without any probability on the labels' first tokens"),
}


@pytest.mark.parametrize("fault", list(ONE_STEP_FAULTS))
def test_every_fault_in_a_one_step_answer_is_one_sentence(check: Path, fault: str) -> None:
    entry, pattern = ONE_STEP_FAULTS[fault]
    answer = first_token_answer({7: 0.9, 9: 0.1})
    answer["choices"][0]["logprobs"]["content"] = [entry]
    with pytest.raises(ReqcheckError, match=pattern) as caught:
        _served(check, answer)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("The server at http://127.0.0.1:")
    assert message.endswith("then rerun.")


def _judged(
    labels: list[str] | None, tokens: dict[str, list[int]], probs: dict[int, float], check: Path
) -> Any:
    bodies: list[dict[str, Any]] = []

    def complete(body: dict[str, Any]) -> tuple[int, Any]:
        bodies.append(body)
        return 200, first_token_answer(probs)

    with fake_llama([lora_entry(check)], complete, prefill=True) as (url, fake):
        fake.tokens = tokens
        backend = RemoteBackend(url, retries=0)
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(check)))
        return backend.judge(["Thanks for waiting."], [REQUIREMENT], labels), bodies


def test_the_served_judge_pools_each_labels_spellings_at_their_first_token(check: Path) -> None:
    tokens = {"yes": [7], "Yes": [17], "no": [9], "No": [19, 5]}
    (scores,), (body,) = _judged(None, tokens, {7: 0.4, 17: 0.2, 9: 0.1, 19: 0.1, 999: 0.2}, check)
    assert scores == pytest.approx({"yes": 0.75, "no": 0.25})
    assert set(body["logit_bias"]) == {"7", "17", "9", "19"} and body["max_tokens"] == 1
    assert body["lora"] == [{"id": 0, "scale": 0.0}]  # the base model alone
    assert body["messages"][-1]["role"] == "user"  # the judge's answer is not prefilled


def test_judge_labels_that_start_alike_are_one_sentence(check: Path) -> None:
    tokens = {"positive": [5, 6], "Positive": [15], "positively": [5, 8], "Positively": [16]}
    with pytest.raises(ReqcheckError, match=r"cannot tell labels 'positive' and 'positively' apart"):
        _judged(["positive", "positively"], tokens, {5: 1.0}, check)

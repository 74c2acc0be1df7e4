"""Checks spread over replicas of one server: each URL with its own limit, every URL serving the same adapter
and base model, and a replica that dies mid-run losing no case.

The replicas are `fakes.fake_llama`s; `dead` makes one stop answering as a killed server does.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.endpoint import Unreachable
from reqcheck.checking.remote import RemoteBackend
from reqcheck.errors import ReqcheckError
from reqcheck.formats.gate_report import AdapterEntry, ServedRecord
from reqcheck.gating.report_text import terminal_lines
from tests.checking.fakes import (
    FakeLlama,
    adapter_answer,
    fake_adapter,
    fake_llama,
    is_judge,
    judge_answer,
    lora_entry,
)

REPLIES = [f"Reply number {i}, thanks." for i in range(24)]


def _by_reply(body: dict[str, Any]) -> tuple[int, Any]:
    """An adapter answer whose score says which reply it checked: `yes` for even replies, `no` for odd."""
    if is_judge(body):
        return 200, judge_answer()
    text = str(body["messages"])
    number = next(i for i in reversed(range(len(REPLIES))) if f"Reply number {i}," in text)
    if number % 2 == 0:
        return 200, adapter_answer("yes", {"yes": -0.105, "no": -2.303})
    return 200, adapter_answer("no", {"yes": -2.303, "no": -0.105})


def _replicas(stack: ExitStack, adapter: Path, count: int, complete: Any = _by_reply) -> list[FakeLlama]:
    fakes = [stack.enter_context(fake_llama([lora_entry(adapter)], complete)) for _ in range(count)]
    for url, fake in fakes:
        fake.props = {**fake.props, "total_slots": 1}
        fake.url = url  # type: ignore[attr-defined]
    return [fake for _, fake in fakes]


def _backend(fakes: list[FakeLlama], adapter: Path, **options: Any) -> RemoteBackend:
    backend = RemoteBackend([f.url for f in fakes], retries=0, **options)  # type: ignore[attr-defined]
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter)))
    return backend


def _expected(scores: list[dict[str, float]]) -> list[str]:
    return [max(score, key=score.__getitem__) for score in scores]


def test_cases_are_spread_over_every_replica_in_their_order(tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path)
    with ExitStack() as stack:
        fakes = _replicas(stack, adapter, 2)
        scores = _backend(fakes, adapter, concurrency=2).classify("polite", REPLIES)
    assert _expected(scores) == ["yes" if i % 2 == 0 else "no" for i in range(len(REPLIES))]
    assert all(fake.completions > 0 for fake in fakes)
    assert sum(fake.completions for fake in fakes) == len(REPLIES)


def test_each_replica_has_its_own_limit_of_requests_in_flight(tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path)
    lock, in_flight, most = threading.Lock(), {}, {}

    def complete(body: dict[str, Any]) -> tuple[int, Any]:
        port = threading.current_thread().name  # the fake's handler thread: per connection, not per server
        with lock:
            in_flight[port] = in_flight.get(port, 0) + 1
            most["all"] = max(most.get("all", 0), sum(in_flight.values()))
        time.sleep(0.1)
        with lock:
            in_flight[port] -= 1
        return _by_reply(body)

    with ExitStack() as stack:
        fakes = _replicas(stack, adapter, 2, complete)
        _backend(fakes, adapter, concurrency=1).classify("polite", REPLIES[:8])
    # one request at a time to each of two servers: two at once, never more
    assert most["all"] == 2


def test_a_replica_that_dies_mid_run_loses_no_case_and_is_named(tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path)
    with ExitStack() as stack:
        fakes = _replicas(stack, adapter, 2)
        dying = fakes[0]

        def complete(body: dict[str, Any]) -> tuple[int, Any]:
            if dying.completions >= 3:
                dying.dead = True
            return _by_reply(body)

        dying.complete = complete
        backend = _backend(fakes, adapter, concurrency=2)
        scores = backend.classify("polite", REPLIES)
        again = backend.judge(REPLIES[:2], [None, None])
    assert _expected(scores) == ["yes" if i % 2 == 0 else "no" for i in range(len(REPLIES))]
    assert list(backend.failed) == [dying.url]  # type: ignore[attr-defined]
    assert "dropped the connection" in backend.failed[dying.url]  # type: ignore[attr-defined]
    # later calls go to the live replica only
    assert len(again) == 2 and fakes[1].completions >= len(REPLIES) - 3 + 2


def test_when_every_replica_dies_the_run_stops_in_one_sentence(tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path)
    with ExitStack() as stack:
        fakes = _replicas(stack, adapter, 2)
        backend = _backend(fakes, adapter)
        for fake in fakes:
            fake.dead = True
        with pytest.raises(Unreachable) as raised:
            backend.classify("polite", REPLIES[:4])
    message = str(raised.value)
    assert message.startswith("Every one of the 2 servers has failed")
    assert all(fake.url in message for fake in fakes)  # type: ignore[attr-defined]
    assert message.count(".") >= 1 and "\n" not in message


def test_one_server_that_dies_keeps_its_own_sentence(tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path)
    with ExitStack() as stack:
        fakes = _replicas(stack, adapter, 1)
        backend = _backend(fakes, adapter)
        fakes[0].dead = True
        with pytest.raises(
            Unreachable, match=r"^The server at \S+ failed POST /\S+ 1 times \(the server dropped"
        ):
            backend.classify("polite", REPLIES[:4])


def test_a_replica_serving_another_adapter_build_is_named(tmp_path: Path) -> None:
    adapter = fake_adapter(tmp_path / "a")
    other = fake_adapter(tmp_path / "b", requirement="The reply is short.")
    with (
        fake_llama([lora_entry(adapter)], _by_reply) as (good, _),
        fake_llama([lora_entry(other)], _by_reply) as (bad, _),
    ):
        backend = RemoteBackend([good, bad], retries=0)
        with pytest.raises(ReqcheckError, match=rf"^The server at {bad} does not serve adapter polite"):
            backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter)))


def test_a_replica_with_another_base_model_is_named(tmp_path: Path) -> None:
    with fake_llama([], _by_reply) as (good, _), fake_llama([], _by_reply) as (bad, fake):
        fake.tokens = {"Is this reply polite? Yes, no: 42 \u00e9t\u00e9 \U0001f600": [5, 6, 7]}
        with pytest.raises(
            ReqcheckError, match=rf"^The server at {bad} runs llama.cpp .* not the base model"
        ):
            RemoteBackend([good, bad], retries=0)


def test_the_same_server_named_twice_is_refused(tmp_path: Path) -> None:
    with (
        fake_llama([], _by_reply) as (url, _),
        pytest.raises(ReqcheckError, match="is named twice; name each replica once"),
    ):
        RemoteBackend([url, url + "/v1"], retries=0)


def test_the_gate_names_every_replica_and_the_one_that_failed() -> None:
    served = ServedRecord(
        "http://a:1",
        "llama.cpp",
        replicas=["http://a:1", "http://b:2"],
        failed={"http://a:1": "The server at http://a:1 failed POST /v1/chat/completions 4 times."},
    )
    lines = terminal_lines(AdapterEntry(name="polite", adapter_type="alora", served=served))
    assert any("at 2 replicas (http://a:1, http://b:2)" in line for line in lines)
    warnings = [line.strip() for line in lines if "stopped answering during the run" in line]
    assert warnings == [
        "warning: http://a:1 stopped answering during the run, so its unfinished cases went to the other "
        "replicas: The server at http://a:1 failed POST /v1/chat/completions 4 times."
    ]

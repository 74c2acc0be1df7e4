"""The adapter's identity is re-checked whenever the server may have changed under a run: a server restarted
with other `--lora` files, or another replica, must not give another adapter's scores as ours.

llama-server selects adapters by id and its answers do not say which one ran, so `RemoteBackend` re-reads
`/lora-adapters` after opening a new connection (a restart drops every connection) or when an answer names
another build or model, and refuses an id that no longer serves the adapter's hash.
"""

from __future__ import annotations

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
    is_judge,
    judge_answer,
    lora_entry,
)

ITEMS = ["Thanks for waiting.", "Figure it out yourself."]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return {
        "polite": fake_adapter(folder),
        "other": fake_adapter(folder, "other", "The reply names a refund."),
    }


class Server:
    """Answers every chat completion well, naming `build` as its system fingerprint."""

    build = "b7000-abc1234"

    def __call__(self, body: dict[str, Any]) -> tuple[int, Any]:
        answer = judge_answer() if is_judge(body) else adapter_answer()
        return 200, {**answer, "system_fingerprint": self.build}


def _backend(url: str, adapter: Path) -> RemoteBackend:
    backend = RemoteBackend(url, concurrency=1, retries=0)
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter)))
    return backend


def test_a_restart_that_loads_another_adapter_at_the_id_is_refused(adapters: dict[str, Path]) -> None:
    """Every request opens a connection here (HTTP/1.0), as every request after a restart must."""
    with fake_llama([lora_entry(adapters["polite"])], Server()) as (url, server):
        backend = _backend(url, adapters["polite"])
        assert len(backend.classify("polite", ITEMS)) == 2
        server.adapters = [lora_entry(adapters["other"], 0), lora_entry(adapters["polite"], 1)]
        with pytest.raises(ReqcheckError, match=r"no longer serves adapter polite at id 0 \(it serves "
                           r"reqcheck:other:sha256:[0-9a-f]{64} there now: it restarted, or another replica "
                           r"answered\); load the same --lora files in the same order") as caught:  # fmt: skip
            backend.classify("polite", ITEMS)
    assert "\n" not in str(caught.value)


def test_an_answer_from_another_build_rereads_the_adapters(adapters: dict[str, Path]) -> None:
    """One kept-alive connection: nothing reconnects, but the answers name another build."""
    script = Server()
    with fake_llama([lora_entry(adapters["polite"])], script, keep_alive=True) as (url, server):
        backend = _backend(url, adapters["polite"])
        backend.classify("polite", ITEMS)
        server.adapters = [lora_entry(adapters["other"], 0)]
        script.build = "b7001-def5678"
        with pytest.raises(ReqcheckError, match=r"no longer serves adapter polite at id 0"):
            backend.classify("polite", ITEMS)


def test_a_restart_that_keeps_the_adapter_at_its_id_goes_on(adapters: dict[str, Path]) -> None:
    with fake_llama([lora_entry(adapters["polite"])], Server()) as (url, server):
        backend = _backend(url, adapters["polite"])
        server.adapters = [lora_entry(adapters["polite"], 0), lora_entry(adapters["other"], 1)]
        assert [max(p, key=p.get) for p in backend.classify("polite", ITEMS)] == ["yes", "yes"]
        assert server.count("/lora-adapters") > 1  # re-read: every request here came on a new connection


def test_the_judge_is_refused_when_the_server_lists_an_adapter_it_did_not_zero(
    adapters: dict[str, Path],
) -> None:
    with fake_llama([lora_entry(adapters["polite"])], Server()) as (url, server):
        backend = _backend(url, adapters["polite"])
        server.adapters = [lora_entry(adapters["polite"], 0), lora_entry(adapters["other"], 1)]
        with pytest.raises(ReqcheckError, match=r"now lists more adapters than when the run began, so the "
                           r"base model's request may have run one of them"):  # fmt: skip
            backend.judge(ITEMS[:1], [REQUIREMENT])


def test_a_steady_server_is_not_asked_again(adapters: dict[str, Path]) -> None:
    """Kept-alive and the same build: one re-read for the connection the first check opened, no more."""
    with fake_llama([lora_entry(adapters["polite"])], Server(), keep_alive=True) as (url, server):
        backend = _backend(url, adapters["polite"])
        for _ in range(4):
            backend.classify("polite", ITEMS)
            backend.judge(ITEMS, [REQUIREMENT] * 2)
        assert server.completions == 16 and server.count("/lora-adapters") <= 2

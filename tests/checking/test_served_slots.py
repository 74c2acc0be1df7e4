"""aLoRA checks on llama-server: one at a time where parallel slots would share a batch (llama.cpp keeps the
aLoRA's on/off state per batch, not per slot), concurrent on a one-slot server, which queues them itself,
and the gate says once how to check faster.

The servers are `fakes.fake_llama`s that report their slots in `/props` as llama-server does.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.remote import RemoteBackend
from reqcheck.formats.gate_report import AdapterEntry, ServedRecord
from reqcheck.gating.report_text import terminal_lines
from tests.checking.fakes import adapter_answer, fake_adapter, fake_llama, lora_entry


def _most_in_flight(adapter: Path, slots: Any, checks: int = 6) -> int:
    """The most chat completions a 4-request backend had in flight at once on a server of `slots`."""
    lock, in_flight, most = threading.Lock(), [0], [0]

    def complete(body: dict[str, Any]) -> tuple[int, Any]:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.15)
        with lock:
            in_flight[0] -= 1
        return 200, adapter_answer()

    with fake_llama([lora_entry(adapter)], complete) as (url, fake):
        fake.props = {**fake.props, "total_slots": slots}
        backend = RemoteBackend(url, concurrency=4, retries=0)
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter)))
        backend.classify("polite", [f"Reply {i}, thanks." for i in range(checks)])
    return most[0]


@pytest.mark.parametrize(
    ("kind", "slots", "concurrent"),
    [
        ("alora", 1, True),
        ("alora", 4, False),
        ("alora", None, False),  # a server that does not say: the safe way
        ("alora", "1", False),
        ("lora", 4, True),
    ],
)
def test_alora_checks_overlap_only_where_the_server_has_one_slot(
    tmp_path: Path, kind: str, slots: Any, concurrent: bool
) -> None:
    adapter = fake_adapter(tmp_path, adapter_type=kind)
    assert (_most_in_flight(adapter, slots) > 1) is concurrent


@pytest.mark.parametrize(
    ("kind", "slots", "noted"),
    [("alora", 4, True), ("alora", 1, False), ("lora", 4, False), ("alora", None, False)],
)
def test_the_gate_says_once_how_to_check_an_alora_faster(kind: str, slots: int | None, noted: bool) -> None:
    served = ServedRecord("http://h:8080", "llama.cpp", slots=slots)
    lines = terminal_lines(AdapterEntry(name="polite", adapter_type=kind, served=served))
    notes = [line for line in lines if "serve one-slot replicas" in line]
    assert len(notes) == noted
    if noted:
        assert (
            notes[0]
            .strip()
            .startswith("note: http://h:8080 has 4 slots, so its aLoRA checks went one at a time")
        )

"""Public uploads look for personal data and secrets in the training data, and ask before going on."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from reqcheck.formats.data import fingerprint, load_examples
from reqcheck.publishing.personal_data import scan_text
from tests.publishing.common import upload


@pytest.fixture
def leaky_adapter(adapter: Path, tmp_path: Path) -> Path:
    """The adapter, its manifest pointing at training data holding an e-mail address and a token."""
    data = tmp_path / "leaky.jsonl"
    secret = "hf_" + "A1b2" * 9
    data.write_text(
        '{"item": "hi", "label": "no"}\n'
        '{"item": "mail jane.doe@example.com", "label": "yes"}\n'
        f'{{"item": "key {secret}", "label": "no"}}\n'
    )
    manifest = json.loads((adapter / "reqcheck.json").read_text())
    manifest["data"].update(path=str(data), fingerprint=fingerprint(load_examples(data)))
    (adapter / "reqcheck.json").write_text(json.dumps(manifest))
    return adapter


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_public_upload_with_personal_data_asks_and_yes_skips(hub, leaky_adapter, capsys, monkeypatch):
    args = [str(leaky_adapter), "--name", "acme/public", "--no-gate", "--public"]
    code, err = upload([*args, "--yes"], capsys, monkeypatch)
    assert code == 0, err
    assert "e-mail address: 1 on line(s) 2" in err and "Hugging Face token: 1 on line(s) 3" in err
    assert "jane.doe" not in err and "A1b2" not in err
    assert hub.repos["acme/public"].private is False


@pytest.mark.parametrize(("answer", "uploaded"), [("n\n", False), ("y\n", True)])
def test_public_upload_prompt(hub, leaky_adapter, capsys, monkeypatch, answer, uploaded):
    monkeypatch.setattr(sys, "stdin", FakeTTY(answer))
    code, err = upload(
        [str(leaky_adapter), "--name", "acme/asked", "--no-gate", "--public"], capsys, monkeypatch
    )
    assert "Upload publicly anyway?" in err
    assert (code == 0) is uploaded and ("acme/asked" in hub.repos) is uploaded
    if not uploaded:
        assert code == 1 and "Nothing was uploaded" in err and hub.requests == []


def test_public_upload_without_a_terminal_is_refused(hub, leaky_adapter, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, err = upload(
        [str(leaky_adapter), "--name", "acme/ci", "--no-gate", "--public"], capsys, monkeypatch
    )
    assert code == 2 and "--yes" in err and hub.requests == []


def test_private_upload_does_not_ask(hub, leaky_adapter, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, err = upload([str(leaky_adapter), "--name", "acme/private", "--no-gate"], capsys, monkeypatch)
    assert code == 0 and "e-mail" not in err


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("write to jane.doe@example.co.uk today", "e-mail address"),
        ("call +1 (415) 555-0132 now", "phone number"),
        ("call 020 7946 0958", "phone number"),
        ("token hf_abcdefghijklmnopqrstuvwxyz0123456789", "Hugging Face token"),
        ("OPENAI=sk-proj-abcdefghijklmnopqrstuvwx", "OpenAI-style API key"),
        ("aws AKIAIOSFODNN7EXAMPLE key", "AWS access key"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "GitHub token"),
        ("-----BEGIN RSA PRIVATE KEY-----", "private key"),
        ("secret=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "long hex secret"),
        ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYxyz123", "long base64 secret"),
    ],
)
def test_scanner_finds_personal_data_and_secrets(line, kind):
    findings = scan_text(["nothing here", line])
    assert kind in {f.kind for f in findings}
    assert all(f.lines == [2] for f in findings)


def test_scanner_ignores_ordinary_text():
    lines = [
        '{"item": "Thanks for your patience, the parcel ships on 2024-01-15 10:30.", "label": "yes"}',
        '{"item": "Order 12345 costs 19.99 and weighs 2.5 kg", "label": "no"}',
        '{"item": "see https://example.com/docs/getting-started-with-the-product", "label": "no"}',
    ]
    assert scan_text(lines) == []


def test_finding_description_lists_kind_count_and_lines():
    finding = scan_text([f"a{i}@example.com" for i in range(12)])[0]
    assert finding.describe() == "e-mail address: 12 on line(s) 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more"


def test_public_upload_whose_training_data_cannot_be_read_says_so_and_asks(hub, adapter, capsys, monkeypatch):
    """Fault 3: a training-data file missing on this machine skipped the personal-data scan without a word."""
    manifest = json.loads((adapter / "reqcheck.json").read_text())
    manifest["data"]["path"] = "/nowhere/train.jsonl"
    (adapter / "reqcheck.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    args = [str(adapter), "--name", "acme/unscanned", "--no-gate", "--public"]
    code, err = upload(args, capsys, monkeypatch)
    assert code == 2 and "/nowhere/train.jsonl" in err and "could not be scanned" in err and "--yes" in err
    assert hub.requests == []
    code, err = upload([*args, "--yes"], capsys, monkeypatch)
    assert code == 0 and "could not be scanned" in err
    assert hub.repos["acme/unscanned"].private is False


def _record_data(adapter: Path, **data: object) -> None:
    manifest = json.loads((adapter / "reqcheck.json").read_text())
    manifest["data"].update(data)
    (adapter / "reqcheck.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change", ["cleaned since training", "no fingerprint recorded"])
def test_public_upload_of_data_that_is_not_what_the_adapter_learnt_is_not_vouched_for(
    hub, leaky_adapter, capsys, monkeypatch, change
):
    """A training file cleaned after training no longer shows what the adapter learnt, so it is not scanned."""
    data = Path(json.loads((leaky_adapter / "reqcheck.json").read_text())["data"]["path"])
    if change == "cleaned since training":
        data.write_text('{"item": "hi", "label": "no"}\n{"item": "mail someone", "label": "yes"}\n')
        reason = "has changed since the adapter was trained"
    else:
        data.write_text('{"item": "hi", "label": "no"}\n')
        _record_data(leaky_adapter, fingerprint=None)
        reason = "no fingerprint of it"
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    args = [str(leaky_adapter), "--name", "acme/cleaned", "--no-gate", "--public"]
    code, err = upload(args, capsys, monkeypatch)
    assert code == 2 and reason in err and "could not be scanned" in err and "--yes" in err, err
    assert hub.requests == []
    code, err = upload([*args, "--yes"], capsys, monkeypatch)
    assert code == 0 and reason in err and "could not be scanned" in err, err

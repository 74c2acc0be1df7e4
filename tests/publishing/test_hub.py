"""reqcheck upload / package against an in-memory Hub driven by the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import constants

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.backend import LocalHFBackend
from reqcheck.checking.requirements import ALoraRequirement
from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import fingerprint, load_examples
from reqcheck.formats.io_yaml import IoYaml, io_yaml_labels
from reqcheck.formats.manifest import content_hash, short_model_name
from reqcheck.publishing.adapter import generate_io_yaml, read_adapter
from reqcheck.publishing.packaging import build_package
from reqcheck.publishing.personal_data import scan_text
from tests.fake_hub import FakeHub
from tests.helpers import PLEASE, run_cli

POSITIVE = "the reply please is late"
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "reqcheck.json"}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A fresh fake Hub; huggingface_hub pointed at it (its constants were frozen at import, offline)."""
    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)  # snapshot_download's file URLs
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setenv("HF_TOKEN", "hf_" + "t" * 34)
    yield server
    server.stop()


@pytest.fixture
def adapter(tiny_adapters, tmp_path: Path) -> Path:
    """A private copy of the tiny aLoRA adapter, so tests may edit it."""
    return Path(shutil.copytree(tiny_adapters["alora"].outfile, tmp_path / "alora"))


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> LocalHFBackend:
    return LocalHFBackend(str(tiny_model_dir), device="cpu")


def write_report(path: Path, adapter_dir: Path, *, passed: bool = True, gates: bool = True, **entry) -> Path:
    """A gate report in the plugin's contract format."""
    metrics = {"n": 40, "accuracy": 0.95, "macro_f1": 0.94, "latency_ms": {"p50": 9.0, "p95": 12.0}}
    gate = {"name": "min_accuracy", "mode": "adapter", "threshold": 0.9, "value": 0.95, "passed": passed}
    report_entry = {
        "name": "please",
        "path": str(adapter_dir),
        "content_hash": content_hash(adapter_dir),
        "labels": ["no", "yes"],
        "positive_labels": ["yes"],
        "modes": {"adapter": metrics, "judge": {**metrics, "accuracy": 0.61, "macro_f1": 0.55}},
        "gates": [gate] if gates else [],
        "passed": passed,
        **entry,
    }
    report = {"report_format": 1, "reqcheck_version": "0.1.0", "passed": passed, "adapters": [report_entry]}
    path.write_text(json.dumps(report))
    return path


def tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def upload(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    return run_cli(["upload", *args], capsys, monkeypatch)


def test_plain_upload_round_trips_and_loads(hub, adapter, backend, tmp_path, capsys, monkeypatch):
    before = tree_digest(adapter)
    report = write_report(tmp_path / "report.json", adapter)
    code, err = upload([str(adapter), "--name", "acme/please", "--gate", str(report)], capsys, monkeypatch)
    assert code == 0, err
    repo = hub.repos["acme/please"]
    assert repo.private and len(repo.history) == 1
    assert set(repo.files()) == {*ADAPTER_FILES, "README.md", ".gitattributes"}
    card = repo.files()["README.md"].decode()
    assert "library_name: peft" in card and "| judge | 40 | 0.610" in card and "memorise" in card
    assert "without a passing gate" not in card
    assert tree_digest(adapter) == before

    backend.add_adapter(
        CustomIntrinsicAdapter(model_id="acme/please", intrinsic_name="plain", cache_dir=str(tmp_path / "c"))
    )
    result = backend.check(ALoraRequirement(PLEASE, intrinsic_name="plain"), POSITIVE)
    assert result.passed and result.via == "adapter:plain"


def test_intrinsic_upload_on_a_branch_round_trips(hub, tiny_adapters, backend, tmp_path, capsys, monkeypatch):
    lora = tiny_adapters["lora"].outfile
    before = tree_digest(lora)
    report = write_report(tmp_path / "report.json", lora)
    args = [str(lora), "--name", "acme/checks", "--intrinsic", "--gate", str(report), "--revision", "dev"]
    code, err = upload([*args, "--commit-message", "first check"], capsys, monkeypatch)
    assert code == 0, err
    repo = hub.repos["acme/checks"]
    base = short_model_name(read_adapter(lora).base_model)
    subdir = f"checks/{base}/lora"
    assert set(repo.files("dev")) == {f"{subdir}/{n}" for n in {*ADAPTER_FILES, "io.yaml"}} | {
        "README.md",
        ".gitattributes",
    }
    assert repo.history == ["first check"] and set(repo.files("main")) == {".gitattributes"}
    assert tree_digest(lora) == before

    backend.add_adapter(
        CustomIntrinsicAdapter(
            model_id="acme/checks", intrinsic_name="checks", revision="dev", cache_dir=str(tmp_path / "c")
        )
    )
    result = backend.check(ALoraRequirement(PLEASE, intrinsic_name="checks"), POSITIVE)
    assert result.passed and result.via == "adapter:checks"
    assert result.as_intrinsic_output()["requirement_check"]["score"] == result.score


def test_generated_io_yaml_is_valid_and_round_trips(adapter, tmp_path):
    facts = read_adapter(adapter)
    text = generate_io_yaml(facts)
    config = IoYaml.parse(text, "generated").to_dict()
    assert config["model"] is None and set(config) == {
        "model",
        "response_format",
        "transformations",
        "parameters",
        "instruction",
    }
    schema = json.loads(config["response_format"])
    assert schema["properties"]["score"] == {"type": "string", "enum": ["no", "yes"]}
    assert [step["type"] for step in config["transformations"]] == ["likelihood", "nest"]
    assert config["transformations"][0]["input_path"] == ["score"]
    assert config["instruction"] == facts.manifest.prompt.instruction
    (tmp_path / "io.yaml").write_text(text)
    assert io_yaml_labels(tmp_path) == (list(facts.manifest.labels), facts.manifest.positive_labels)


BAD_IO_YAML = [
    ("model: [unclosed", "not valid YAML"),
    ("- a list", "not a YAML mapping"),
    ("model: null\nresponse_format: '{}'\ntransformations: null\nextra: 1", "unknown key(s) extra"),
    ("model: null\ntransformations: null", "lacks response_format"),
    ("model: null\nresponse_format: '{not json'\ntransformations: null", "response_format is not valid JSON"),
    ("model: null\nresponse_format: '[1]'\ntransformations: null", "not a JSON schema object"),
    (
        'model: null\nresponse_format: \'{"type": "object"}\'\ntransformations: [{input_path: []}]',
        "with a type",
    ),
    (
        'model: null\nresponse_format: \'{"type": "object"}\'\ntransformations: [{type: likelihood}]',
        "categories_to_values",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_IO_YAML)
def test_bad_user_io_yaml_is_refused_before_any_request(
    hub, adapter, tmp_path, capsys, monkeypatch, text, message
):
    (tmp_path / "io.yaml").write_text(text)
    args = [
        str(adapter),
        "--name",
        "acme/x",
        "--intrinsic",
        "--io-yaml",
        str(tmp_path / "io.yaml"),
        "--no-gate",
    ]
    code, err = upload(args, capsys, monkeypatch)
    assert code == 2 and message in err and err.count("\n") == 1
    assert hub.requests == []


def test_user_io_yaml_is_uploaded_verbatim(hub, adapter, tmp_path, capsys, monkeypatch):
    text = generate_io_yaml(read_adapter(adapter)).replace("# Written by reqcheck", "# Mine, after reqcheck")
    (tmp_path / "io.yaml").write_text(text)
    args = [str(adapter), "--name", "acme/mine", "--intrinsic", "--io-yaml", str(tmp_path / "io.yaml")]
    code, err = upload([*args, "--no-gate"], capsys, monkeypatch)
    assert code == 0, err
    files = hub.repos["acme/mine"].files()
    assert [files[name] for name in files if name.endswith("io.yaml")] == [text.encode()]
    assert not (adapter / "io.yaml").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "pytest --adapter"),
        ("failed", "failed its gate"),
        ("mismatch", "changed since the report was written"),
        ("ungated", "--reqcheck-min-accuracy"),
        ("absent-file", "does not exist"),
    ],
)
def test_gate_refuses(hub, adapter, tmp_path, capsys, monkeypatch, case, message):
    report = tmp_path / "report.json"
    if case == "failed":
        write_report(report, adapter, passed=False)
    elif case == "mismatch":
        write_report(report, adapter, content_hash="sha256:" + "0" * 64)
    elif case == "ungated":
        write_report(report, adapter, gates=False)
    gate = [] if case == "missing" else ["--gate", str(report)]
    code, err = upload([str(adapter), "--name", "acme/x", *gate], capsys, monkeypatch)
    assert code == 2 and message in err, err
    assert hub.requests == [] and "Traceback" not in err


def test_no_gate_uploads_with_a_loud_warning(hub, adapter, capsys, monkeypatch):
    code, err = upload([str(adapter), "--name", "acme/ungated", "--no-gate"], capsys, monkeypatch)
    assert code == 0 and "WITHOUT a passing gate" in err
    card = hub.repos["acme/ungated"].files()["README.md"].decode()
    assert "uploaded without a passing gate" in card and "ungated" in card


def test_dry_run_needs_no_token_and_sends_nothing(hub, adapter, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    report = write_report(tmp_path / "report.json", adapter)
    args = [str(adapter), "--name", "acme/dry", "--intrinsic", "--gate", str(report), "--dry-run"]
    code, err = upload(args, capsys, monkeypatch)
    assert code == 0, err
    assert (
        "acme/dry @ main (private, intrinsic (dry/" in err and "/alora/io.yaml" in err and "README.md" in err
    )
    assert hub.requests == []


def test_no_token_is_a_clear_error(hub, adapter, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    code, err = upload([str(adapter), "--name", "acme/x", "--no-gate"], capsys, monkeypatch)
    assert code == 2 and "hf auth login" in err and "HF_TOKEN" in err
    assert hub.requests == []


def test_failed_commit_leaves_the_repo_unchanged(hub, adapter, capsys, monkeypatch):
    hub.fail_commits = True
    code, err = upload([str(adapter), "--name", "acme/broken", "--no-gate"], capsys, monkeypatch)
    assert code == 2 and f"Could not reach the Hub at {hub.url}" in err
    assert set(hub.repos["acme/broken"].files()) == {".gitattributes"}
    assert hub.repos["acme/broken"].history == []
    assert "hf_ttt" not in err


def test_unreachable_hub_is_a_clear_error(hub, adapter, capsys, monkeypatch):
    dead = "http://127.0.0.1:9"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    code, err = upload([str(adapter), "--name", "acme/x", "--no-gate"], capsys, monkeypatch)
    assert code == 2 and f"Could not reach the Hub at {dead}" in err


def test_each_upload_is_one_commit(hub, adapter, capsys, monkeypatch):
    for message in ("one", "two"):
        args = [str(adapter), "--name", "acme/twice", "--no-gate", "--commit-message", message]
        assert upload(args, capsys, monkeypatch)[0] == 0
    assert hub.repos["acme/twice"].history == ["one", "two"]
    commits = [path for method, path in hub.requests if path.endswith("/commit/main")]
    assert len(commits) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "no-org"], "org/repo"),
        (["--name", "a/b/c"], "org/repo"),
        (["--name", "acme/x", "--io-yaml", "io.yaml"], "add --intrinsic"),
        (["--name", "acme/x", "--gate", "r.json"], "contradict"),
    ],
)
def test_bad_flags_are_refused(hub, adapter, capsys, monkeypatch, args, message):
    code, err = upload([str(adapter), *args, "--no-gate"], capsys, monkeypatch)
    assert code == 2 and message in err


def test_weight_path_must_hold_an_adapter(hub, tmp_path, capsys, monkeypatch):
    code, err = upload([str(tmp_path / "nope"), "--name", "acme/x", "--no-gate"], capsys, monkeypatch)
    assert code == 2 and "is not a directory" in err
    code, err = upload([str(tmp_path), "--name", "acme/x", "--no-gate"], capsys, monkeypatch)
    assert code == 2 and "adapter_config.json" in err


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


def test_package_writes_the_intrinsic_layout_and_loads(adapter, backend, tmp_path, capsys, monkeypatch):
    before = tree_digest(adapter)
    out = tmp_path / "pkg"
    report = write_report(tmp_path / "report.json", adapter)
    args = ["package", str(adapter), "--name", "acme/pkg", "--out", str(out), "--gate", str(report)]
    code, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    subdir = out / "pkg" / short_model_name(read_adapter(adapter).base_model) / "alora"
    assert {p.name for p in subdir.iterdir()} == {*ADAPTER_FILES, "io.yaml"}
    assert "| adapter | 40 | 0.950" in (out / "README.md").read_text()
    assert tree_digest(adapter) == before
    assert run_cli(args, capsys, monkeypatch)[0] == 0  # its own output is replaced

    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(out), intrinsic_name="pkg"))
    assert backend.check(ALoraRequirement(PLEASE, intrinsic_name="pkg"), POSITIVE).passed


def test_package_refuses_a_directory_it_did_not_write(adapter, tmp_path, capsys, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, err = run_cli(["package", str(adapter), "--name", "acme/p", "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "not written by reqcheck package" in err
    assert (out / "notes.txt").read_text() == "keep me"


def test_mellea_adapter_without_manifest_needs_an_io_yaml(adapter):
    (adapter / "reqcheck.json").unlink()
    with pytest.raises(ReqcheckError, match="pass --io-yaml"):
        generate_io_yaml(read_adapter(adapter))


def test_io_yaml_parses_as_yaml_with_comment_header(adapter):
    text = generate_io_yaml(read_adapter(adapter))
    assert text.startswith("# Written by reqcheck") and PLEASE in text
    assert yaml.safe_load(text)["transformations"][1]["field_name"] == "requirement_check"


def test_upload_reads_a_format_2_report_and_the_card_shows_intervals(
    hub, adapter, tmp_path, capsys, monkeypatch
):
    report_path = write_report(tmp_path / "report.json", adapter)
    report = json.loads(report_path.read_text())
    entry = report["adapters"][0]
    report["report_format"] = 2
    entry["confidence"] = 0.95
    entry["modes"]["adapter"]["accuracy_interval"] = [0.835, 0.986]
    entry["gates"][0].update(interval=[0.835, 0.986], bound=0.835, on="point")
    entry["cases"] = []
    report_path.write_text(json.dumps(report))
    code, err = upload(
        [str(adapter), "--name", "acme/please", "--gate", str(report_path)], capsys, monkeypatch
    )
    assert code == 0, err
    card = hub.repos["acme/please"].files()["README.md"].decode()
    assert "| adapter | 40 | 0.950 (95%: 0.835–0.986) |" in card
    assert "| min_accuracy | adapter | 0.900 | 0.950 (95%: 0.835–0.986) | yes |" in card


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


ESCAPING_NAMES = {
    "repo ..": ["--name", "org/.."],
    "leading dash": ["--name", "org/-bad-"],
    "double dash": ["--name", "org/x--y"],
    "200 characters": ["--name", "org/" + "a" * 200],
    "intrinsic name ..": ["--name", "acme/ok", "--intrinsic-name", ".."],
}


@pytest.mark.parametrize("case", ESCAPING_NAMES, ids=list(ESCAPING_NAMES))
def test_names_that_escape_the_output_or_that_the_hub_rejects_are_refused(
    adapter, tmp_path, capsys, monkeypatch, case
):
    """Fault 11: `--name org/..` wrote outside --out, and ids the Hub rejects crashed the real upload."""
    before, files = sorted(p.name for p in tmp_path.iterdir()), tree_digest(adapter)
    args = ESCAPING_NAMES[case]
    out = tmp_path / "build" / "out"
    code, err = run_cli(["package", str(adapter), *args, "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and ("is not a Hub repo id" in err or "is not a folder name" in err), err
    code, err = upload([str(adapter), *args, "--intrinsic", "--no-gate", "--dry-run"], capsys, monkeypatch)
    assert code == 2 and ("is not a Hub repo id" in err or "is not a folder name" in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and tree_digest(adapter) == files


def test_package_to_an_unwritable_out_is_one_sentence(adapter, tmp_path, capsys, monkeypatch):
    """Fault 15: `package --out` on a read-only path ended in a PermissionError traceback."""
    if os.geteuid() == 0:  # root may write to any mode bits; sysfs refuses new entries even to root
        out = Path("/sys/reqcheck-test/out")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        out = locked / "out"
    code, err = run_cli(["package", str(adapter), "--name", "acme/p", "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and f"Cannot write --out {out}" in err and "Traceback" not in err


def test_a_report_about_another_adapter_says_so(hub, tiny_adapters, adapter, tmp_path, capsys, monkeypatch):
    """Fault 19: a report for other weights always said "they changed since the report was written"."""
    other = Path(shutil.copytree(tiny_adapters["lora"].outfile, tmp_path / "other"))
    report = write_report(tmp_path / "report.json", other)
    code, err = upload([str(adapter), "--name", "acme/x", "--gate", str(report)], capsys, monkeypatch)
    assert code == 2 and f"gated another adapter ({other}), not {adapter}" in err
    assert "changed since" not in err
    (adapter / "adapter_model.safetensors").write_bytes((other / "adapter_model.safetensors").read_bytes())
    report = write_report(tmp_path / "report.json", other)
    (entry,) = (data := json.loads(report.read_text()))["adapters"]
    report.write_text(json.dumps({**data, "adapters": [{**entry, "path": str(adapter)}]}))
    code, err = upload([str(adapter), "--name", "acme/x", "--gate", str(report)], capsys, monkeypatch)
    assert code == 2 and "they changed since the report was written" in err


def test_package_of_truncated_weights_is_one_sentence(adapter, tmp_path, capsys, monkeypatch):
    """A half-copied adapter_model.safetensors is refused before it is packaged or uploaded."""
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, err = run_cli(
        ["package", str(adapter), "--name", "acme/p", "--out", str(tmp_path / "p")], capsys, monkeypatch
    )
    assert code == 2 and "adapter_model.safetensors is damaged" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


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


def _secret_docker_config(tmp_path: Path) -> Path:
    secret = tmp_path / "docker" / "config.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"auths": {"registry.example": {"auth": "c2VjcmV0LXB3"}}}))
    return secret


def test_package_refuses_a_config_that_is_not_a_peft_config(adapter, tmp_path, capsys, monkeypatch):
    """Any JSON object passed as adapter_config.json, and its keys went into the packaged config."""
    config = adapter / "adapter_config.json"
    config.write_text(_secret_docker_config(tmp_path).read_text())
    out = tmp_path / "pkg"
    code, err = run_cli(["package", str(adapter), "--name", "acme/p", "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "is not a PEFT adapter config" in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors", "reqcheck.json"])
def test_package_refuses_an_adapter_file_that_resolves_outside_the_adapter(
    adapter, tmp_path, capsys, monkeypatch, name
):
    """A symlinked adapter file packaged whatever it points at (a docker config.json with credentials)."""
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(adapter / name, outside)
    (adapter / name).symlink_to(outside)
    out = tmp_path / "pkg"
    code, err = run_cli(["package", str(adapter), "--name", "acme/p", "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and f"{adapter / name} resolves to {outside}, outside" in err, err
    assert not out.exists()
    code, err = upload([str(adapter), "--name", "acme/p", "--no-gate", "--dry-run"], capsys, monkeypatch)
    assert code == 2 and "outside" in err


def test_package_reads_an_adapter_from_the_hugging_face_cache(adapter, tmp_path, capsys, monkeypatch):
    """The Hub cache keeps a snapshot's files as links into the repo's blobs: those are the adapter's own."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--acme--please"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in adapter.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    out = tmp_path / "pkg"
    code, err = run_cli(
        ["package", str(snapshot), "--name", "acme/p", "--out", str(out)], capsys, monkeypatch
    )
    assert code == 0, err


HOSTILE_LABEL = "y|es\n<img src=x onerror=alert(1)>"
HOSTILE_REQUIREMENT = "Be | polite\n# Owned\n<script>alert(1)</script>"


def test_the_model_card_shows_hostile_labels_and_requirement_as_text(adapter, tmp_path):
    """Labels and requirements with `|`, newlines or HTML broke the card's tables and injected markup."""
    manifest = json.loads((adapter / "reqcheck.json").read_text())
    manifest["requirement"] = HOSTILE_REQUIREMENT
    manifest["labels"][HOSTILE_LABEL] = 1
    (adapter / "reqcheck.json").write_text(json.dumps(manifest))
    report = write_report(tmp_path / "report.json", adapter)
    data = json.loads(report.read_text())
    data["adapters"][0]["gates"][0]["mode"] = "adapter|<b>x</b>"
    report.write_text(json.dumps(data))
    card = build_package(adapter, "acme/p", intrinsic=False, gate_report=report).card
    prose = re.sub(r"^```python\n.*?^```$", "", card, flags=re.S | re.M)  # code blocks show HTML as code
    assert prose.count("```") == 0 and "<script>" not in prose and "<img" not in prose and "<b>" not in prose
    assert not any(line.startswith("# Owned") for line in card.splitlines())
    rows = [line for line in card.splitlines() if line.startswith("|")]
    tables = {line.count("|") - line.count("\\|") for line in rows}
    assert tables == {3, 4, 6}, rows  # the summary's 2 columns, labels' 3, the gate tables' 5
    assert "| y\\|es &lt;img src=x onerror=alert(1)&gt; | no | 1 |" in card
    assert "**Requirement:** Be \\| polite # Owned &lt;script&gt;alert(1)&lt;/script&gt;" in card


_TERMINATE_WHILE_WRITING = """
import os, signal, sys, time

import reqcheck.publishing.packaging as packaging

stage = packaging.stage


def stage_then_terminate(*args, **kwargs):
    stage(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)  # as CI cancels a job
    time.sleep(60)


packaging.stage = stage_then_terminate
from reqcheck.cli import main

sys.argv = ["reqcheck", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("command", ["package", "upload"])
def test_sigterm_while_writing_leaves_no_partial_copy(adapter, tmp_path, command):
    """SIGTERM, how CI cancels a job, is handled like Ctrl-C: the temp copy is removed."""
    work = tmp_path / "work"
    (work / "tmp").mkdir(parents=True)
    args = ["--out", str(work / "pkg")] if command == "package" else ["--no-gate", "--dry-run"]
    done = subprocess.run(
        [sys.executable, "-c", _TERMINATE_WHILE_WRITING, command, str(adapter), "--name", "acme/p", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(work / "tmp")},
    )
    assert done.returncode == 130 and "interrupted" in done.stderr, done.stderr[-2000:]
    assert [p.relative_to(work).as_posix() for p in work.rglob("*")] == ["tmp"]


def test_endpoint_credentials_are_never_printed(hub, adapter, capsys, monkeypatch):
    """HF_ENDPOINT=http://user:pass@host printed the password in the target line and in errors."""
    with_password = hub.url.replace("http://", "http://alice:s3cret-pw@")
    monkeypatch.setenv("HF_ENDPOINT", with_password)
    args = [str(adapter), "--name", "acme/x", "--no-gate"]
    code, err = upload([*args, "--dry-run"], capsys, monkeypatch)
    assert code == 0 and f"target: {hub.url.replace('http://', 'http://***@')}/acme/x" in err, err
    assert "s3cret-pw" not in err and "alice" not in err
    hub.fail_commits = True
    code, err = upload(args, capsys, monkeypatch)
    assert code == 2 and "Could not reach the Hub at http://***@127.0.0.1" in err, err
    assert "s3cret-pw" not in err and "alice" not in err
    monkeypatch.setenv("HF_ENDPOINT", "http://alice:s3cret-pw@127.0.0.1:9")
    code, err = upload(args, capsys, monkeypatch)
    assert code == 2 and "s3cret-pw" not in err and "alice" not in err, err


def test_a_partial_gate_run_is_refused_unless_allowed(hub, adapter, tmp_path, capsys, monkeypatch):
    report = write_report(tmp_path / "report.json", adapter, collected=80, ran=22, partial=True)
    code, err = upload([str(adapter), "--name", "acme/x", "--gate", str(report)], capsys, monkeypatch)
    assert code == 2 and "on a partial run (22 of 80 collected cases ran)" in err, err
    assert "--allow-partial-gate" in err and hub.requests == []
    out = tmp_path / "out"
    code, err = run_cli(
        ["package", str(adapter), "--name", "acme/x", "--out", str(out), "--gate", str(report)],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "partial run" in err and not out.exists()
    allowed = ["--gate", str(report), "--allow-partial-gate"]
    code, err = upload([str(adapter), "--name", "acme/x", *allowed, "--dry-run"], capsys, monkeypatch)
    assert code == 0, err
    complete = write_report(tmp_path / "complete.json", adapter, collected=80, ran=80)
    code, err = upload(
        [str(adapter), "--name", "acme/x", "--gate", str(complete), "--dry-run"], capsys, monkeypatch
    )
    assert code == 0, err


@pytest.mark.parametrize("option", ["--gate", "--io-yaml"])
def test_an_input_path_under_a_file_is_one_sentence(adapter, tmp_path, capsys, monkeypatch, option):
    (tmp_path / "file").write_text("not a folder")
    gate = [] if option == "--gate" else ["--gate", str(write_report(tmp_path / "report.json", adapter))]
    args = [
        str(adapter),
        "--name",
        "acme/x",
        "--intrinsic",
        "--dry-run",
        *gate,
        option,
        str(tmp_path / "file/x"),
    ]
    code, err = upload(args, capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and "file/x" in err, err
    assert "Traceback" not in err


DAMAGED_MANIFESTS = {
    "labels a string": {"labels": "yes"},
    "labels of numbers": {"labels": [1, 2]},
    "base model a list": {"base_model": ["x"]},
    "no base model": {"base_model": None},
    "requirement a number": {"requirement": 3},
    "data a string": {"data": "train.jsonl"},
    "metrics a list": {"metrics": [1]},
    "hyperparameters a list": {"hyperparameters": [1]},
    "output a string": {"output": "json"},
    "label counts of words": {"labels": {"no": "many", "yes": 1}},
    "invocation ids of words": {"invocation_ids": ["a"]},
}


@pytest.mark.parametrize("case", DAMAGED_MANIFESTS, ids=list(DAMAGED_MANIFESTS))
def test_a_damaged_manifest_is_one_sentence_for_package_and_upload(
    adapter, tmp_path, capsys, monkeypatch, case
):
    manifest = json.loads((adapter / "reqcheck.json").read_text())
    (adapter / "reqcheck.json").write_text(json.dumps({**manifest, **DAMAGED_MANIFESTS[case]}))
    report = write_report(tmp_path / "report.json", adapter)
    code, err = upload([str(adapter), "--name", "acme/x", "--intrinsic", "--gate", str(report), "--dry-run"],
                       capsys, monkeypatch)  # fmt: skip
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    out = tmp_path / "out"
    code, err = run_cli(["package", str(adapter), "--name", "acme/x", "--out", str(out), "--gate", str(report)],
                        capsys, monkeypatch)  # fmt: skip
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert not out.exists()


def test_a_report_with_a_gate_this_reqcheck_does_not_know_is_refused(
    hub, adapter, tmp_path, capsys, monkeypatch
):
    report = write_report(tmp_path / "report.json", adapter)
    data = json.loads(report.read_text())
    data["adapters"][0]["gates"][0]["name"] = "min_accuracy | <img src=x>"
    report.write_text(json.dumps(data))
    code, err = upload(
        [str(adapter), "--name", "acme/x", "--gate", str(report), "--dry-run"], capsys, monkeypatch
    )
    assert code == 2 and "gates this reqcheck does not know" in err and err.count("\n") == 1, err
    assert hub.requests == []

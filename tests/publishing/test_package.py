"""reqcheck package: the intrinsic layout, its io.yaml and model card, written whole or not at all."""

from __future__ import annotations

import hashlib
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
from reqcheck.checking.requirements import ALoraRequirement
from reqcheck.errors import ReqcheckError
from reqcheck.formats.io_yaml import IoYaml, io_yaml_labels
from reqcheck.formats.manifest import short_model_name
from reqcheck.publishing.adapter import generate_io_yaml, read_adapter
from reqcheck.publishing.packaging import build_package
from tests.helpers import PLEASE, run_cli
from tests.publishing.common import ADAPTER_FILES, POSITIVE, tree_digest, upload, write_report


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


def test_package_of_truncated_weights_is_one_sentence(adapter, tmp_path, capsys, monkeypatch):
    """A half-copied adapter_model.safetensors is refused before it is packaged or uploaded."""
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, err = run_cli(
        ["package", str(adapter), "--name", "acme/p", "--out", str(tmp_path / "p")], capsys, monkeypatch
    )
    assert code == 2 and "adapter_model.safetensors is damaged" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


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

"""reqcheck upload against an in-memory Hub driven by the real huggingface_hub client."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.requirements import ALoraRequirement
from reqcheck.formats.manifest import short_model_name
from reqcheck.publishing.adapter import generate_io_yaml, read_adapter
from tests.helpers import PLEASE, run_cli
from tests.publishing.common import ADAPTER_FILES, POSITIVE, tree_digest, upload, write_report


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

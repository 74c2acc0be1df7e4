"""Labels are compared as the user sees them: `sí` typed as one code point (NFC) or as `i` and a combining
accent (NFD) is one label in training data, fixtures and baseline reports, and an io.yaml that writes an
adapter's labels in another form is refused in one sentence saying so."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import as_label, check_label_spellings, load_examples, parse_lines
from reqcheck.formats.gate_report import CaseMode, CaseRecord
from reqcheck.formats.io_yaml import IoYaml
from reqcheck.formats.manifest import Manifest
from reqcheck.gating.baseline import compare_cases

NFC, NFD = "s\u00ed", "si\u0301"


def _lines(path: Path, labels: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"item": f"reply {i}", "label": x}) + "\n" for i, x in enumerate(labels))
    )
    return path


def test_one_function_says_how_a_label_reads() -> None:
    assert as_label(NFD) == as_label(f" {NFC} ") == NFC
    assert (
        as_label("\ufb01ne") == "\ufb01ne"
    )  # a compatibility form is another spelling, not another encoding


def test_training_data_and_fixtures_read_a_label_in_either_form_as_one(tmp_path: Path) -> None:
    path = _lines(tmp_path / "data.jsonl", [NFC, NFD, "no", " no"])
    examples = load_examples(path)
    assert [e.label for e in examples] == [NFC, NFC, "no", "no"]
    check_label_spellings(examples)
    fixture, problems = parse_lines(_lines(tmp_path / "cases.reqcheck.jsonl", [NFD]))
    assert problems == [] and fixture[0].label == NFC


def _case(item_hash: str, expected: str, predicted: str) -> CaseRecord:
    return CaseRecord(
        "c", "t.reqcheck.jsonl", 1, item_hash, expected, None, {"adapter": CaseMode(predicted, {})}
    )


def test_a_baseline_report_written_in_another_form_shares_its_cases() -> None:
    baseline = [_case("h1", NFD, NFD), _case("h2", "no", "no")]
    current = [_case("h1", NFC, "no"), _case("h2", "no", "no")]
    comparison = compare_cases(baseline, current, "base.json")
    assert comparison.shared == 2 and [c.item_hash for c in comparison.right_to_wrong] == ["h1"]


@pytest.fixture
def si_manifest(quick_adapter: Path) -> Manifest:
    """The quick adapter's manifest as if it had been trained on the labels `no` and `sí`."""
    manifest = Manifest.read(quick_adapter)
    ids = manifest.label_token_ids
    return dataclasses.replace(
        manifest,
        labels={"no": 20, NFC: 20},
        label_token_ids={"no": ids["no"], NFC: ids["yes"]},
        positive_labels=[NFC],
    )


@pytest.mark.parametrize("where", ["response_format enum", "categories_to_values"])
def test_an_io_yaml_writing_a_label_in_another_form_is_refused_saying_so(
    si_manifest: Manifest, where: str
) -> None:
    config = yaml.safe_load(IoYaml.for_manifest(si_manifest).to_text())
    if where == "response_format enum":
        schema = json.loads(config["response_format"])
        schema["properties"]["score"]["enum"] = ["no", NFD]
        config["response_format"] = json.dumps(schema)
    else:
        config["transformations"][0]["categories_to_values"] = {NFD: 1.0, "no": 0.0}
    with pytest.raises(ReqcheckError) as refused:
        IoYaml.parse(yaml.safe_dump(config, allow_unicode=True), "user.io.yaml").check_fits(
            si_manifest, "user.io.yaml"
        )
    message = str(refused.value)
    assert "Unicode normalisation" in message and "NFC" in message and len(message.splitlines()) == 1
    IoYaml.for_manifest(si_manifest).check_fits(si_manifest, "io.yaml")

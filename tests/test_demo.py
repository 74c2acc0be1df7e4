"""The demo pipeline end to end: on the tiny model (fast) and on SmolLM2 with less data (slow)."""

import json
from pathlib import Path

import pytest

from reqcheck.demo import EXAMPLES, DemoConfig, run_demo
from tests.helpers import ALL_LINEAR, PLEASE
from tests.tiny import marker_task, write_jsonl


def test_demo_runs_end_to_end_and_reuses_what_it_built(tiny_model_dir: Path, tmp_path: Path) -> None:
    example = tmp_path / "please"
    example.mkdir()
    write_jsonl(example / "train.jsonl", marker_task(240, seed=4))
    write_jsonl(
        example / "test.reqcheck.jsonl", [{**row, "requirement": PLEASE} for row in marker_task(40, seed=5)]
    )
    config = DemoConfig(
        example=example,
        basemodel=str(tiny_model_dir),
        workdir=tmp_path / "work",
        epochs=4,
        learning_rate=5e-3,
        min_gain=0.2,
        device="cpu",
        max_new_tokens=8,
        target_modules=ALL_LINEAR,
    )
    lines: list[str] = []
    result = run_demo(config, say=lines.append)
    report = json.loads(Path(result["report"]).read_text())
    assert report["passed"] is True
    assert report["adapters"][0]["modes"]["adapter"]["accuracy"] >= 0.9
    assert set(result["checks"]) == {"adapter:please", "judge"}
    assert result["html"] == config.workdir / "report.html" and "<svg" in result["html"].read_text()
    assert any(line.startswith("$ ") and "upload" in line and "--dry-run" in line for line in lines)
    again: list[str] = []
    run_demo(config, say=again.append)
    assert any("reusing the adapter" in line for line in again)


@pytest.mark.slow
def test_demo_on_smollm2_with_less_data_passes_its_gate(tmp_path: Path) -> None:
    example = tmp_path / "support-polite"
    example.mkdir()
    lines = (EXAMPLES / "support-polite" / "train.jsonl").read_text().splitlines()
    (example / "train.jsonl").write_text("\n".join(lines[:160]) + "\n")
    (example / "test.reqcheck.jsonl").write_text(
        (EXAMPLES / "support-polite" / "test.reqcheck.jsonl").read_text()
    )
    config = DemoConfig(example=example, workdir=tmp_path / "work", epochs=4, min_accuracy=0.85, device="cpu")
    result = run_demo(config, say=lambda _: None)
    report = json.loads(Path(result["report"]).read_text())
    assert report["passed"] is True
    assert report["adapters"][0]["modes"]["adapter"]["accuracy"] >= 0.85

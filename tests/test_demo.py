"""The demo pipeline end to end: on the tiny model (fast) and on SmolLM2 with less data (slow)."""

import json
import sys
from pathlib import Path

import pytest

from reqcheck.demo import DemoConfig, changed_since_training, examples_dir, run_demo
from reqcheck.errors import ReqcheckError
from reqcheck.training.config import TrainConfig
from tests.helpers import ALL_LINEAR, FAST, PLEASE
from tests.tiny import build_tiny_model, marker_task, write_jsonl


@pytest.mark.slow
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
    config.min_gain = 1.0  # the judge would have to be always wrong and the adapter always right
    with pytest.raises(ReqcheckError) as failed:
        run_demo(config, say=lambda _: None)
    gain = (
        report["adapters"][0]["modes"]["adapter"]["accuracy"]
        - report["adapters"][0]["modes"]["judge"]["accuracy"]
    )
    assert str(failed.value).startswith(
        f"The gate failed: min_gain {gain:.3f} against a threshold of 1.0 (details in"
    )


@pytest.mark.slow
def test_demo_on_smollm2_with_less_data_passes_its_gate(tmp_path: Path) -> None:
    example = tmp_path / "support-polite"
    example.mkdir()
    lines = (examples_dir() / "support-polite" / "train.jsonl").read_text().splitlines()
    (example / "train.jsonl").write_text("\n".join(lines[:160]) + "\n")
    (example / "test.reqcheck.jsonl").write_text(
        (examples_dir() / "support-polite" / "test.reqcheck.jsonl").read_text()
    )
    config = DemoConfig(example=example, workdir=tmp_path / "work", epochs=4, min_accuracy=0.85, device="cpu")
    result = run_demo(config, say=lambda _: None)
    report = json.loads(Path(result["report"]).read_text())
    assert report["passed"] is True
    assert report["adapters"][0]["modes"]["adapter"]["accuracy"] >= 0.85


def test_the_demo_says_before_training_that_pytest_is_missing(tmp_path: Path, monkeypatch) -> None:
    """A plain install lacked pytest: the demo trained for two minutes, then stopped at a bare exit code."""
    monkeypatch.setitem(sys.modules, "pytest", None)  # what `import pytest` meets when it is not installed
    config = DemoConfig(workdir=tmp_path / "work")
    with pytest.raises(ReqcheckError, match="gate step runs pytest, which is not installed"):
        run_demo(config, say=lambda _: None)
    assert not config.workdir.exists()


def test_a_multi_class_example_is_refused_before_training(tmp_path: Path) -> None:
    example = tmp_path / "triage"
    example.mkdir()
    rows = [{"item": f"note {i}", "label": ["disk", "memory", "network"][i % 3]} for i in range(9)]
    write_jsonl(example / "train.jsonl", rows)
    write_jsonl(example / "test.reqcheck.jsonl", rows[:3])
    config = DemoConfig(example=example, workdir=tmp_path / "work")
    with pytest.raises(
        ReqcheckError, match=r"is a classifier \(disk, memory, network\) with no passing label"
    ):
        run_demo(config, say=lambda _: None)
    assert not config.workdir.exists()


def test_a_failed_step_names_the_missing_module(tmp_path: Path) -> None:
    from reqcheck.demo import _gate_failure

    lines = ["$ python -m pytest ...", "/usr/bin/python3: No module named pytest"]
    message = _gate_failure(1, lines, tmp_path / "report.json")
    assert message.startswith(
        "The gate could not run: No module named pytest; install it into this environment"
    )


def test_the_demo_retrains_for_another_base_model_or_requirement(
    tiny_adapters, tiny_model_dir: Path, marker_data: Path, tmp_path: Path
) -> None:
    """Fault 7: the demo reused an adapter trained for another base model or requirement."""
    trained = tiny_adapters["alora"].outfile
    same = TrainConfig(marker_data, str(tiny_model_dir), trained, requirement=PLEASE, **FAST)
    assert changed_since_training(trained, same) == []
    other_requirement = TrainConfig(marker_data, str(tiny_model_dir), trained, requirement="Short.", **FAST)
    assert changed_since_training(trained, other_requirement) == ["requirement"]
    other_base = build_tiny_model(tmp_path / "other-model", seed=3)
    other_model = TrainConfig(marker_data, str(other_base), trained, requirement=PLEASE, **FAST)
    assert changed_since_training(trained, other_model) == ["base model"]


@pytest.mark.parametrize(
    ("name", "text"), [("report.json", '{"mine": true}'), ("report.html", "<p>my page</p>")]
)
def test_the_demo_leaves_a_report_or_page_it_did_not_write_alone(
    tiny_model_dir: Path, tmp_path: Path, name: str, text: str
) -> None:
    example = tmp_path / "please"
    example.mkdir()
    write_jsonl(example / "train.jsonl", marker_task(40, seed=4))
    write_jsonl(
        example / "test.reqcheck.jsonl", [{**row, "requirement": PLEASE} for row in marker_task(8, seed=5)]
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / name).write_text(text)
    with pytest.raises(
        ReqcheckError, match=f"{name} exists and was not written by reqcheck; pass another --workdir"
    ):
        config = DemoConfig(example=example, basemodel=str(tiny_model_dir), workdir=work, device="cpu", epochs=1,
                            target_modules=ALL_LINEAR, max_new_tokens=4)  # fmt: skip
        run_demo(config, say=lambda _: None)
    assert (work / name).read_text() == text
    assert sorted(p.name for p in work.iterdir()) == [name]

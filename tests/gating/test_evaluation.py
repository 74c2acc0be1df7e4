"""Gate bookkeeping without pytest: per-case records, intervals, paired gates, baselines, report formats."""

import json
from pathlib import Path

import pytest
from scipy.stats import binomtest

from reqcheck.errors import ReqcheckError
from reqcheck.formats.gate_report import Gate, GateReport
from reqcheck.gating.baseline import Baseline
from reqcheck.gating.cases import Prediction, item_hash
from reqcheck.gating.evaluation import AdapterRun, build_report
from reqcheck.gating.gates import GateSettings

LABELS = ["no", "yes"]


def make_run(wrong: set[int], n: int = 80, settings: GateSettings | None = None, **kwargs) -> AdapterRun:
    """A run of n alternating yes/no cases in which the adapter gets the cases in `wrong` wrong."""
    run = AdapterRun("polite", "ckpt", "sha256:abc", {}, "alora", LABELS, ["yes"],
                     settings=settings or GateSettings(), **kwargs)  # fmt: skip
    for i in range(n):
        expected = LABELS[i % 2]
        predicted = LABELS[1 - i % 2] if i in wrong else expected
        run.record(id=f"case{i}", file="t.reqcheck.jsonl", line=i + 1, item=f"reply number {i}",
                   expected=expected, mode="adapter",
                   prediction=Prediction({predicted: 0.9, LABELS[LABELS.index(predicted) - 1]: 0.1}, 0.01))  # fmt: skip
        run.record(id=f"case{i}", file="t.reqcheck.jsonl", line=i + 1, item=f"reply number {i}",
                   expected=expected, mode="judge", prediction=Prediction({"yes": 0.7, "no": 0.3}, 0.02))  # fmt: skip
    return run


def write_report(path: Path, *runs: AdapterRun) -> Path:
    path.write_text(build_report(list(runs)).to_json())
    return path


def drop_gate(baseline: Path, wrong: set[int], gate_on: str, threshold: float = 0.0) -> Gate:
    run = make_run(wrong, settings=GateSettings(gate_on=gate_on), baseline=Baseline.read(baseline))
    gate = Gate("max_drop", "adapter", threshold)
    run.evaluate(gate)
    return gate


@pytest.fixture
def baseline(tmp_path: Path) -> Path:
    return write_report(tmp_path / "base.json", make_run(wrong=set()))


def test_one_flipped_case_in_80_passes_the_paired_drop_gate_and_a_real_drop_fails(baseline: Path) -> None:
    flip = drop_gate(baseline, wrong={5}, gate_on="bound")
    assert flip.passed is True and flip.value == pytest.approx(1 / 80) and flip.p_value == 1.0
    assert flip.bound < 0 < flip.interval[1] and flip.n == 80
    drop = drop_gate(baseline, wrong=set(range(0, 16, 2)), gate_on="bound")
    assert drop.passed is False and drop.value == pytest.approx(8 / 80)
    assert drop.bound > 0 and drop.p_value == pytest.approx(2 * 0.5**8)


def test_on_the_point_estimate_one_flip_fails_a_zero_drop_gate_as_before(baseline: Path) -> None:
    gate = drop_gate(baseline, wrong={5}, gate_on="point")
    assert gate.passed is False and gate.value == pytest.approx(1 / 80)
    # the interval holds 0; the same share of cases turning wrong would be a drop on a few hundred
    assert gate.resolved is False and 80 < gate.cases_needed < 1000


def test_a_tolerated_drop_passes_on_either_rule(baseline: Path) -> None:
    for gate_on in ("point", "bound"):
        assert drop_gate(baseline, wrong={1, 3}, gate_on=gate_on, threshold=0.05).passed is True


def test_regressions_are_listed_by_name_both_ways(tmp_path: Path) -> None:
    base = write_report(tmp_path / "base.json", make_run(wrong={7}))
    run = make_run(wrong={2, 4}, baseline=Baseline.read(base))
    comparison = run.comparison()
    assert comparison.shared == 80 and comparison.baseline_only == comparison.current_only == 0
    assert [c.id for c in comparison.right_to_wrong] == ["case2", "case4"]
    assert [c.id for c in comparison.wrong_to_right] == ["case7"]
    change = comparison.right_to_wrong[0]
    assert change.item == "reply number 2" and change.expected == "no"
    assert change.baseline.predicted == "no" and change.current.predicted == "yes"
    entry = run.to_entry().to_dict()
    assert [c["id"] for c in entry["baseline"]["right_to_wrong"]] == ["case2", "case4"]


def test_cases_are_matched_by_item_hash_not_by_line(tmp_path: Path) -> None:
    base = make_run(wrong={0})
    for case in base.cases.values():
        case.line += 100
        case.id = "renamed-" + case.id
    run = make_run(wrong=set(), baseline=Baseline.read(write_report(tmp_path / "base.json", base)))
    assert [c.id for c in run.comparison().wrong_to_right] == ["case0"]


def test_a_baseline_of_other_cases_is_one_sentence(tmp_path: Path) -> None:
    other = make_run(wrong=set())
    for case in other.cases.values():
        case.item = "another " + case.item
    run = make_run(wrong=set(), settings=GateSettings(gate_on="bound"),
                   baseline=Baseline.read(write_report(tmp_path / "other.json", other)))  # fmt: skip
    with pytest.raises(ReqcheckError, match=r"shares no cases with this run.*same test files\.$"):
        run.evaluate(Gate("max_drop", "adapter", 0.0))
    assert "shares no cases" in run.to_entry().to_dict()["baseline"]["problem"]


def test_a_format_1_baseline_works_for_point_gates_and_says_paired_ones_need_a_newer_report(
    tmp_path: Path,
) -> None:
    old = {"report_format": 1, "passed": True,
           "adapters": [{"name": "polite", "modes": {"adapter": {"accuracy": 1.0}}, "gates": []}]}  # fmt: skip
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    point = drop_gate(path, wrong={5}, gate_on="point", threshold=0.02)
    assert point.passed is True and point.value == pytest.approx(1 / 80) and point.interval is None
    with pytest.raises(ReqcheckError, match="format 1 and holds no per-case records.*format 2"):
        drop_gate(path, wrong={5}, gate_on="bound")
    run = make_run(wrong=set(), baseline=Baseline.read(path))
    assert "format 1" in run.to_entry().to_dict()["baseline"]["problem"]


def test_a_baseline_without_this_adapter_names_the_ones_it_has(baseline: Path) -> None:
    run = make_run(wrong=set(), baseline=Baseline.read(baseline))
    run.name = "other"
    with pytest.raises(ReqcheckError, match=r"no entry for adapter 'other' \(it has 'polite'\)"):
        run.evaluate(Gate("max_drop", "adapter", 0.0))


def test_bound_gates_compare_the_lower_end_of_the_interval() -> None:
    # 74 of 80 right: 0.925, Wilson 95% interval about [0.846, 0.965]
    reference = binomtest(74, 80).proportion_ci(0.95, method="wilson")
    for gate_on, passed in (("point", True), ("bound", False)):
        run = make_run(wrong=set(range(6)), settings=GateSettings(gate_on=gate_on))
        gate = Gate("min_accuracy", "adapter", 0.9)
        run.evaluate(gate)
        assert gate.passed is passed and gate.value == pytest.approx(0.925)
        assert gate.interval == pytest.approx((reference.low, reference.high))
        assert gate.resolved is False and gate.cases_needed is not None and gate.cases_needed > 400


def test_recall_gate_uses_the_cases_of_its_label() -> None:
    run = make_run(wrong={1, 3, 5}, settings=GateSettings(gate_on="bound"))
    gate = Gate("min_recall", "adapter", 0.8, label="yes")
    run.evaluate(gate)
    assert (gate.value, gate.n) == (37 / 40, 40) and gate.passed is True


def test_gain_gate_is_paired_on_the_cases_both_modes_ran() -> None:
    run = make_run(wrong={1}, settings=GateSettings(gate_on="bound"))
    gate = Gate("min_gain", "adapter-judge", 0.3)
    run.evaluate(gate)
    # judge says yes everywhere: right on the 40 yes cases; the adapter is right on 79
    assert gate.value == pytest.approx((79 - 40) / 80) and gate.p_value < 1e-9 and gate.passed is True
    judge_only = make_run(wrong=set())
    for case in judge_only.cases.values():
        del case.predictions["adapter"]
    with pytest.raises(ReqcheckError, match=r"needs results in mode\(s\) adapter"):
        judge_only.evaluate(Gate("min_gain", "adapter-judge", 0.3))


def test_report_format_2_holds_per_case_records_intervals_and_calibration() -> None:
    report = build_report([make_run(wrong={3}, settings=GateSettings(confidence=0.9))]).to_dict()
    entry = report["adapters"][0]
    assert report["report_format"] == 2 and entry["confidence"] == 0.9 and entry["gate_on"] == "point"
    case = entry["cases"][3]
    assert case == {
        "id": "case3", "file": "t.reqcheck.jsonl", "line": 4, "item_hash": item_hash("reply number 3"),
        "item": "reply number 3", "expected": "yes",
        "modes": {"adapter": {"predicted": "no", "probabilities": {"no": 0.9, "yes": 0.1}},
                  "judge": {"predicted": "yes", "probabilities": {"yes": 0.7, "no": 0.3}}},
    }  # fmt: skip
    adapter = entry["modes"]["adapter"]
    reference = binomtest(79, 80).proportion_ci(0.9, method="wilson")
    assert adapter["accuracy_interval"] == pytest.approx([reference.low, reference.high])
    assert (
        adapter["per_label"]["yes"]["recall_interval"][0]
        < 39 / 40
        < adapter["per_label"]["yes"]["recall_interval"][1]
    )
    assert adapter["calibration"]["ece"] == pytest.approx(abs(79 / 80 - 0.9))


def test_items_can_be_kept_as_hashes_only_and_long_items_are_shortened() -> None:
    run = make_run(wrong=set(), n=2, settings=GateSettings(items="hash"))
    assert all(c.item is None and len(c.item_hash) == 64 for c in run.case_records())
    long = make_run(wrong=set(), n=1)
    long.cases[("t.reqcheck.jsonl", 1)].item = "x" * 500
    assert long.case_records()[0].item == "x" * 199 + "…"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"confidence": 1.0}, "strictly between 0 and 1"),
        ({"confidence": 0.0}, "strictly between 0 and 1"),
        ({"gate_on": "median"}, "point or bound"),
        ({"items": "none"}, "text or hash"),
    ],
)
def test_bad_settings_are_one_sentence(settings: dict, message: str) -> None:
    with pytest.raises(ReqcheckError, match=message):
        GateSettings(**settings)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"report_format": 3, "adapters": []}', "format 3, and this reqcheck reads formats 1, 2"),
        ("[1, 2]", "is not a reqcheck gate report"),
        ('{"report_format": 2}', "holds no list of adapter entries"),
        ("{", "is not valid JSON"),
    ],
)
def test_unreadable_reports_are_one_sentence(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(ReqcheckError, match=message):
        GateReport.read(path)


def test_both_report_formats_are_read(tmp_path: Path, baseline: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"report_format": 1, "passed": True, "adapters": []}))
    assert GateReport.read(old).report_format == 1
    assert GateReport.read(baseline).report_format == 2

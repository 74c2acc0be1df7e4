"""The gate table's measures: each gate compares its metric with its threshold, or says why it cannot."""

from __future__ import annotations

import pytest

from reqcheck.errors import ReqcheckError
from reqcheck.formats.gate_report import Gate, GateReport
from reqcheck.gating.baseline import Baseline
from reqcheck.gating.cases import Prediction
from reqcheck.gating.evaluation import AdapterRun


def gated_run(baseline_modes: dict) -> AdapterRun:
    """Ten cases: the adapter gets 9 right (recall 0.8 on yes, 1.0 on no), the judge 6; a format-1 baseline."""
    baseline = Baseline(
        "base.json",
        GateReport.from_dict({"report_format": 1, "adapters": [{"name": "a", "modes": baseline_modes}]}),
    )
    run = AdapterRun("a", "a", "sha256:0", {}, "alora", ["no", "yes"], ["yes"], baseline=baseline)
    for i in range(10):
        expected = "yes" if i < 5 else "no"
        adapter = "no" if i == 0 else expected
        judge = expected if i < 6 else "yes"
        for mode, said in (("adapter", adapter), ("judge", judge)):
            other = "no" if said == "yes" else "yes"
            run.record(id=f"c{i}", file="t.jsonl", line=i + 1, item=f"item {i}", expected=expected, mode=mode,
                       prediction=Prediction({said: 0.9, other: 0.1}, 0.01))  # fmt: skip
    return run


@pytest.mark.parametrize(
    ("gate", "value", "passed"),
    [
        (Gate("min_accuracy", "adapter", 0.9), 0.9, True),
        (Gate("min_accuracy", "adapter", 0.95), 0.9, False),
        (Gate("min_gain", "adapter", 0.3), 0.3, True),
        (Gate("min_gain", "adapter", 0.35), 0.3, False),
        (Gate("max_drop", "adapter", 0.05), 0.05, True),
        (Gate("max_drop", "adapter", 0.01), 0.05, False),
        (Gate("min_recall", "adapter", 0.8, label="yes"), 0.8, True),
        (Gate("min_recall", "adapter", 0.9, label="yes"), 0.8, False),
    ],
    ids=lambda p: p.name if isinstance(p, Gate) else str(p),
)
def test_gates_compare_their_metric_with_the_threshold(gate: Gate, value: float, passed: bool) -> None:
    gated_run({"adapter": {"accuracy": 0.95}}).evaluate(gate)
    assert gate.value == pytest.approx(value)
    assert gate.passed is passed


def test_max_drop_without_a_baseline_accuracy_is_one_clear_error() -> None:
    gate = Gate("max_drop", "adapter", 0.05)
    with pytest.raises(ReqcheckError, match="baseline report base.json has no adapter accuracy for a"):
        gated_run({}).evaluate(gate)
    assert gate.passed is False and "no adapter accuracy" in gate.problem

"""Classification metrics and percentiles: the arithmetic behind every mode summary of a gate report."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from reqcheck.gating.cases import Prediction
from reqcheck.gating.metrics import classification_metrics, mode_summary, percentile
from reqcheck.gating.stats import wilson_interval


def test_metrics_of_a_known_confusion_matrix() -> None:
    expected = ["yes", "yes", "yes", "no", "no", "maybe"]
    predicted = ["yes", "yes", "no", "no", "yes", "maybe"]
    metrics = asdict(classification_metrics(expected, predicted, ["maybe", "no", "yes"]))
    assert metrics["n"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion"] == {
        "labels": ["maybe", "no", "yes"],
        "matrix": [[1, 0, 0], [0, 1, 1], [0, 1, 2]],
    }
    yes = metrics["per_label"]["yes"]
    assert (yes["precision"], yes["recall"], yes["support"]) == (
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
        3,
    )
    assert yes["f1"] == pytest.approx(2 / 3)
    no = metrics["per_label"]["no"]
    assert (no["precision"], no["recall"], no["f1"]) == (0.5, 0.5, 0.5)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)


def test_a_label_never_predicted_has_zero_precision_not_a_division_error() -> None:
    metrics = asdict(classification_metrics(["yes", "no"], ["no", "no"], ["no", "yes"]))
    assert metrics["per_label"]["yes"] == {
        "precision": 0.0,
        "recall": 0.0,
        "recall_interval": list(wilson_interval(0, 1, 0.95)),
        "f1": 0.0,
        "support": 1,
    }
    assert metrics["accuracy"] == 0.5


def test_no_cases_gives_zero_accuracy_without_error() -> None:
    metrics = asdict(classification_metrics([], [], ["no", "yes"]))
    assert (metrics["n"], metrics["accuracy"], metrics["macro_f1"]) == (0, 0.0, 0.0)


@pytest.mark.parametrize(("q", "value"), [(0, 1.0), (1, 1.0), (50, 5.0), (90, 9.0), (95, 10.0), (100, 10.0)])
def test_percentile_is_nearest_rank(q: float, value: float) -> None:
    values = [7.0, 1.0, 3.0, 10.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]
    assert percentile(values, q) == value


def test_percentile_of_nothing_is_zero_and_of_one_value_is_that_value() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([0.25], 50) == percentile([0.25], 95) == 0.25


def test_mode_summary_reports_latency_in_ms_and_throughput() -> None:
    predictions = [
        Prediction({"yes": 0.9, "no": 0.1}, 0.010),
        Prediction({"yes": 0.2, "no": 0.8}, 0.030, True),
    ]
    summary = asdict(mode_summary(["yes", "yes"], predictions, ["no", "yes"]))
    assert summary["accuracy"] == 0.5
    assert summary["latency_ms"] == {"p50": pytest.approx(10.0), "p95": pytest.approx(30.0)}
    assert summary["items_per_s"] == pytest.approx(2 / 0.040)
    assert summary["cached"] == 1

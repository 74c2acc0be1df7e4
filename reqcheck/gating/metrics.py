"""The metrics of one mode's predictions: accuracy, macro-F1, per-label rates with intervals, the confusion
matrix, calibration, latency and throughput, as the gate report's `ModeSummary`."""

from __future__ import annotations

import math

from reqcheck.formats.gate_report import (
    Calibration,
    Confusion,
    LabelMetrics,
    Latency,
    ModeSummary,
    ReliabilityBin,
)
from reqcheck.gating import stats
from reqcheck.gating.cases import Prediction


def classification_metrics(
    expected: list[str], predicted: list[str], labels: list[str], confidence: float = 0.95
) -> ModeSummary:
    """Accuracy, macro-F1, per-label precision/recall/F1/support, Wilson intervals and the confusion matrix.

    Matrix rows are expected labels, columns predicted ones.
    """
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for truth, guess in zip(expected, predicted, strict=True):
        matrix[index[truth]][index[guess]] += 1
    per_label = {}
    for label, i in index.items():
        tp = matrix[i][i]
        predicted_as = sum(row[i] for row in matrix)
        support = sum(matrix[i])
        precision = tp / predicted_as if predicted_as else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        interval = list(stats.wilson_interval(tp, support, confidence))
        per_label[label] = LabelMetrics(precision, recall, interval, f1, support)
    present = [m for m in per_label.values() if m.support]
    correct = sum(t == g for t, g in zip(expected, predicted, strict=True))
    return ModeSummary(
        n=len(expected),
        accuracy=correct / max(len(expected), 1),
        accuracy_interval=list(stats.wilson_interval(correct, len(expected), confidence)),
        macro_f1=sum(m.f1 for m in present) / max(len(present), 1),
        per_label=per_label,
        confusion=Confusion(labels, matrix),
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def mode_summary(
    expected: list[str], predictions: list[Prediction], labels: list[str], confidence: float = 0.95
) -> ModeSummary:
    """Metrics of one mode with their intervals, its calibration, latency (p50/p95 per case, ms), throughput."""
    summary = classification_metrics(expected, [p.label for p in predictions], labels, confidence)
    calibration = stats.calibration(expected, [p.probabilities for p in predictions])
    bins = [ReliabilityBin(**b) for b in calibration["bins"]]
    summary.calibration = Calibration(calibration["ece"], calibration["brier"], bins)
    seconds = [p.seconds for p in predictions]
    total = sum(seconds)
    summary.latency_ms = Latency(percentile(seconds, 50) * 1000, percentile(seconds, 95) * 1000)
    summary.items_per_s = len(seconds) / total if total else None
    summary.cached = sum(p.cached for p in predictions)
    return summary

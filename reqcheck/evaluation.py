"""Batched evaluation of labelled cases, classification metrics, gates and the gate report (contract).

The pytest plugin collects cases and runs them; this module does the model calls (in batches, one
per mode and adapter), the arithmetic, and the report that `reqcheck upload` reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reqcheck.errors import ReqcheckError

REPORT_FORMAT = 1
MODES = ("adapter", "judge")


@dataclass
class Prediction:
    """One case's outcome: the label distribution and the model time it took (batch time / batch size)."""

    probabilities: dict[str, float]
    seconds: float
    cached: bool = False

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)


@dataclass
class Gate:
    """A threshold on a metric; `passed` is None until it is evaluated."""

    name: str
    mode: str
    threshold: float
    value: float | None = None
    passed: bool | None = None
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "mode": self.mode,
            "threshold": self.threshold,
            "value": self.value,
            "passed": self.passed,
        }
        if self.label is not None:
            data["label"] = self.label
        return data


def case_key(fingerprint: dict[str, Any], mode: str, item: str, requirement: str | None) -> str:
    """The cache key of one case: what the adapter is, how it renders, the mode and the input."""
    material = json.dumps([fingerprint, mode, item, requirement], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()


def predict(
    backend: Any,
    adapter: str,
    items: list[str],
    requirements: dict[str, list[str | None]],
    batch_size: int,
) -> dict[str, list[Prediction]]:
    """Label distributions of `items` in each mode (`adapter`, `judge`), one model call per batch and mode.

    Items are batched by length (little padding), and both modes run on a batch before the next one, so
    the judge reuses the contexts the adapter just cached. Results come back in the order of `items`.
    """
    labels = list(backend.adapters[adapter].manifest.labels)
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    out: dict[str, list[Prediction | None]] = {mode: [None] * len(items) for mode in requirements}
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        chunk = [items[i] for i in rows]
        for mode, reqs in requirements.items():
            batch_reqs = [reqs[i] for i in rows]
            began = time.perf_counter()
            if mode == "adapter":
                probs = backend.classify(adapter, chunk, batch_reqs)
            else:
                probs = backend.judge(chunk, batch_reqs, labels)
            each = (time.perf_counter() - began) / len(chunk)
            for i, p in zip(rows, probs, strict=True):
                out[mode][i] = Prediction(p, each)
    return {mode: [p for p in predictions if p is not None] for mode, predictions in out.items()}


def classification_metrics(expected: list[str], predicted: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label precision/recall/F1/support and the confusion matrix (rows: expected)."""
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
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    present = [m for m in per_label.values() if m["support"]]
    return {
        "n": len(expected),
        "accuracy": sum(t == g for t, g in zip(expected, predicted, strict=True)) / max(len(expected), 1),
        "macro_f1": sum(m["f1"] for m in present) / max(len(present), 1),
        "per_label": per_label,
        "confusion": {"labels": labels, "matrix": matrix},
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def mode_summary(expected: list[str], predictions: list[Prediction], labels: list[str]) -> dict[str, Any]:
    """Metrics of one mode plus its latency (p50/p95 per case, ms) and throughput."""
    summary = classification_metrics(expected, [p.label for p in predictions], labels)
    seconds = [p.seconds for p in predictions]
    total = sum(seconds)
    summary["latency_ms"] = {"p50": percentile(seconds, 50) * 1000, "p95": percentile(seconds, 95) * 1000}
    summary["items_per_s"] = len(seconds) / total if total else None
    summary["cached"] = sum(p.cached for p in predictions)
    return summary


def evaluate_gates(
    gates: list[Gate], modes: dict[str, dict[str, Any]], baseline: dict[str, Any] | None
) -> None:
    """Fill each gate's value and verdict from the mode summaries (and the baseline entry for max_drop)."""
    for gate in gates:
        if gate.name == "min_accuracy":
            gate.value = modes["adapter"]["accuracy"]
        elif gate.name == "min_gain":
            gate.value = modes["adapter"]["accuracy"] - modes["judge"]["accuracy"]
        elif gate.name == "max_drop":
            before = _adapter_accuracy(baseline)
            if before is None:
                raise ReqcheckError(
                    "The baseline report has no adapter accuracy for this adapter; regenerate it."
                )
            gate.value = before - modes["adapter"]["accuracy"]
        elif gate.name == "min_recall":
            gate.value = modes["adapter"]["per_label"][gate.label]["recall"]
        else:
            raise ReqcheckError(f"Unknown gate {gate.name!r}.")
        gate.passed = (
            gate.value <= gate.threshold if gate.name == "max_drop" else gate.value >= gate.threshold
        )


def _adapter_accuracy(entry: dict[str, Any] | None) -> float | None:
    """The adapter-mode accuracy of a report entry, if it has a number there."""
    modes = (entry or {}).get("modes")
    adapter = modes.get("adapter") if isinstance(modes, dict) else None
    accuracy = adapter.get("accuracy") if isinstance(adapter, dict) else None
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
        return None
    return float(accuracy)


def report_entries(report: dict[str, Any], path: str | Path) -> list[dict[str, Any]]:
    """The adapter entries of a gate report, checked for the shape `upload` and the baseline gate read."""
    entries = report.get("adapters")
    if not isinstance(entries, list):
        raise ReqcheckError(f"{path} has no list of 'adapters'; regenerate it with pytest --reqcheck-report.")
    for number, entry in enumerate(entries, start=1):
        modes = entry.get("modes", {}) if isinstance(entry, dict) else None
        gates = entry.get("gates", []) if isinstance(entry, dict) else None
        if not (
            isinstance(modes, dict)
            and all(isinstance(m, dict) for m in modes.values())
            and isinstance(gates, list)
            and all(isinstance(g, dict) for g in gates)
        ):
            raise ReqcheckError(
                f"{path}: adapter entry {number} is not an object with 'modes' and 'gates' as the plugin "
                "writes them; regenerate it with pytest --reqcheck-report."
            )
    return entries


def read_report(path: str | Path) -> dict[str, Any]:
    """A gate report written by the pytest plugin, or one clear error."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReqcheckError(
            f"Report {path} does not exist; write one with pytest --reqcheck-report {path}."
        ) from None
    except IsADirectoryError:
        raise ReqcheckError(
            f"Report {path} is a directory; pass the JSON file pytest --reqcheck-report wrote."
        ) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge integers
        raise ReqcheckError(
            f"Report {path} is not valid JSON ({str(exc).split(';')[0]}); regenerate it with pytest "
            "--reqcheck-report."
        ) from exc
    if not isinstance(report, dict) or report.get("report_format") != REPORT_FORMAT:
        raise ReqcheckError(f"{path} is not a reqcheck gate report of format {REPORT_FORMAT}; regenerate it.")
    return report


@dataclass
class AdapterReport:
    """The report entry of one adapter."""

    name: str
    path: str
    content_hash: str
    base_model: dict[str, Any]
    adapter_type: str
    labels: list[str]
    positive_labels: list[str]
    data: list[dict[str, Any]] = field(default_factory=list)
    modes: dict[str, dict[str, Any]] = field(default_factory=dict)
    gates: list[Gate] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "content_hash": self.content_hash,
            "base_model": self.base_model,
            "adapter_type": self.adapter_type,
            "labels": self.labels,
            "positive_labels": self.positive_labels,
            "data": self.data,
            "modes": self.modes,
            "gates": [g.to_dict() for g in self.gates],
            "passed": self.passed,
        }


def build_report(entries: list[AdapterReport]) -> dict[str, Any]:
    from reqcheck import __version__

    return {
        "report_format": REPORT_FORMAT,
        "reqcheck_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": all(e.passed for e in entries),
        "adapters": [e.to_dict() for e in entries],
    }

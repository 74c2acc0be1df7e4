"""Batched evaluation of labelled cases, their bookkeeping, metrics, gates and the gate report (contract).

The pytest plugin collects cases and runs them; this module does the model calls (in batches, one
per mode and adapter), keeps every case's predictions (`AdapterRun`), draws the metrics, intervals
and calibration from them, decides the gates (on the point value or on the interval's lower end;
paired gates by McNemar's exact test) and writes the report that `reqcheck upload`, the
`--reqcheck-baseline` of a later run and the HTML report read. Usable without pytest.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reqcheck import stats
from reqcheck.errors import ReqcheckError

REPORT_FORMAT = 2
READABLE_FORMATS = (1, 2)  # `reqcheck upload` and --reqcheck-baseline read both
MODES = ("adapter", "judge")
GATE_ON = ("point", "bound")
REPORT_ITEMS = ("text", "hash")
PAIRED_GATES = ("min_gain", "max_drop")
ITEM_CHARS = 200


@dataclass
class Prediction:
    """One case's outcome: the label distribution and the model time it took (batch time / batch size)."""

    probabilities: dict[str, float]
    seconds: float
    cached: bool = False

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)


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


def shorten(text: str, limit: int = ITEM_CHARS) -> str:
    """An item as the report shows it: at most `limit` characters, and always valid UTF-8."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


def item_hash(item: str) -> str:
    """What matches a case across runs without keeping its text: sha256 of the item."""
    return hashlib.sha256(item.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class GateSettings:
    """How verdicts are reached (point or bound, at which confidence) and what the report keeps of items."""

    confidence: float = 0.95
    gate_on: str = "point"
    items: str = "text"

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ReqcheckError(
                f"The confidence level must lie strictly between 0 and 1, not {self.confidence}; pass e.g. 0.95."
            )
        if self.gate_on not in GATE_ON:
            raise ReqcheckError(
                f"Gates are decided on point or bound, not {self.gate_on!r}; pass one of those."
            )
        if self.items not in REPORT_ITEMS:
            raise ReqcheckError(
                f"The report keeps items as text or hash, not {self.items!r}; pass one of those."
            )


@dataclass
class Case:
    """One labelled line and what each mode predicted for it: a per-case record of the report."""

    id: str
    file: str
    line: int
    item: str
    expected: str
    predictions: dict[str, Prediction] = field(default_factory=dict)

    def to_dict(self, items: str = "text") -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id, "file": self.file, "line": self.line}
        record["item_hash"] = item_hash(self.item)
        if items == "text":
            record["item"] = shorten(self.item)
        record["expected"] = self.expected
        record["modes"] = {
            mode: {
                "predicted": p.label,
                "probabilities": {label: round(v, 6) for label, v in p.probabilities.items()},
            }
            for mode, p in self.predictions.items()
        }
        return record


@dataclass
class Gate:
    """A threshold on a metric and, once evaluated, its value, interval, p-value (paired gates) and verdict.

    `on` says what the verdict compared with the threshold: the value (`point`) or the interval's lower
    end (`bound`). `cases_needed` estimates, when the interval holds the threshold, how many cases at
    the rates observed would put it outside (None: no number would).
    """

    name: str
    mode: str
    threshold: float
    label: str | None = None
    on: str = "point"
    value: float | None = None
    interval: tuple[float, float] | None = None
    p_value: float | None = None
    n: int | None = None
    cases_needed: int | None = None
    passed: bool | None = None
    problem: str | None = None  # why it could not be evaluated (then it fails)

    @property
    def paired(self) -> bool:
        return self.name in PAIRED_GATES

    @property
    def bound(self) -> float | None:
        return None if self.interval is None else self.interval[0]

    @property
    def resolved(self) -> bool | None:
        """Whether the interval leaves the threshold out, so more cases would not change the verdict."""
        if self.interval is None:
            return None
        low, high = self.interval
        return not low < self.threshold < high

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "mode": self.mode}
        if self.label is not None:
            data["label"] = self.label
        data.update(
            threshold=self.threshold,
            on=self.on,
            value=self.value,
            interval=None if self.interval is None else list(self.interval),
            bound=self.bound,
        )
        if self.paired:
            data["p_value"] = self.p_value
        data.update(n=self.n, resolved=self.resolved, cases_needed=self.cases_needed, passed=self.passed)
        if self.problem is not None:
            data["problem"] = self.problem
        return data


def classification_metrics(
    expected: list[str], predicted: list[str], labels: list[str], confidence: float = 0.95
) -> dict[str, Any]:
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
        per_label[label] = {
            "precision": precision,
            "recall": recall,
            "recall_interval": list(stats.wilson_interval(tp, support, confidence)),
            "f1": f1,
            "support": support,
        }
    present = [m for m in per_label.values() if m["support"]]
    correct = sum(t == g for t, g in zip(expected, predicted, strict=True))
    return {
        "n": len(expected),
        "accuracy": correct / max(len(expected), 1),
        "accuracy_interval": list(stats.wilson_interval(correct, len(expected), confidence)),
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


def mode_summary(
    expected: list[str], predictions: list[Prediction], labels: list[str], confidence: float = 0.95
) -> dict[str, Any]:
    """Metrics of one mode with their intervals, its calibration, latency (p50/p95 per case, ms), throughput."""
    summary = classification_metrics(expected, [p.label for p in predictions], labels, confidence)
    summary["calibration"] = stats.calibration(expected, [p.probabilities for p in predictions])
    seconds = [p.seconds for p in predictions]
    total = sum(seconds)
    summary["latency_ms"] = {"p50": percentile(seconds, 50) * 1000, "p95": percentile(seconds, 95) * 1000}
    summary["items_per_s"] = len(seconds) / total if total else None
    summary["cached"] = sum(p.cached for p in predictions)
    return summary


def _keyed(cases: list[dict[str, Any]], mode: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Case records that ran in `mode`, keyed by item hash, expected label and occurrence (for repeats)."""
    seen: Counter[tuple[str, str]] = Counter()
    keyed = {}
    for case in cases:
        if mode not in case.get("modes", {}):
            continue
        base = (case["item_hash"], case["expected"])
        keyed[(*base, seen[base])] = case
        seen[base] += 1
    return keyed


def _right(case: dict[str, Any], mode: str) -> bool:
    return case["modes"][mode]["predicted"] == case["expected"]


@dataclass
class Comparison:
    """This run's cases against a baseline report's, matched by item hash and expected label."""

    path: str
    shared: int
    baseline_only: int
    current_only: int
    right_to_wrong: list[dict[str, Any]]
    wrong_to_right: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "shared": self.shared,
            "baseline_only": self.baseline_only,
            "current_only": self.current_only,
            "right_to_wrong": self.right_to_wrong,
            "wrong_to_right": self.wrong_to_right,
        }


def compare_cases(
    baseline: list[dict[str, Any]], current: list[dict[str, Any]], path: str, mode: str = "adapter"
) -> Comparison:
    """The cases that went from right to wrong and from wrong to right in `mode`, in this run's order."""
    before, after = _keyed(baseline, mode), _keyed(current, mode)
    changes: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for key, now in after.items():
        was = before.get(key)
        if was is None or _right(was, mode) == _right(now, mode):
            continue
        change = {k: now[k] for k in ("id", "file", "line", "item_hash", "item", "expected") if k in now}
        change.update(baseline=was["modes"][mode], current=now["modes"][mode])
        changes[_right(now, mode)].append(change)
    shared = len(before.keys() & after.keys())
    return Comparison(path, shared, len(before) - shared, len(after) - shared, changes[False], changes[True])


@dataclass(frozen=True)
class Baseline:
    """An earlier gate report, read once, to compare this run with (max_drop, regressions)."""

    path: str
    report: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> Baseline:
        report = read_report(path)
        report_entries(report, path)
        return cls(str(path), report)

    def entry(self, adapter: str) -> dict[str, Any]:
        entries = self.report["adapters"]
        found = next((e for e in entries if e.get("name") == adapter), None)
        if found is None:
            names = ", ".join(repr(e.get("name")) for e in entries) or "none"
            raise ReqcheckError(
                f"The baseline report {self.path} has no entry for adapter {adapter!r} (it has {names}); "
                "pass a baseline written for this adapter."
            )
        return found

    def cases(self, adapter: str) -> list[dict[str, Any]]:
        """The adapter's per-case records, or why this baseline cannot be compared case by case."""
        if self.report["report_format"] < 2:
            raise ReqcheckError(
                f"The baseline report {self.path} is of format {self.report['report_format']} and holds no "
                "per-case records; regressions and paired gates need a baseline written by this reqcheck "
                f"(report format {REPORT_FORMAT})."
            )
        return self.entry(adapter).get("cases") or []


@dataclass
class AdapterRun:
    """One adapter's cases in this session, the statistics drawn from them, its gates and its report entry."""

    name: str
    path: str
    content_hash: str
    base_model: dict[str, Any]
    adapter_type: str
    labels: list[str]
    positive_labels: list[str]
    settings: GateSettings = field(default_factory=GateSettings)
    training: dict[str, Any] = field(default_factory=dict)
    baseline: Baseline | None = None
    data: list[dict[str, Any]] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    cases: dict[tuple[str, int], Case] = field(default_factory=dict)

    def record(
        self, *, id: str, file: str, line: int, item: str, expected: str, mode: str, prediction: Prediction
    ) -> None:
        """Keep one mode's prediction for a fixture line."""
        case = self.cases.setdefault((file, line), Case(id, file, line, item, expected))
        case.predictions[mode] = prediction

    def case_records(self) -> list[dict[str, Any]]:
        return [case.to_dict(self.settings.items) for case in self.cases.values()]

    def summaries(self) -> dict[str, dict[str, Any]]:
        """Per mode that ran: metrics with intervals, calibration and latency."""
        modes = {}
        for mode in MODES:
            ran = [c for c in self.cases.values() if mode in c.predictions]
            if ran:
                modes[mode] = mode_summary(
                    [c.expected for c in ran],
                    [c.predictions[mode] for c in ran],
                    self.labels,
                    self.settings.confidence,
                )
        return modes

    def comparison(self) -> Comparison:
        """This run against the baseline, case by case; one sentence when they cannot be compared."""
        if self.baseline is None:
            raise ReqcheckError("No baseline report was given; pass --reqcheck-baseline REPORT.")
        comparison = compare_cases(self.baseline.cases(self.name), self.case_records(), self.baseline.path)
        if not comparison.shared:
            raise ReqcheckError(
                f"The baseline report {self.baseline.path} shares no cases with this run (no item hash in "
                "common); pass a baseline written from the same test files."
            )
        return comparison

    def _counts(self, mode: str, label: str | None = None) -> tuple[int, int]:
        ran = [c for c in self.cases.values() if mode in c.predictions and label in (None, c.expected)]
        return sum(c.predictions[mode].label == c.expected for c in ran), len(ran)

    def evaluate(self, gate: Gate) -> None:
        """Fill the gate's value, interval, p-value and verdict from this run's cases (and the baseline).

        A gate that cannot be evaluated fails, keeps the reason, and raises it.
        """
        try:
            self._evaluate(gate)
        except ReqcheckError as exc:
            gate.passed, gate.problem = False, str(exc)
            raise

    def _evaluate(self, gate: Gate) -> None:
        confidence = self.settings.confidence
        gate.on = self.settings.gate_on
        needs = ["adapter", "judge"] if gate.name == "min_gain" else ["adapter"]
        missing = [m for m in needs if not any(m in c.predictions for c in self.cases.values())]
        if missing:
            raise ReqcheckError(
                f"Gate {gate.name} needs results in mode(s) {', '.join(missing)}; run with "
                "--reqcheck-validation both and without deselecting those cases."
            )
        if gate.name in ("min_accuracy", "min_recall"):
            correct, n = self._counts("adapter", gate.label)
            gate.value, gate.n = (correct / n if n else 0.0), n
            gate.interval = stats.wilson_interval(correct, n, confidence)
            if not gate.resolved:
                gate.cases_needed = stats.cases_needed_rate(gate.value, gate.threshold, n, confidence)
        elif gate.name == "min_gain":
            both = [c for c in self.cases.values() if {"adapter", "judge"} <= c.predictions.keys()]
            right = [(c.predictions["adapter"].label == c.expected, c.predictions["judge"].label == c.expected)
                     for c in both]  # fmt: skip
            wins = sum(a and not j for a, j in right)
            losses = sum(j and not a for a, j in right)
            self._paired(gate, stats.paired_difference(wins, losses, len(both), confidence), 1)
        elif gate.name == "max_drop":
            if self.baseline is None:
                raise ReqcheckError("Gate max_drop needs --reqcheck-baseline REPORT.")
            if self.baseline.report["report_format"] < 2 and gate.on == "point":
                before = _adapter_accuracy(self.baseline.entry(self.name))
                if before is None:
                    raise ReqcheckError(
                        f"The baseline report {self.baseline.path} has no adapter accuracy for {self.name}; "
                        "regenerate it."
                    )
                correct, n = self._counts("adapter")
                gate.value, gate.n = before - correct / n, n
            else:
                comparison = self.comparison()
                difference = stats.paired_difference(
                    len(comparison.wrong_to_right),
                    len(comparison.right_to_wrong),
                    comparison.shared,
                    confidence,
                )
                self._paired(gate, difference, -1)
        else:
            raise ReqcheckError(f"Unknown gate {gate.name!r}.")
        reference = gate.value if gate.on == "point" else gate.bound
        gate.passed = reference <= gate.threshold if gate.name == "max_drop" else reference >= gate.threshold

    def _paired(self, gate: Gate, difference: stats.PairedDifference, sign: int) -> None:
        """A paired gate's numbers; sign -1 turns 'after minus before' into a drop."""
        # (+ 0.0 turns the -0.0 of a negated zero into 0.0)
        gate.value, gate.p_value, gate.n = sign * difference.value + 0.0, difference.p_value, difference.n
        low, high = sign * difference.low + 0.0, sign * difference.high + 0.0
        gate.interval = (min(low, high), max(low, high))
        if not gate.resolved:
            gate.cases_needed = stats.cases_needed_paired(
                difference, sign * gate.threshold, self.settings.confidence
            )

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        entry = {
            "name": self.name,
            "path": self.path,
            "content_hash": self.content_hash,
            "base_model": self.base_model,
            "adapter_type": self.adapter_type,
            "labels": self.labels,
            "positive_labels": self.positive_labels,
            "training": self.training,
            "confidence": self.settings.confidence,
            "gate_on": self.settings.gate_on,
            "items": self.settings.items,
            "data": self.data,
            "modes": self.summaries(),
            "gates": [g.to_dict() for g in self.gates],
            "cases": self.case_records(),
        }
        if self.baseline is not None:
            try:
                entry["baseline"] = self.comparison().to_dict()
            except ReqcheckError as exc:
                entry["baseline"] = {"path": self.baseline.path, "problem": str(exc)}
        entry["passed"] = self.passed
        return entry


def _adapter_accuracy(entry: dict[str, Any] | None) -> float | None:
    """The adapter-mode accuracy of a report entry, if it has a number there."""
    modes = (entry or {}).get("modes")
    adapter = modes.get("adapter") if isinstance(modes, dict) else None
    accuracy = adapter.get("accuracy") if isinstance(adapter, dict) else None
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or not math.isfinite(accuracy):
        return None
    return float(accuracy)


def report_entries(report: dict[str, Any], path: str | Path) -> list[dict[str, Any]]:
    """The adapter entries of a report `read_report` returned, checked for the shape `upload` and the
    baseline gate read."""
    entries = report["adapters"]
    for number, entry in enumerate(entries, start=1):
        modes, gates = entry.get("modes", {}), entry.get("gates", [])
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
    """A gate report written by the pytest plugin (any format this reqcheck reads), or one clear error."""
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
    if not isinstance(report, dict) or "report_format" not in report:
        raise ReqcheckError(
            f"{path} is not a reqcheck gate report; regenerate it with pytest --reqcheck-report."
        )
    version = report["report_format"]
    if version not in READABLE_FORMATS:
        raise ReqcheckError(
            f"{path} is a gate report of format {version!r}, and this reqcheck reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}; regenerate it with pytest --reqcheck-report."
        )
    adapters = report.get("adapters")
    if not isinstance(adapters, list) or not all(isinstance(e, dict) for e in adapters):
        raise ReqcheckError(
            f"{path} holds no list of adapter entries; regenerate it with pytest --reqcheck-report."
        )
    return report


def build_report(runs: list[AdapterRun]) -> dict[str, Any]:
    """The gate report (contract, format 2): every adapter's metrics, gates and per-case records."""
    from reqcheck import __version__

    return {
        "report_format": REPORT_FORMAT,
        "reqcheck_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": all(run.passed for run in runs),
        "adapters": [run.to_dict() for run in runs],
    }

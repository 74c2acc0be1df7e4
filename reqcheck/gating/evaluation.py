"""Batched evaluation of labelled cases, their bookkeeping, metrics, gates and the gate report.

The pytest plugin collects cases and runs them; this module does the model calls (in batches, one
per mode and adapter), keeps every case's predictions (`AdapterRun`), draws the metrics, intervals
and calibration from them, decides the gates of `gates.GATES` (on the point value or on the interval's
lower end; paired gates by McNemar's exact test) and builds the `GateReport` that `reqcheck upload`,
the `--reqcheck-baseline` of a later run and the HTML report read. Usable without pytest.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reqcheck.errors import ReqcheckError
from reqcheck.formats.gate_report import (
    REPORT_FORMAT,
    AdapterEntry,
    BaselineComparison,
    Calibration,
    CaseMode,
    CaseRecord,
    Change,
    Confusion,
    DataFile,
    Gate,
    GateReport,
    LabelMetrics,
    Latency,
    ModeSummary,
    ReliabilityBin,
    ServedRecord,
    TrainingSummary,
)
from reqcheck.gating import stats
from reqcheck.gating.gates import gate_kind

MODES = ("adapter", "judge", "local")  # local: the in-process adapter, beside a served one
GATE_ON = ("point", "bound")
REPORT_ITEMS = ("text", "hash")
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


def item_label(item: str, items: str = "text") -> str:
    """An item as messages show it: quoted and shortened, or (`items="hash"`) only its hash."""
    return repr(shorten(item)) if items == "text" else f"sha256:{item_hash(item)[:16]}…"


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

    def to_record(self, items: str = "text") -> CaseRecord:
        return CaseRecord(
            id=self.id,
            file=self.file,
            line=self.line,
            item_hash=item_hash(self.item),
            expected=self.expected,
            item=shorten(self.item) if items == "text" else None,
            modes={
                mode: CaseMode(p.label, {label: round(v, 6) for label, v in p.probabilities.items()})
                for mode, p in self.predictions.items()
            },
        )


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


def _keyed(cases: list[CaseRecord], mode: str) -> dict[tuple[str, str, int], CaseRecord]:
    """Case records that ran in `mode`, keyed by item hash, expected label and occurrence (for repeats)."""
    seen: Counter[tuple[str, str]] = Counter()
    keyed = {}
    for case in cases:
        if mode not in case.modes:
            continue
        base = (case.item_hash, case.expected)
        keyed[(*base, seen[base])] = case
        seen[base] += 1
    return keyed


def compare_cases(
    baseline: list[CaseRecord], current: list[CaseRecord], path: str, mode: str = "adapter"
) -> BaselineComparison:
    """The cases that went from right to wrong and from wrong to right in `mode`, in this run's order."""
    before, after = _keyed(baseline, mode), _keyed(current, mode)
    changes: dict[bool, list[Change]] = {True: [], False: []}
    for key, now in after.items():
        was = before.get(key)
        if was is None or was.right(mode) == now.right(mode):
            continue
        change = Change(now.id, now.file, now.line, now.item_hash, now.expected, was.modes[mode], now.modes[mode],
                        now.item)  # fmt: skip
        changes[now.right(mode)].append(change)
    shared = len(before.keys() & after.keys())
    return BaselineComparison(
        path, shared, len(before) - shared, len(after) - shared, changes[False], changes[True]
    )


@dataclass(frozen=True)
class Baseline:
    """An earlier gate report, read once, to compare this run with (max_drop, regressions)."""

    path: str
    report: GateReport

    @classmethod
    def read(cls, path: str | Path) -> Baseline:
        return cls(str(path), GateReport.read(path))

    def entry(self, adapter: str) -> AdapterEntry:
        found = self.report.entry(adapter)
        if found is None:
            names = ", ".join(repr(e.name) for e in self.report.adapters) or "none"
            raise ReqcheckError(
                f"The baseline report {self.path} has no entry for adapter {adapter!r} (it has {names}); "
                "pass a baseline written for this adapter."
            )
        return found

    def cases(self, adapter: str) -> list[CaseRecord]:
        """The adapter's per-case records, or why this baseline cannot be compared case by case."""
        if self.report.report_format < 2:
            raise ReqcheckError(
                f"The baseline report {self.path} is of format {self.report.report_format} and holds no "
                "per-case records; regressions and paired gates need a baseline written by this reqcheck "
                f"(report format {REPORT_FORMAT})."
            )
        return self.entry(adapter).cases


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
    training: TrainingSummary = field(default_factory=TrainingSummary)
    baseline: Baseline | None = None
    data: list[DataFile] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    cases: dict[tuple[str, int], Case] = field(default_factory=dict)
    collected: int | None = None  # case items (line and mode) collected; None: not counted
    served: ServedRecord | None = None  # the server, when adapter (and judge) mode ran through one
    errors: list[str] = field(default_factory=list)  # one reason per case a server could not check

    def record(
        self, *, id: str, file: str, line: int, item: str, expected: str, mode: str, prediction: Prediction
    ) -> None:
        """Keep one mode's prediction for a fixture line."""
        case = self.cases.setdefault((file, line), Case(id, file, line, item, expected))
        case.predictions[mode] = prediction

    def case_records(self) -> list[CaseRecord]:
        return [case.to_record(self.settings.items) for case in self.cases.values()]

    def summaries(self) -> dict[str, ModeSummary]:
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

    def comparison(self) -> BaselineComparison:
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

    def counts(self, mode: str, label: str | None = None) -> tuple[int, int]:
        """(right, cases) in `mode`, over every case or the cases of one expected label."""
        ran = [c for c in self.cases.values() if mode in c.predictions and label in (None, c.expected)]
        return sum(c.predictions[mode].label == c.expected for c in ran), len(ran)

    def evaluate(self, gate: Gate) -> None:
        """Fill the gate's value, interval, p-value and verdict from this run's cases (and the baseline).

        A gate that cannot be evaluated fails, keeps the reason, and raises it.
        """
        try:
            kind = gate_kind(gate.name)
            gate.on = self.settings.gate_on
            if self.errors:
                raise ReqcheckError(
                    f"{len(self.errors)} case(s) could not be checked, so gate {gate.name} would judge only "
                    f"part of the suite: {self.errors[0]}"
                )
            missing = [m for m in kind.modes if not any(m in c.predictions for c in self.cases.values())]
            if missing:
                how = (
                    "--reqcheck-endpoint URL --reqcheck-compare"
                    if "local" in missing
                    else "--reqcheck-validation both"
                )
                raise ReqcheckError(
                    f"Gate {gate.name} needs results in mode(s) {', '.join(missing)}; run with {how} and "
                    "without deselecting those cases."
                )
            if kind.needs_baseline and self.baseline is None:
                raise ReqcheckError(f"Gate {gate.name} needs --reqcheck-baseline REPORT.")
            MEASURES[kind.measure](self, gate)
            reference = gate.value if gate.on == "point" else gate.bound
            gate.passed = kind.passes(reference, gate.threshold)
        except ReqcheckError as exc:
            gate.passed, gate.problem = False, str(exc)
            raise

    def paired(self, gate: Gate, difference: stats.PairedDifference, sign: int) -> None:
        """A paired gate's numbers; sign -1 turns 'after minus before' into a drop."""
        gate.paired = True
        # (+ 0.0 turns the -0.0 of a negated zero into 0.0)
        gate.value, gate.p_value, gate.n = sign * difference.value + 0.0, difference.p_value, difference.n
        low, high = sign * difference.low + 0.0, sign * difference.high + 0.0
        gate.interval = [min(low, high), max(low, high)]
        if not gate.resolved:
            gate.cases_needed = stats.cases_needed_paired(
                difference, sign * gate.threshold, self.settings.confidence
            )

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_entry(self) -> AdapterEntry:
        baseline = None
        if self.baseline is not None:
            try:
                baseline = self.comparison()
            except ReqcheckError as exc:
                baseline = BaselineComparison(self.baseline.path, problem=str(exc))
        return AdapterEntry(
            name=self.name,
            path=self.path,
            content_hash=self.content_hash,
            base_model=self.base_model,
            adapter_type=self.adapter_type,
            labels=self.labels,
            positive_labels=self.positive_labels,
            training=self.training,
            confidence=self.settings.confidence,
            gate_on=self.settings.gate_on,
            items=self.settings.items,
            data=self.data,
            modes=self.summaries(),
            gates=self.gates,
            cases=self.case_records(),
            baseline=baseline,
            passed=self.passed,
            collected=self.collected,
            ran=self.ran,
            partial=self.collected is not None and self.ran < self.collected,
            served=self.served,
        )

    @property
    def ran(self) -> int:
        """Case items (line and mode) that ran."""
        return sum(len(case.predictions) for case in self.cases.values())


def _rate(run: AdapterRun, gate: Gate) -> None:
    """A share of right cases in adapter mode (of one label's cases for a per-label gate), Wilson interval."""
    confidence = run.settings.confidence
    correct, n = run.counts("adapter", gate.label)
    gate.value, gate.n = (correct / n if n else 0.0), n
    gate.interval = list(stats.wilson_interval(correct, n, confidence))
    if not gate.resolved:
        gate.cases_needed = stats.cases_needed_rate(gate.value, gate.threshold, n, confidence)


def _gain(run: AdapterRun, gate: Gate) -> None:
    """Adapter accuracy minus judge accuracy on the cases both ran, paired by case."""
    both = [c for c in run.cases.values() if {"adapter", "judge"} <= c.predictions.keys()]
    right = [
        (c.predictions["adapter"].label == c.expected, c.predictions["judge"].label == c.expected)
        for c in both
    ]
    wins = sum(a and not j for a, j in right)
    losses = sum(j and not a for a, j in right)
    run.paired(gate, stats.paired_difference(wins, losses, len(both), run.settings.confidence), 1)


def _drop(run: AdapterRun, gate: Gate) -> None:
    """Baseline accuracy minus this run's, paired by case (a format-1 baseline: the two accuracies)."""
    baseline = run.baseline
    if baseline.report.report_format < 2 and gate.on == "point":
        before = baseline.entry(run.name).adapter_accuracy
        if before is None:
            raise ReqcheckError(
                f"The baseline report {baseline.path} has no adapter accuracy for {run.name}; regenerate it."
            )
        correct, n = run.counts("adapter")
        gate.value, gate.n = before - correct / n, n
        return
    comparison = run.comparison()
    difference = stats.paired_difference(
        len(comparison.wrong_to_right),
        len(comparison.right_to_wrong),
        comparison.shared,
        run.settings.confidence,
    )
    run.paired(gate, difference, -1)


def _compared(run: AdapterRun) -> list[Case]:
    return [c for c in run.cases.values() if {"adapter", "local"} <= c.predictions.keys()]


def _agreement(run: AdapterRun, gate: Gate) -> None:
    """Share of cases whose served label (adapter mode) equals the in-process one (local), Wilson interval."""
    both = _compared(run)
    same = sum(c.predictions["adapter"].label == c.predictions["local"].label for c in both)
    gate.value, gate.n = (same / len(both) if both else 0.0), len(both)
    gate.interval = list(stats.wilson_interval(same, len(both), run.settings.confidence))


def _score_diff(run: AdapterRun, gate: Gate) -> None:
    """The largest difference between a served and an in-process label probability, over cases and labels."""
    both = _compared(run)
    gate.n = len(both)
    gate.value = max(
        (
            abs(c.predictions["adapter"].probabilities[label] - c.predictions["local"].probabilities[label])
            for c in both
            for label in run.labels
        ),
        default=0.0,
    )


MEASURES: dict[str, Callable[[AdapterRun, Gate], None]] = {
    "rate": _rate,
    "gain": _gain,
    "drop": _drop,
    "agreement": _agreement,
    "score_diff": _score_diff,
}


def build_report(runs: list[AdapterRun]) -> GateReport:
    """The gate report (format 2): every adapter's metrics, gates and per-case records."""
    from reqcheck import __version__

    return GateReport(
        report_format=REPORT_FORMAT,
        reqcheck_version=__version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        passed=all(run.passed for run in runs),
        adapters=[run.to_entry() for run in runs],
    )

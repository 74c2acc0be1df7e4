"""One adapter's run in a gate session: its cases' predictions, its gates' verdicts and its report entry.

The pytest plugin runs the model and hands each case's `Prediction` to `AdapterRun.record`; this module
keeps them, draws each mode's metrics (`metrics`), decides the gates of `gates.GATES` (on the point
value or on the interval's lower end; each gate measured by its entry there), compares with a baseline
report (`baseline`) and builds the `GateReport` that `reqcheck upload`, the `--reqcheck-baseline` of a
later run and the HTML report read. It calls no model: usable without pytest or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from reqcheck.errors import ReqcheckError
from reqcheck.formats.gate_report import (
    REPORT_FORMAT,
    AdapterEntry,
    BaselineComparison,
    CaseRecord,
    DataFile,
    Gate,
    GateReport,
    ModeSummary,
    ServedRecord,
    TrainingSummary,
)
from reqcheck.gating.baseline import Baseline
from reqcheck.gating.cases import Case, Prediction
from reqcheck.gating.gates import GateSettings, gate_kind
from reqcheck.gating.metrics import mode_summary

MODES = ("adapter", "judge", "local")  # local: the in-process adapter, beside a served one


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
    # mode -> one reason per case of that mode that could not be checked
    errors: dict[str, list[str]] = field(default_factory=dict)

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
        return self.baseline.compare(self.name, self.case_records())

    def counts(self, mode: str, label: str | None = None) -> tuple[int, int]:
        """(right, cases) in `mode`, over every case or the cases of one expected label."""
        ran = [c for c in self.cases.values() if mode in c.predictions and label in (None, c.expected)]
        return sum(c.right(mode) for c in ran), len(ran)

    def evaluate(self, gate: Gate) -> None:
        """Fill the gate's value, interval, p-value and verdict from this run's cases (and the baseline).

        A gate that cannot be evaluated fails, keeps the reason, and raises it.
        """
        try:
            kind = gate_kind(gate.name)
            gate.on = self.settings.gate_on
            self._check_evaluable(gate, kind.modes, kind.needs_baseline)
            kind.measure(self, gate)
            reference = gate.value if gate.on == "point" else gate.bound
            gate.passed = kind.passes(reference, gate.threshold)
        except ReqcheckError as exc:
            gate.passed, gate.problem = False, str(exc)
            raise

    def _check_evaluable(self, gate: Gate, modes: tuple[str, ...], needs_baseline: bool) -> None:
        """Refuse a gate that would judge part of the suite, lacks a mode's results, or lacks its baseline.

        Only the gate's own modes count: the judge's failure leaves a gate on the adapter's cases alone.
        """
        unchecked = [reason for mode in modes for reason in self.errors.get(mode, [])]
        if unchecked:
            raise ReqcheckError(
                f"{len(unchecked)} case(s) could not be checked, so gate {gate.name} would judge only "
                f"part of the suite: {unchecked[0]}"
            )
        missing = [m for m in modes if not any(m in c.predictions for c in self.cases.values())]
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
        if needs_baseline and self.baseline is None:
            raise ReqcheckError(f"Gate {gate.name} needs --reqcheck-baseline REPORT.")

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def ran(self) -> int:
        """Case items (line and mode) that ran."""
        return sum(len(case.predictions) for case in self.cases.values())

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

"""The table of gates: each gate declared once, and everything about it derived from its entry.

The plugin's options and ini keys, the check of their values, what a gate needs to be evaluated, how it
is measured, which way it compares and how the text and HTML reports show it all come from `GATES`.
Adding a gate is one entry here, with its measure (a function below) when it measures something new.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from reqcheck.errors import ReqcheckError
from reqcheck.gating import stats

if TYPE_CHECKING:  # the plugin reads this table at every pytest start-up: it imports no more than it runs
    from reqcheck.formats.gate_report import BaselineComparison, Gate
    from reqcheck.gating.baseline import Baseline
    from reqcheck.gating.cases import Case

GATE_ON = ("point", "bound")
REPORT_ITEMS = ("text", "hash")


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


class Measured(Protocol):
    """What a gate's measure reads of one adapter's run (`evaluation.AdapterRun`)."""

    name: str
    labels: list[str]
    settings: GateSettings
    baseline: Baseline | None
    cases: dict[tuple[str, int], Case]

    def counts(self, mode: str, label: str | None = None) -> tuple[int, int]: ...

    def comparison(self) -> BaselineComparison: ...


Measure = Callable[["Measured", "Gate"], None]


@dataclass(frozen=True)
class GateKind:
    """One kind of gate.

    `low`/`high` bound its threshold; `measure` fills a gate's value (and interval) from a run; `title`
    is how reports name the value; `at_most` says the value must not exceed the threshold (else it
    must reach it); `modes` are the validation modes it needs results in; `per_label` makes one gate per
    label that has cases; `paired` says it compares two sets of predictions case by case (McNemar),
    rather than a rate against a threshold.
    """

    name: str
    help: str
    low: float
    high: float
    measure: Measure
    title: str
    at_most: bool = False
    needs_baseline: bool = False
    modes: tuple[str, ...] = ("adapter",)
    per_label: bool = False
    paired: bool = False

    @property
    def option(self) -> str:
        return f"--reqcheck-{self.name.replace('_', '-')}"

    @property
    def mode(self) -> str:
        """The mode a gate records: the mode it measures, or `adapter-judge` for a comparison of two."""
        return "-".join(self.modes)

    @property
    def op(self) -> str:
        return "<=" if self.at_most else ">="

    @property
    def sign(self) -> str:
        return "≤" if self.at_most else "≥"

    def passes(self, reference: float, threshold: float) -> bool:
        return reference <= threshold if self.at_most else reference >= threshold

    def check_threshold(self, value: float) -> None:
        if not self.low <= value <= self.high:
            raise ReqcheckError(
                f"{self.option} {value} is outside [{self.low:g}, {self.high:g}]; pass a fraction such as 0.9."
            )


# --- the measures -------------------------------------------------------------------------------------


def _rate(run: Measured, gate: Gate) -> None:
    """A share of right cases in adapter mode (of one label's cases for a per-label gate), Wilson interval."""
    confidence = run.settings.confidence
    correct, n = run.counts("adapter", gate.label)
    gate.value, gate.n = (correct / n if n else 0.0), n
    gate.interval = list(stats.wilson_interval(correct, n, confidence))
    if not gate.resolved:
        gate.cases_needed = stats.cases_needed_rate(gate.value, gate.threshold, n, confidence)


def _paired(gate: Gate, difference: stats.PairedDifference, sign: int, confidence: float) -> None:
    """A paired gate's numbers; sign -1 turns 'after minus before' into a drop."""
    gate.paired = True
    # (+ 0.0 turns the -0.0 of a negated zero into 0.0)
    gate.value, gate.p_value, gate.n = sign * difference.value + 0.0, difference.p_value, difference.n
    low, high = sign * difference.low + 0.0, sign * difference.high + 0.0
    gate.interval = [min(low, high), max(low, high)]
    if not gate.resolved:
        gate.cases_needed = stats.cases_needed_paired(difference, sign * gate.threshold, confidence)


def _gain(run: Measured, gate: Gate) -> None:
    """Adapter accuracy minus judge accuracy on the cases both ran, paired by case."""
    both = [c for c in run.cases.values() if {"adapter", "judge"} <= c.predictions.keys()]
    right = [(c.right("adapter"), c.right("judge")) for c in both]
    wins = sum(a and not j for a, j in right)
    losses = sum(j and not a for a, j in right)
    confidence = run.settings.confidence
    _paired(gate, stats.paired_difference(wins, losses, len(both), confidence), 1, confidence)


def _drop(run: Measured, gate: Gate) -> None:
    """Baseline accuracy minus this run's, paired by case (a format-1 baseline: the two accuracies)."""
    baseline = run.baseline  # evaluation refuses a gate that needs_baseline without one
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
    confidence = run.settings.confidence
    difference = stats.paired_difference(
        len(comparison.wrong_to_right), len(comparison.right_to_wrong), comparison.shared, confidence
    )
    _paired(gate, difference, -1, confidence)


def _compared(run: Measured) -> list[Case]:
    return [c for c in run.cases.values() if {"adapter", "local"} <= c.predictions.keys()]


def _agreement(run: Measured, gate: Gate) -> None:
    """Share of cases whose served label (adapter mode) equals the in-process one (local), Wilson interval."""
    both = _compared(run)
    same = sum(c.predictions["adapter"].label == c.predictions["local"].label for c in both)
    gate.value, gate.n = (same / len(both) if both else 0.0), len(both)
    gate.interval = list(stats.wilson_interval(same, len(both), run.settings.confidence))


def _score_diff(run: Measured, gate: Gate) -> None:
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


# --- the table ----------------------------------------------------------------------------------------

GATES = (
    GateKind("min_accuracy", "adapter accuracy must be at least this", 0.0, 1.0, _rate, "accuracy"),
    GateKind(
        "min_gain",
        "adapter accuracy minus judge accuracy must be at least this",
        -1.0,
        1.0,
        _gain,
        "gain over the judge",
        modes=("adapter", "judge"),
        paired=True,
    ),
    GateKind(
        "max_drop",
        "adapter accuracy may drop at most this below the baseline report's",
        0.0,
        1.0,
        _drop,
        "drop from the baseline",
        at_most=True,
        needs_baseline=True,
        paired=True,
    ),
    GateKind(
        "min_recall",
        "every label's recall (adapter mode) must be at least this",
        0.0,
        1.0,
        _rate,
        "recall",
        per_label=True,
    ),
    GateKind(
        "min_agreement",
        "share of cases whose served label equals the in-process one (--reqcheck-compare) must be at least this",
        0.0,
        1.0,
        _agreement,
        "agreement with in-process",
        modes=("adapter", "local"),
    ),
    GateKind(
        "max_score_diff",
        "largest |served - in-process| label probability over the cases (--reqcheck-compare) may be at most this",
        0.0,
        1.0,
        _score_diff,
        "largest score difference from in-process",
        at_most=True,
        modes=("adapter", "local"),
    ),
)
KINDS = {kind.name: kind for kind in GATES}


def gate_kind(name: str) -> GateKind:
    """The table entry of a gate, or one sentence naming the gates there are."""
    try:
        return KINDS[name]
    except KeyError:
        raise ReqcheckError(f"Unknown gate {name!r}; the gates are {', '.join(KINDS)}.") from None


def op(name: str, symbol: bool = False) -> str:
    """How a report shows a gate's comparison (`>=`, or `≥` with `symbol`); `?` for a gate it does not know."""
    kind = KINDS.get(name)
    if kind is None:
        return "?"
    return kind.sign if symbol else kind.op

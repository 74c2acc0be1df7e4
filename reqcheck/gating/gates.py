"""The table of gates: each gate declared once, and everything about it derived from its entry.

The plugin's options and ini keys, the check of their values, what a gate needs to be evaluated, how it
is measured, which way it compares and how the text and HTML reports show it all come from `GATES`.
Adding a gate is one entry here (with a measure in `evaluation.MEASURES` if it measures something new).
"""

from __future__ import annotations

from dataclasses import dataclass

from reqcheck.errors import ReqcheckError


@dataclass(frozen=True)
class GateKind:
    """One kind of gate.

    `low`/`high` bound its threshold; `at_most` says the value must not exceed the threshold (else it
    must reach it); `modes` are the validation modes it needs results in; `per_label` makes one gate per
    label that has cases; `measure` names how evaluation computes its value; `title` is how reports
    name the value.
    """

    name: str
    help: str
    low: float
    high: float
    measure: str
    title: str
    at_most: bool = False
    needs_baseline: bool = False
    modes: tuple[str, ...] = ("adapter",)
    per_label: bool = False

    @property
    def option(self) -> str:
        return f"--reqcheck-{self.name.replace('_', '-')}"

    @property
    def mode(self) -> str:
        """The mode a gate records: the mode it measures, or `adapter-judge` for a comparison of two."""
        return "-".join(self.modes)

    @property
    def paired(self) -> bool:
        """Compares two sets of predictions case by case (McNemar), rather than a rate against a threshold."""
        return self.measure in ("gain", "drop")

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


GATES = (
    GateKind(
        "min_accuracy", "adapter accuracy must be at least this", 0.0, 1.0, measure="rate", title="accuracy"
    ),
    GateKind(
        "min_gain",
        "adapter accuracy minus judge accuracy must be at least this",
        -1.0,
        1.0,
        measure="gain",
        title="gain over the judge",
        modes=("adapter", "judge"),
    ),
    GateKind(
        "max_drop",
        "adapter accuracy may drop at most this below the baseline report's",
        0.0,
        1.0,
        measure="drop",
        title="drop from the baseline",
        at_most=True,
        needs_baseline=True,
    ),
    GateKind(
        "min_recall",
        "every label's recall (adapter mode) must be at least this",
        0.0,
        1.0,
        measure="rate",
        title="recall",
        per_label=True,
    ),
    GateKind(
        "min_agreement",
        "share of cases whose served label equals the in-process one (--reqcheck-compare) must be at least this",
        0.0,
        1.0,
        measure="agreement",
        title="agreement with in-process",
        modes=("adapter", "local"),
    ),
    GateKind(
        "max_score_diff",
        "largest |served - in-process| label probability over the cases (--reqcheck-compare) may be at most this",
        0.0,
        1.0,
        measure="score_diff",
        title="largest score difference from in-process",
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

"""What gating receives: each case's prediction per mode, and how a case's item is shown or hashed.

The pytest plugin (or any caller) runs the model and hands gating `Prediction`s; gating never calls a
backend itself, so it stays torch-free and usable on predictions from anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from reqcheck.formats.gate_report import CaseMode, CaseRecord

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

    def right(self, mode: str) -> bool:
        """Whether `mode` predicted the expected label (the case must have run in `mode`)."""
        return self.predictions[mode].label == self.expected

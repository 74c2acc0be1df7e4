"""An earlier gate report as the baseline of this run: read once, and compared with it case by case.

Cases are matched by item hash and expected label (and occurrence, for repeats), so moved, renamed or
added fixture lines do not matter.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import as_label
from reqcheck.formats.gate_report import (
    REPORT_FORMAT,
    AdapterEntry,
    BaselineComparison,
    CaseRecord,
    Change,
    GateReport,
)


def _keyed(cases: list[CaseRecord], mode: str) -> dict[tuple[str, str, int], CaseRecord]:
    """Case records that ran in `mode`, keyed by item hash, expected label (as it reads: a report may
    spell it in another Unicode form) and occurrence (for repeats)."""
    seen: Counter[tuple[str, str]] = Counter()
    keyed = {}
    for case in cases:
        if mode not in case.modes:
            continue
        base = (case.item_hash, as_label(case.expected))
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

    def compare(self, adapter: str, current: list[CaseRecord]) -> BaselineComparison:
        """This run's records against the baseline's; one sentence when they share no case."""
        comparison = compare_cases(self.cases(adapter), current, self.path)
        if not comparison.shared:
            raise ReqcheckError(
                f"The baseline report {self.path} shares no cases with this run (no item hash in "
                "common); pass a baseline written from the same test files."
            )
        return comparison

"""The plugin's test items: a fixture file collects one case per line and mode, a case compares its
prediction with its label, and a gate item decides one gate once every case has run.

`Suite` is what they share in a session, kept in the config's stash the way `_pytest.junitxml` keeps its
own object; failures are their one-line message (`ReqcheckFailure`), without a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_reqcheck.adapters import SessionAdapters
from pytest_reqcheck.options import SessionOptions
from pytest_reqcheck.runner import PredictionRunner
from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import Example
from reqcheck.formats.gate_report import DataFile, Gate


@dataclass
class Suite:
    """A gate session's options, adapters and predictions, and what collection found: files and gates."""

    options: SessionOptions
    adapters: SessionAdapters
    runner: PredictionRunner
    files: dict[str, list[DataFile]] = field(default_factory=dict)
    gates: list[tuple[str, Gate]] = field(default_factory=list)
    ungated: dict[str, list[str]] = field(default_factory=dict)  # adapter -> `gate[label]` without cases


suite_key = pytest.StashKey[Suite]()


class ReqcheckFailure(Exception):
    """A bad fixture file, a wrong label or a missed gate: reported as its message, without a traceback."""


class ReqcheckFile(pytest.File):
    """A JSONL fixture file: one case per line and mode; bad lines are one collection error."""

    def collect(self):  # type: ignore[override]
        from reqcheck.formats.data import fingerprint, parse_lines, spelled_as

        suite = self.config.stash[suite_key]
        examples, problems = parse_lines(self.path)
        if problems:
            raise ReqcheckFailure(
                f"{len(problems)} bad line(s) in {self.path}:\n" + "\n".join("  " + p for p in problems)
            )
        by_adapter: dict[str, list[Example]] = {}
        for example in examples:
            try:
                adapter = suite.adapters.route(example.requirement)
            except ReqcheckError as exc:
                raise ReqcheckFailure(f"{self.path}:{example.line}: {exc}") from None
            run = suite.adapters.by_name[adapter].run
            example = dataclasses.replace(
                example, label=spelled_as(example.label, run.labels) or example.label
            )
            by_adapter.setdefault(adapter, []).append(example)
            run.collected = (run.collected or 0) + len(suite.options.modes)
            name = example.id or f"line{example.line}"
            for mode in suite.options.modes:
                yield ReqcheckCase.from_parent(
                    self, name=f"{name}[{mode}]", example=example, mode=mode, adapter=adapter
                )
        suite.files[str(self.path)] = [
            DataFile(str(self.path), a, fingerprint(e), len(e)) for a, e in by_adapter.items()
        ]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, ReqcheckFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class ReqcheckCase(pytest.Item):
    """One labelled line run in one mode: passes when the predicted label equals the expected one."""

    def __init__(self, *, example: Example, mode: str, adapter: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.example, self.mode, self.adapter = example, mode, adapter
        self.add_marker("reqcheck")

    @property
    def suite(self) -> Suite:
        return self.config.stash[suite_key]

    @functools.cached_property
    def key(self) -> str:
        return self.suite.runner.key(self.adapter, self.mode, self.example)

    def runtest(self) -> None:
        from reqcheck.gating.cases import item_label

        run = self.suite.adapters.by_name[self.adapter].run
        if self.example.label not in run.labels:
            raise ReqcheckFailure(
                f"label {self.example.label!r} is not one of adapter {self.adapter}'s labels {run.labels}"
            )
        try:
            prediction = self.suite.runner.prediction(self)
        except ReqcheckError as exc:  # a served check that failed: the server's one-sentence reason
            raise ReqcheckFailure(str(exc)) from None
        run.record(
            id=str(self.example.id or f"line{self.example.line}"),
            file=self.nodeid.split("::", 1)[0],
            line=self.example.line,
            item=self.example.item,
            expected=self.example.label,
            mode=self.mode,
            prediction=prediction,
        )
        if prediction.label == self.example.label:
            return
        message = (
            f"{self.mode}: expected {self.example.label!r}, got {prediction.label!r} "
            f"(p={prediction.probabilities[prediction.label]:.3f}; p({self.example.label})="
            f"{prediction.probabilities[self.example.label]:.3f}) for item "
            f"{item_label(self.example.item, self.suite.options.settings.items)}"
        )
        if self.suite.options.strict:
            raise ReqcheckFailure(message)
        pytest.xfail(message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        # a wrong label is the case's whole story: no traceback (formatting one costs ~25 ms per case)
        if isinstance(excinfo.value, (ReqcheckFailure, pytest.xfail.Exception)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.example.line - 1, f"{self.name} ({self.adapter})"


class GateItem(pytest.Item):
    """A quality gate, evaluated from the cases that ran; it fails the run when its threshold is missed."""

    def __init__(self, *, adapter: str, gate: Gate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.adapter, self.gate = adapter, gate
        self.add_marker("reqcheck")

    def runtest(self) -> None:
        from reqcheck.gating.explain import shortfall

        run = self.config.stash[suite_key].adapters.by_name[self.adapter].run
        try:
            run.evaluate(self.gate)
        except ReqcheckError as exc:
            raise ReqcheckFailure(str(exc)) from None
        finally:
            self.user_properties += _junit_properties(self.gate)
        if not self.gate.passed:
            raise ReqcheckFailure(f"gate {self.gate.name} failed for {self.adapter}: {shortfall(self.gate)}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, ReqcheckFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[str, int, str]:
        return "reqcheck-gate", 0, self.name


def make_gates(suite: Suite, cases: list[ReqcheckCase]) -> list[tuple[str, Gate]]:
    """The gates of each adapter; a per-label gate only for labels that have cases (others are listed)."""
    from reqcheck.gating.gates import GATES

    gates = []
    for name, adapter in suite.adapters.by_name.items():
        for kind in GATES:
            if (value := suite.options.thresholds.get(kind.name)) is None:
                continue
            if not kind.per_label:
                gates.append((name, Gate(kind.name, kind.mode, value, paired=kind.paired)))
                continue
            present = {c.example.label for c in cases if c.adapter == name}
            labels = adapter.manifest.labels
            gates += [(name, Gate(kind.name, kind.mode, value, label=x)) for x in labels if x in present]
            suite.ungated.setdefault(name, []).extend(f"{kind.name}[{x}]" for x in labels if x not in present)
        adapter.run.gates = [g for a, g in gates if a == name]
    return gates


def _junit_properties(gate: Gate) -> list[tuple[str, object]]:
    """The gate's numbers as JUnit properties of its test case (None values left out)."""
    facts = {key: value for key, value in gate.to_dict().items() if value is not None}
    interval = facts.pop("interval", None)
    if interval:
        facts["interval_low"], facts["interval_high"] = interval
    return list(facts.items())

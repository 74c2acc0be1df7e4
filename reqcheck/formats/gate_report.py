"""The gate report (contract): what the pytest plugin writes and `reqcheck upload`, `reqcheck report` and a
later run's `--reqcheck-baseline` read.

`GateReport` is its one reader and writer. Format 2 holds per-case records; format 1 (metrics and gates
only) is still read. Reading checks every field it keeps against its type, so a hand-edited or damaged
report ends in one sentence naming the field, never in a traceback further on; fields a format lacks
take their defaults, and fields this reqcheck does not know are left out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from reqcheck.atomic import atomic_write_text
from reqcheck.errors import ReqcheckError
from reqcheck.formats.typed import Mismatch, build

REPORT_FORMAT = 2
READABLE_FORMATS = (1, 2)
REGENERATE = "regenerate it with pytest --reqcheck-report"


@dataclass
class LabelMetrics:
    """One label's precision, recall (with its interval), F1 and support in one mode."""

    precision: float | None = None
    recall: float | None = None
    recall_interval: list[float] | None = None
    f1: float | None = None
    support: int = 0


@dataclass
class Confusion:
    """Rows are expected labels, columns predicted ones."""

    labels: list[str] = field(default_factory=list)
    matrix: list[list[int]] = field(default_factory=list)


@dataclass
class ReliabilityBin:
    low: float
    high: float
    n: int
    confidence: float | None = None
    accuracy: float | None = None


@dataclass
class Calibration:
    """Top-label calibration: expected calibration error, Brier score and the reliability bins."""

    ece: float | None = None
    brier: float | None = None
    bins: list[ReliabilityBin] = field(default_factory=list)


@dataclass
class Latency:
    """Per-case model time in milliseconds."""

    p50: float | None = None
    p95: float | None = None


@dataclass
class ModeSummary:
    """One mode's metrics (adapter or judge): accuracy and macro-F1 with intervals, calibration, speed."""

    n: int | None = None
    accuracy: float | None = None
    accuracy_interval: list[float] | None = None
    macro_f1: float | None = None
    per_label: dict[str, LabelMetrics] = field(default_factory=dict)
    confusion: Confusion | None = None
    calibration: Calibration | None = None
    latency_ms: Latency | None = None
    items_per_s: float | None = None
    cached: int = 0


@dataclass
class Gate:
    """A threshold on a metric and, once evaluated, its value, interval, p-value (paired gates) and verdict.

    `on` says what the verdict compared with the threshold: the value (`point`) or the interval's lower
    end (`bound`). `cases_needed` estimates, when the interval holds the threshold, how many cases at
    the rates observed would put it outside (None: no number would). `problem` says why a gate could
    not be evaluated (then it fails).
    """

    name: str
    mode: str
    threshold: float
    label: str | None = None
    on: str = "point"
    value: float | None = None
    interval: list[float] | None = None
    p_value: float | None = None
    n: int | None = None
    cases_needed: int | None = None
    passed: bool | None = None
    problem: str | None = None
    paired: bool = False  # compares two sets of predictions case by case: the report keeps its p-value

    def __post_init__(self) -> None:
        self.paired = self.paired or self.p_value is not None

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
        data.update(threshold=self.threshold, on=self.on, value=self.value, interval=self.interval)
        data["bound"] = self.bound
        if self.paired:
            data["p_value"] = self.p_value
        data.update(n=self.n, resolved=self.resolved, cases_needed=self.cases_needed, passed=self.passed)
        if self.problem is not None:
            data["problem"] = self.problem
        return data


@dataclass
class CaseMode:
    """What one mode predicted for a case, and its label distribution."""

    predicted: str
    probabilities: dict[str, float] = field(default_factory=dict)


@dataclass
class CaseRecord:
    """One labelled fixture line and each mode's prediction. `item` is absent when only hashes are kept."""

    id: str
    file: str
    line: int
    item_hash: str
    expected: str
    item: str | None = None
    modes: dict[str, CaseMode] = field(default_factory=dict)

    def right(self, mode: str) -> bool:
        return self.modes[mode].predicted == self.expected

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": self.id,
            "file": self.file,
            "line": self.line,
            "item_hash": self.item_hash,
        }
        if self.item is not None:
            record["item"] = self.item
        record["expected"] = self.expected
        record["modes"] = {mode: asdict(m) for mode, m in self.modes.items()}
        return record


@dataclass
class Change:
    """A case whose verdict changed between the baseline and this run."""

    id: str
    file: str
    line: int
    item_hash: str
    expected: str
    baseline: CaseMode
    current: CaseMode
    item: str | None = None


@dataclass
class BaselineComparison:
    """This run's cases against a baseline report's, matched by item hash and expected label."""

    path: str
    shared: int = 0
    baseline_only: int = 0
    current_only: int = 0
    right_to_wrong: list[Change] = field(default_factory=list)
    wrong_to_right: list[Change] = field(default_factory=list)
    problem: str | None = None


@dataclass
class DataFile:
    """A fixture file's cases for one adapter: path, fingerprint and count."""

    path: str
    adapter: str
    fingerprint: str
    n: int


@dataclass
class TrainingSummary:
    """How the adapter trained, as its manifest says: the best epoch and every epoch's metrics."""

    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ServedRecord:
    """Where a served run's predictions came from: the server as it reported itself.

    `endpoint` is the URL with its credentials hidden; `model` what the server calls its base model (a
    path, alias or Hub id); `model_hash` only when the server reports one (llama-server and vLLM do not).
    `compared` is true when every case also ran in process (mode `local`). `on_by_default` names the
    adapters whose global scale on that server is not 0: every request that names no adapter gets them.
    `slots` is the server's parallel slots when it says (llama-server); None in older reports.
    `replicas` lists every URL when the cases were spread over several (`endpoint` is the first); `failed`
    maps each replica that stopped answering during the run to its reason (its unfinished cases went to
    the others).
    """

    endpoint: str
    engine: str
    engine_version: str | None = None
    model: str | None = None
    model_hash: str | None = None
    compared: bool = False
    on_by_default: list[str] = field(default_factory=list)
    slots: int | None = None
    replicas: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class AdapterEntry:
    """One adapter's part of the report: what it is, its metrics per mode, gates, cases and baseline."""

    name: str
    path: str | None = None
    content_hash: str | None = None
    base_model: dict[str, Any] = field(default_factory=dict)
    adapter_type: str | None = None
    labels: list[str] = field(default_factory=list)
    positive_labels: list[str] = field(default_factory=list)
    training: TrainingSummary = field(default_factory=TrainingSummary)
    confidence: float = 0.95
    gate_on: str = "point"
    items: str = "text"
    data: list[DataFile] = field(default_factory=list)
    modes: dict[str, ModeSummary] = field(default_factory=dict)
    gates: list[Gate] = field(default_factory=list)
    cases: list[CaseRecord] = field(default_factory=list)
    baseline: BaselineComparison | None = None
    passed: bool | None = None
    # case items (one per line and mode) collected and run; `partial` when a run was narrowed (-k, -x, a
    # node id) so its gates saw only some cases. Reports before these fields read as complete runs.
    collected: int | None = None
    ran: int | None = None
    partial: bool = False
    # a run through --reqcheck-endpoint: the server; absent (None) for an in-process run and older reports
    served: ServedRecord | None = None

    @property
    def adapter_accuracy(self) -> float | None:
        mode = self.modes.get("adapter")
        return None if mode is None else mode.accuracy

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(
            training=asdict(self.training),
            data=[asdict(d) for d in self.data],
            modes={mode: asdict(m) for mode, m in self.modes.items()},
            gates=[g.to_dict() for g in self.gates],
            cases=[c.to_dict() for c in self.cases],
        )
        if self.baseline is None:
            del data["baseline"]
        else:
            data["baseline"] = asdict(self.baseline)
            if self.baseline.problem is None:
                del data["baseline"]["problem"]
        if self.served is None:
            del data["served"]
        else:
            data["served"] = asdict(self.served)
        return data


@dataclass
class GateReport:
    """The whole report: its format, who wrote it and when, the overall verdict and each adapter's entry."""

    report_format: int
    passed: bool | None = None
    adapters: list[AdapterEntry] = field(default_factory=list)
    reqcheck_version: str | None = None
    created_at: str | None = None

    def entry(self, name: str) -> AdapterEntry | None:
        return next((e for e in self.adapters if e.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_format": self.report_format,
            "reqcheck_version": self.reqcheck_version,
            "created_at": self.created_at,
            "passed": self.passed,
            "adapters": [e.to_dict() for e in self.adapters],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Any, source: str = "the report") -> GateReport:
        """A report from its JSON value, or one sentence naming the first field that is not as written."""
        if not isinstance(data, dict) or "report_format" not in data:
            raise ReqcheckError(f"{source} is not a reqcheck gate report; {REGENERATE}.")
        version = data["report_format"]
        if isinstance(version, bool) or version not in READABLE_FORMATS:
            raise ReqcheckError(
                f"{source} is a gate report of format {version!r}, and this reqcheck reads formats "
                f"{', '.join(map(str, READABLE_FORMATS))}; {REGENERATE}."
            )
        if not isinstance(data.get("adapters"), list):
            raise ReqcheckError(f"{source} holds no list of adapter entries; {REGENERATE}.")
        for number, entry in enumerate(data["adapters"], start=1):
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("modes", {}), dict)
                and isinstance(entry.get("gates", []), list)
            ):
                raise ReqcheckError(
                    f"{source}: adapter entry {number} is not an object with 'modes' and 'gates' as the plugin "
                    f"writes them; {REGENERATE}."
                )
        try:
            return build(cls, data, "")
        except Mismatch as exc:
            raise ReqcheckError(f"{source}: {exc} as the plugin writes it; {REGENERATE}.") from None

    @classmethod
    def read(cls, path: str | Path) -> GateReport:
        """A gate report file written by the pytest plugin (any format this reqcheck reads), or one clear error."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReqcheckError(
                f"Report {path} does not exist; write one with pytest --reqcheck-report {path}."
            ) from None
        except IsADirectoryError:
            raise ReqcheckError(
                f"Report {path} is a directory; pass the JSON file pytest --reqcheck-report wrote."
            ) from None
        except NotADirectoryError:
            raise ReqcheckError(
                f"Report {path} is not a file (a part of its path is a file); pass the JSON file pytest "
                "--reqcheck-report wrote."
            ) from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge integers
            raise ReqcheckError(
                f"Report {path} is not valid JSON ({str(exc).split(';')[0]}); {REGENERATE}."
            ) from exc
        return cls.from_dict(data, str(path))

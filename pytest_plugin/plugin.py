"""pytest-reqcheck: labelled `*.reqcheck.jsonl` lines become requirement-check test cases.

`pytest --adapter PATH` loads the adapter(s) into one session backend, runs every case through the
adapter (validation on) and the base-model judge (validation off) in batches, reports wrong labels as
expected failures (or failures with `--reqcheck-strict`), and adds gate items (accuracy, gain over
the judge, no regression, per-label recall) whose failure fails the run. Without `--adapter` the
plugin registers its options and nothing else: no torch or matplotlib import, no slower start-up.

This module is pytest glue: the bookkeeping, statistics and verdicts live in `reqcheck.gating.evaluation`
(one `AdapterRun` per adapter), the text and HTML renderings in `reqcheck.gating.report_text` and
`reqcheck.gating.report_html`.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from reqcheck.errors import ReqcheckError
from reqcheck.gating.gates import GATES
from reqcheck.gating.gates import op as comparison

if TYPE_CHECKING:
    from reqcheck.formats.gate_report import DataFile, Gate, GateReport
    from reqcheck.gating.evaluation import AdapterRun, GateSettings

FIXTURE_PATTERN = "*.reqcheck.jsonl"
OUTPUT_OPTIONS = ("reqcheck-report", "reqcheck-html")
SETTINGS = {  # name: (type, help); each gate of the table is one more
    "validation": (str, "run cases with validation on (adapter), off (judge) or both [both]"),
    "strict": (bool, "a wrong label fails its case instead of being an expected failure"),
    **{kind.name: (float, f"gate: {kind.help}") for kind in GATES},
    "baseline": (str, "an earlier gate report to compare with (see max-drop)"),
    "confidence": (float, "confidence level of the intervals and paired tests [0.95]"),
    "gate_on": (
        str,
        "decide gates on the point value or on the interval's lower bound (paired tests) [point]",
    ),
    "report_items": (str, "keep item text (shortened) or only its hash in the report and HTML [text]"),
}
# the session's plugin object, kept the way _pytest.junitxml keeps its own
plugin_key = pytest.StashKey["ReqcheckPlugin"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reqcheck", "requirement-check adapters (reqcheck)")
    group.addoption(
        "--adapter",
        action="append",
        default=[],
        metavar="PATH_OR_REPO_ID",
        help="adapter to evaluate *.reqcheck.jsonl cases with (repeatable); enables the plugin",
    )
    group.addoption("--basemodel", default=None, help="base model (default: the adapter manifest's)")
    group.addoption(
        "--reqcheck-validation", choices=["on", "off", "both"], default=None, help=SETTINGS["validation"][1]
    )
    group.addoption("--reqcheck-strict", action="store_true", default=None, help=SETTINGS["strict"][1])
    for kind in GATES:
        group.addoption(kind.option, type=float, default=None, help=SETTINGS[kind.name][1])
    group.addoption("--reqcheck-baseline", default=None, metavar="REPORT", help=SETTINGS["baseline"][1])
    group.addoption(
        "--reqcheck-confidence", type=float, default=None, metavar="LEVEL", help=SETTINGS["confidence"][1]
    )
    group.addoption(
        "--reqcheck-gate-on", choices=["point", "bound"], default=None, help=SETTINGS["gate_on"][1]
    )
    group.addoption(
        "--reqcheck-report", default=None, metavar="PATH", help="write the gate report (JSON) here"
    )
    group.addoption(
        "--reqcheck-html", default=None, metavar="PATH", help="write the gate report as one HTML page here"
    )
    group.addoption(
        "--reqcheck-report-items", choices=["text", "hash"], default=None, help=SETTINGS["report_items"][1]
    )
    group.addoption(
        "--reqcheck-no-cache", action="store_true", help="do not read or write cached case results"
    )
    group.addoption("--reqcheck-batch-size", type=int, default=16, help="cases per model call [16]")
    group.addoption("--reqcheck-device", default="auto", help="auto, cpu, cuda or mps [auto]")
    group.addoption(
        "--reqcheck-endpoint",
        default=None,
        metavar="URL",
        help="check through this llama-server or vLLM server instead of in process (no local model needed)",
    )
    group.addoption(
        "--reqcheck-concurrency",
        type=int,
        default=4,
        metavar="N",
        help="requests in flight to the endpoint [4]",
    )
    group.addoption(
        "--reqcheck-compare",
        action="store_true",
        help="with --reqcheck-endpoint, also run every case in process (mode local) to measure train/serve skew",
    )
    parser.addini("reqcheck_files", type="linelist", help="extra glob patterns of reqcheck fixture files")
    for name, (kind, text) in SETTINGS.items():
        parser.addini(f"reqcheck_{name}", type="bool" if kind is bool else "string", default=None, help=text)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reqcheck: a requirement-check case or gate collected by pytest-reqcheck"
    )
    if not config.getoption("adapter"):
        return
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        raise pytest.UsageError(
            "pytest-reqcheck does not run under pytest-xdist (-n): it already batches every case in one "
            "process; run without -n."
        )
    plugin = ReqcheckPlugin(config)
    config.stash[plugin_key] = plugin
    config.pluginmanager.register(plugin, "reqcheck-session")


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.stash.get(plugin_key, None)
    if plugin is not None:
        del config.stash[plugin_key]
        config.pluginmanager.unregister(plugin)


def setting(config: pytest.Config, name: str) -> Any:
    """A setting from the command line, else from [tool.pytest.ini_options], else None."""
    value = config.getoption(f"reqcheck_{name}")
    if value is None:
        value = config.getini(f"reqcheck_{name}")
    kind = SETTINGS[name][0]
    if value is None or value == "":
        return False if kind is bool else None
    if kind is bool:
        return bool(value)
    try:
        return kind(value)
    except ValueError:
        raise pytest.UsageError(f"reqcheck_{name} = {value!r} is not a {kind.__name__}; fix it.") from None


def check_gate_settings(config: pytest.Config) -> None:
    """Refuse thresholds no accuracy can meet, and a gate that needs a baseline without one, up front."""
    for kind in GATES:
        value = setting(config, kind.name)
        if value is None:
            continue
        try:
            kind.check_threshold(value)
        except ReqcheckError as exc:
            raise pytest.UsageError(str(exc)) from None
        if kind.needs_baseline and not setting(config, "baseline"):
            raise pytest.UsageError(f"{kind.option} needs --reqcheck-baseline REPORT.")
        if "local" in kind.modes and not config.getoption("reqcheck_compare"):
            raise pytest.UsageError(f"{kind.option} needs --reqcheck-endpoint URL --reqcheck-compare.")
    if config.getoption("reqcheck_compare") and not config.getoption("reqcheck_endpoint"):
        raise pytest.UsageError(
            "--reqcheck-compare needs --reqcheck-endpoint URL, the server to compare with."
        )
    if config.getoption("reqcheck_concurrency") < 1:
        raise pytest.UsageError("--reqcheck-concurrency must be at least 1; pass e.g. 4.")


class ReqcheckFailure(Exception):
    """A bad fixture file, a wrong label or a missed gate: reported as its message, without a traceback."""


@dataclass
class AdapterUnderTest:
    """One --adapter: its files, manifest, the fingerprint its cached results are keyed by, and its run."""

    spec: Any
    path: Path
    manifest: Any
    fingerprint: dict[str, str]
    run: AdapterRun


class ReqcheckPlugin:
    """The session state: adapters, lazily loaded backend, predictions, gates and the report's outputs."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        validation = setting(config, "validation") or "both"
        if validation not in ("on", "off", "both"):
            raise pytest.UsageError(f"reqcheck_validation must be on, off or both, not {validation!r}.")
        self.modes = {"on": ["adapter"], "off": ["judge"], "both": ["adapter", "judge"]}[validation]
        self.endpoint = config.getoption("reqcheck_endpoint")
        self.compare = bool(config.getoption("reqcheck_compare"))
        if self.compare:
            self.modes.append("local")
        self.strict = setting(config, "strict")
        self.patterns = [FIXTURE_PATTERN, *config.getini("reqcheck_files")]
        self._backend: Any = None
        self._local: Any = None
        self.case_errors: dict[tuple[str, str, str], str] = {}  # cases a failing server could not check
        self.predictions: dict[tuple[str, str, str], Any] = {}
        self.files: dict[str, list[DataFile]] = {}
        self.gates: list[tuple[str, Gate]] = []
        self.report: GateReport | None = None
        self.problems: list[str] = []
        self.ungated: dict[str, list[str]] = {}  # adapter -> `gate[label]` of labels without cases
        check_gate_settings(config)
        try:
            self.refuse_clashing_outputs([])
            self.settings = self._settings()
            self.adapters = self._locate()
        except ReqcheckError as exc:
            raise pytest.UsageError(str(exc)) from None

    def refuse_clashing_outputs(self, inputs: list[tuple[str, str]]) -> None:
        """Refuse an output path (report, page, step summary) that is the baseline, an input or another output."""
        from reqcheck.atomic import refuse_clashing_outputs

        outputs = [(f"--{name}", self.config.getoption(name.replace("-", "_"))) for name in OUTPUT_OPTIONS]
        outputs.append(("GITHUB_STEP_SUMMARY", os.environ.get("GITHUB_STEP_SUMMARY")))
        if baseline := setting(self.config, "baseline"):
            inputs = [*inputs, ("the baseline", baseline)]
        refuse_clashing_outputs([(what, path) for what, path in outputs if path], inputs)

    def _settings(self) -> GateSettings:
        from reqcheck.gating.evaluation import GateSettings

        confidence = setting(self.config, "confidence")
        return GateSettings(
            confidence=0.95 if confidence is None else confidence,
            gate_on=setting(self.config, "gate_on") or "point",
            items=setting(self.config, "report_items") or "text",
        )

    # adapters and backend

    def _locate(self) -> dict[str, AdapterUnderTest]:
        """Adapter name -> its files, manifest, fingerprint and run, found without loading a model."""
        from reqcheck import __version__
        from reqcheck.checking.adapters import CustomIntrinsicAdapter, locate_adapter, resolve_adapter
        from reqcheck.formats.gate_report import TrainingSummary
        from reqcheck.formats.manifest import MANIFEST_NAME, Manifest, content_hash
        from reqcheck.gating.evaluation import AdapterRun, Baseline
        from reqcheck.models.loading import load_tokenizer, resolve_base_model

        baseline_path = setting(self.config, "baseline")
        baseline = Baseline.read(baseline_path) if baseline_path else None
        specs = self.config.getoption("adapter")
        if self.endpoint and not self.compare:  # the server holds the model: nothing to load or convert here
            self.base_model = _served_base(specs[0])
        else:
            self.base_model = resolve_base_model(self.config.getoption("basemodel") or _base_spec(specs[0]))
        found = {}
        for spec in specs:
            adapter = CustomIntrinsicAdapter(model_id=spec)
            path = locate_adapter(adapter, self.base_model.short_name)
            if adapter.name in found:
                raise ReqcheckError(
                    f"--adapter {found[adapter.name].path} and --adapter {path} are both named "
                    f"{adapter.name!r}, and the report and the cases tell adapters apart by name; copy or "
                    "rename one folder so their names differ."
                )
            if (path / MANIFEST_NAME).exists():
                manifest = Manifest.read(path)
            else:  # trained by Mellea: labels and prompt format need the tokenizer (no model is loaded)
                tokenizer = load_tokenizer(self.base_model)
                manifest = resolve_adapter(adapter, self.base_model.short_name, tokenizer).manifest
            fingerprint = {
                "adapter": content_hash(path),
                "base": self.base_model.revision,
                "reqcheck": __version__,
            }
            run = AdapterRun(
                name=adapter.name,
                path=str(path),
                content_hash=fingerprint["adapter"],
                base_model=asdict(manifest.public().base_model),
                adapter_type=manifest.adapter_type,
                labels=list(manifest.labels),
                positive_labels=list(manifest.positive_labels),
                settings=self.settings,
                training=TrainingSummary(manifest.metrics.best_epoch, manifest.metrics.history),
                baseline=baseline,
            )
            found[adapter.name] = AdapterUnderTest(adapter, path, manifest, fingerprint, run)
        return found

    @property
    def backend(self) -> Any:
        """The session's backend, made on the first case not in the cache: the endpoint's, else in process."""
        if self._backend is None:
            self._backend = self._load(served=bool(self.endpoint))
        return self._backend

    @property
    def local_backend(self) -> Any:
        """The in-process LocalHFBackend that --reqcheck-compare scores every case with too (mode local)."""
        if self._local is None:
            self._local = self._load(served=False)
        return self._local

    def _load(self, served: bool) -> Any:
        """A backend with every --adapter registered; its failure stops the run once, as a usage error."""
        try:
            if served:
                from reqcheck.checking.remote import RemoteBackend

                backend = RemoteBackend(
                    self.endpoint, concurrency=self.config.getoption("reqcheck_concurrency")
                )
            else:
                from reqcheck.checking.backend import LocalHFBackend

                backend = LocalHFBackend(
                    self.base_model.spec, device=self.config.getoption("reqcheck_device")
                )
            for name, adapter in self.adapters.items():
                adapter.spec.intrinsic_name = name
                backend.add_adapter(adapter.spec)
        except ReqcheckError as exc:  # every case would fail the same way: stop once, as a usage error
            pytest.exit(f"reqcheck: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        if served:
            self._record_server(backend)
        return backend

    def _record_server(self, backend: Any) -> None:
        from reqcheck.errors import hide_url_credentials
        from reqcheck.formats.gate_report import ServedRecord

        info = backend.info
        record = ServedRecord(
            hide_url_credentials(self.endpoint),
            info.engine,
            info.version,
            info.model,
            info.model_hash,
            self.compare,
            list(backend.on_by_default),
        )
        for adapter in self.adapters.values():
            adapter.run.served = record

    def adapter_for(self, requirement: str | None, where: str) -> str:
        """The adapter that checks a fixture line: the one trained for its requirement, else the only one."""
        if len(self.adapters) == 1:
            return next(iter(self.adapters))
        from reqcheck.checking.requirements import same_requirement

        for name, adapter in self.adapters.items():
            if same_requirement(adapter.manifest.requirement, requirement):
                return name
        raise ReqcheckFailure(
            f"{where}: cannot tell which of the adapters ({', '.join(self.adapters)}) checks this line; give it a "
            "'requirement' equal to one adapter's --requirement."
        )

    # collection

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        relative = (
            str(file_path.relative_to(self.config.rootpath))
            if file_path.is_relative_to(self.config.rootpath)
            else ""
        )
        if any(fnmatch.fnmatch(file_path.name, p) or fnmatch.fnmatch(relative, p) for p in self.patterns):
            return ReqcheckFile.from_parent(parent, path=file_path)
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        """Gates run after every case, whatever -k selected, so they appear in -v output and JUnit."""
        cases = [item for item in items if isinstance(item, ReqcheckCase)]
        if not cases:
            return
        try:
            self.refuse_clashing_outputs([("the fixture file", path) for path in self.files])
        except ReqcheckError as exc:
            pytest.exit(f"reqcheck: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        self.gates = self._make_gates(cases)
        items.extend(
            GateItem.from_parent(
                session,
                name=f"reqcheck-gate::{g.name}[{a}{'-' + g.label if g.label else ''}]",
                adapter=a,
                gate=g,
            )
            for a, g in self.gates
        )

    def _make_gates(self, cases: list[ReqcheckCase]) -> list[tuple[str, Gate]]:
        """The gates of each adapter; a per-label gate only for labels that have cases (others are listed)."""
        from reqcheck.formats.gate_report import Gate

        gates = []
        for name, adapter in self.adapters.items():
            for kind in GATES:
                if (value := setting(self.config, kind.name)) is None:
                    continue
                if not kind.per_label:
                    gates.append((name, Gate(kind.name, kind.mode, value, paired=kind.paired)))
                    continue
                present = {c.example.label for c in cases if c.adapter == name}
                labels = adapter.manifest.labels
                gates += [(name, Gate(kind.name, kind.mode, value, label=x)) for x in labels if x in present]
                self.ungated.setdefault(name, []).extend(
                    f"{kind.name}[{x}]" for x in labels if x not in present
                )
            adapter.run.gates = [g for a, g in gates if a == name]
        return gates

    # running

    def prediction(self, case: ReqcheckCase) -> Any:
        """The case's prediction; on the first miss, every selected case is predicted in batches."""
        key = (case.adapter, case.mode, case.key)
        if key not in self.predictions and key not in self.case_errors:
            try:
                self._predict_all([i for i in case.session.items if isinstance(i, ReqcheckCase)])
            except ReqcheckError as exc:  # the whole batch failed: one message, not one per case
                pytest.exit(f"reqcheck: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        if key in self.case_errors:
            raise ReqcheckFailure(f"{case.mode}: could not be checked: {self.case_errors[key]}")
        return self.predictions[key]

    def _predict_all(self, cases: list[ReqcheckCase]) -> None:
        """Predict every case in batches, both modes per batch, reading and writing the pytest cache."""
        from reqcheck.gating.evaluation import Prediction

        # config.cache does not exist at all under -p no:cacheprovider
        # a served run checks the server as it is now: it neither reads nor writes cached results
        use_cache = (
            getattr(self.config, "cache", None) is not None
            and not self.config.getoption("reqcheck_no_cache")
            and not self.endpoint
        )
        for adapter, entry in self.adapters.items():
            members = [c for c in cases if c.adapter == adapter]
            slots = {mode: f"reqcheck/v1/{entry.fingerprint['adapter'][7:23]}-{mode}" for mode in self.modes}
            stored = {
                mode: (self.config.cache.get(slot, None) if use_cache else None) or {}
                for mode, slot in slots.items()
            }
            # the same item under two requirements is two predictions (the cache key holds both)
            missing = list(
                {
                    (c.example.item, c.example.requirement): c.example
                    for c in members
                    if c.key not in stored[c.mode]
                }.values()
            )
            fresh: set[str] = set()
            if missing:
                for mode, predictions in self._predict_missing(adapter, missing).items():
                    for example, p in zip(missing, predictions, strict=True):
                        key = ReqcheckCase.case_key(self, adapter, mode, example)
                        if p is not None:
                            stored[mode][key] = {"probabilities": p.probabilities, "seconds": p.seconds}
                            fresh.add(key)
                if use_cache:
                    for mode, slot in slots.items():
                        self.config.cache.set(slot, stored[mode])
            for c in members:
                found = stored[c.mode].get(c.key)
                if found is None:
                    self.case_errors[(adapter, c.mode, c.key)] = entry.run.errors[0]
                    continue
                prediction = Prediction(found["probabilities"], found["seconds"], cached=c.key not in fresh)
                self.predictions[(adapter, c.mode, c.key)] = prediction

    def _predict_missing(self, adapter: str, missing: list[Any]) -> dict[str, list[Any]]:
        """Each mode's predictions of `missing` in their order; None where a served check failed.

        In process, a failure stops the run (every case would fail alike). Through an endpoint, the cases
        are sent a batch at a time, and when the server fails (it died, say) the cases not yet checked
        keep its one-sentence reason, which fails them and the gates.
        """
        from reqcheck.gating.evaluation import predict

        items = [e.item for e in missing]
        batch = self.config.getoption("reqcheck_batch_size")
        modes = [mode for mode in self.modes if mode != "local"]
        requirements = {mode: [self.requirement(adapter, mode, e) for e in missing] for mode in modes}
        if not self.endpoint:
            return predict(self.backend, adapter, items, requirements, batch)
        out: dict[str, list[Any]] = {mode: [None] * len(missing) for mode in self.modes}
        if "local" in self.modes:
            told = {"adapter": [self.requirement(adapter, "adapter", e) for e in missing]}
            out["local"] = predict(self.local_backend, adapter, items, told, batch)["adapter"]
        step = max(batch, 4 * self.config.getoption("reqcheck_concurrency"))
        for start in range(0, len(missing), step):
            chunk = {mode: reqs[start : start + step] for mode, reqs in requirements.items()}
            try:
                done = predict(self.backend, adapter, items[start : start + step], chunk, step)
            except ReqcheckError as exc:
                unchecked = (len(missing) - start) * len(modes)
                self.adapters[adapter].run.errors.extend([str(exc)] * unchecked)
                break
            for mode, predictions in done.items():
                out[mode][start : start + len(predictions)] = predictions
        return out

    def requirement(self, adapter: str, mode: str, example: Any) -> str | None:
        """What a case's model is told: the line's requirement, else (for the judge) the adapter's."""
        return example.requirement or (
            self.adapters[adapter].manifest.requirement if mode == "judge" else None
        )

    # reporting

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Build the report once; write the JSON, the HTML page and the CI step summary its options name."""
        if not any(a.run.cases or a.run.errors for a in self.adapters.values()):
            return
        from reqcheck.gating.evaluation import build_report

        for name, adapter in self.adapters.items():
            adapter.run.data = [f for fs in self.files.values() for f in fs if f.adapter == name]
        self.report = build_report([a.run for a in self.adapters.values()])
        outputs = [
            (self.config.getoption("reqcheck_report"), self._write_json),
            (self.config.getoption("reqcheck_html"), self._write_html),
            (os.environ.get("GITHUB_STEP_SUMMARY"), self._append_step_summary),
        ]
        for path, write in outputs:
            if not path:
                continue
            try:
                write(path)
            except (OSError, ReqcheckError) as exc:
                self.problems.append(f"could not write {path}: {exc}")
                session.exitstatus = pytest.ExitCode.USAGE_ERROR

    def _write_json(self, path: str) -> None:
        self.report.write(path)

    def _write_html(self, path: str) -> None:
        from reqcheck.gating.report_html import write_html

        write_html(self.report, path)

    def _append_step_summary(self, path: str) -> None:
        from reqcheck.gating.report_text import markdown

        with open(path, "a", encoding="utf-8") as summary:
            summary.write(markdown(self.report))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report is None:
            return
        from reqcheck.gating.report_text import terminal_lines

        terminalreporter.section("reqcheck")
        confidence = self.settings.confidence
        terminalreporter.write_line(
            f"intervals: {confidence:.0%} (Wilson for rates; exact McNemar, paired by case, for gain and drop); "
            f"gates decided on the {'lower bound' if self.settings.gate_on == 'bound' else 'point value'}"
        )
        for entry in self.report.adapters:
            for line in terminal_lines(entry):
                terminalreporter.write_line(line)
            for gate in self.ungated.get(entry.name, []):
                terminalreporter.write_line(f"  gate {gate}: no cases -> not gated")
        for problem in self.problems:
            terminalreporter.write_line(f"reqcheck: {problem}", red=True)


def _served_base(adapter: str) -> Any:
    """The base model a served run's adapter was trained on, as its manifest records it (nothing loaded)."""
    from reqcheck.formats.manifest import MANIFEST_NAME, Manifest

    path = Path(adapter).expanduser()
    if not (path / MANIFEST_NAME).exists():
        raise pytest.UsageError(
            f"--adapter {adapter} holds no {MANIFEST_NAME}; --reqcheck-endpoint checks adapters trained by "
            "reqcheck, given as their directory."
        )
    try:
        return Manifest.read(path).base_model
    except ReqcheckError as exc:
        raise pytest.UsageError(str(exc)) from None


def _base_spec(adapter: str) -> str:
    """The base model an adapter directory names (reqcheck.json, else PEFT's adapter_config.json)."""
    from reqcheck.formats.manifest import MANIFEST_NAME, Manifest, is_hub_id

    path = Path(adapter).expanduser()
    if not path.exists():
        if is_hub_id(adapter):
            raise pytest.UsageError(f"Cannot tell the base model of Hub adapter {adapter}; pass --basemodel.")
        raise pytest.UsageError(
            f"--adapter {adapter} does not exist; pass the directory reqcheck train wrote (with =, as "
            "--adapter=PATH) or a Hub repo id."
        )
    try:
        if (path / MANIFEST_NAME).exists():
            return Manifest.read(path).base_model.spec
        spec = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    except ReqcheckError as exc:
        raise pytest.UsageError(str(exc)) from None
    except (OSError, ValueError, KeyError, TypeError):
        spec = None
    if not isinstance(spec, str) or not spec:
        raise pytest.UsageError(
            f"Cannot tell the base model of {adapter} (it holds no reqcheck.json or adapter_config.json "
            "naming one); pass --basemodel."
        )
    return spec


class ReqcheckFile(pytest.File):
    """A JSONL fixture file: one case per line and mode; bad lines are one collection error."""

    def collect(self):  # type: ignore[override]
        from reqcheck.formats.data import fingerprint, parse_lines
        from reqcheck.formats.gate_report import DataFile

        plugin = self.config.stash[plugin_key]
        examples, problems = parse_lines(self.path)
        if problems:
            raise ReqcheckFailure(
                f"{len(problems)} bad line(s) in {self.path}:\n" + "\n".join("  " + p for p in problems)
            )
        by_adapter: dict[str, list] = {}
        for example in examples:
            adapter = plugin.adapter_for(example.requirement, f"{self.path}:{example.line}")
            by_adapter.setdefault(adapter, []).append(example)
            run = plugin.adapters[adapter].run
            run.collected = (run.collected or 0) + len(plugin.modes)
            name = example.id or f"line{example.line}"
            for mode in plugin.modes:
                yield ReqcheckCase.from_parent(
                    self, name=f"{name}[{mode}]", example=example, mode=mode, adapter=adapter
                )
        plugin.files[str(self.path)] = [
            DataFile(str(self.path), a, fingerprint(e), len(e)) for a, e in by_adapter.items()
        ]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, ReqcheckFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class ReqcheckCase(pytest.Item):
    """One labelled line run in one mode: passes when the predicted label equals the expected one."""

    def __init__(self, *, example: Any, mode: str, adapter: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.example, self.mode, self.adapter = example, mode, adapter
        self.add_marker("reqcheck")

    @property
    def plugin(self) -> ReqcheckPlugin:
        return self.config.stash[plugin_key]

    @functools.cached_property
    def key(self) -> str:
        return self.case_key(self.plugin, self.adapter, self.mode, self.example)

    @staticmethod
    def case_key(plugin: ReqcheckPlugin, adapter: str, mode: str, example: Any) -> str:
        """The disk-cache key: adapter and base fingerprint, mode, item and what the model is told."""
        from reqcheck.gating.evaluation import case_key

        fingerprint = plugin.adapters[adapter].fingerprint
        return case_key(fingerprint, mode, example.item, plugin.requirement(adapter, mode, example))

    def runtest(self) -> None:
        adapter = self.plugin.adapters[self.adapter]
        labels = adapter.run.labels
        if self.example.label not in labels:
            raise ReqcheckFailure(
                f"label {self.example.label!r} is not one of adapter {self.adapter}'s labels {labels}"
            )
        prediction = self.plugin.prediction(self)
        adapter.run.record(
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
        from reqcheck.gating.evaluation import item_label

        message = (
            f"{self.mode}: expected {self.example.label!r}, got {prediction.label!r} "
            f"(p={prediction.probabilities[prediction.label]:.3f}; p({self.example.label})="
            f"{prediction.probabilities[self.example.label]:.3f}) for item "
            f"{item_label(self.example.item, self.plugin.settings.items)}"
        )
        if self.plugin.strict:
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

    def __init__(self, *, adapter: str, gate: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.adapter, self.gate = adapter, gate
        self.add_marker("reqcheck")

    def runtest(self) -> None:
        run = self.config.stash[plugin_key].adapters[self.adapter].run
        try:
            run.evaluate(self.gate)
        except ReqcheckError as exc:
            raise ReqcheckFailure(str(exc)) from None
        finally:
            self.user_properties += _junit_properties(self.gate)
        if not self.gate.passed:
            raise ReqcheckFailure(f"gate {self.gate.name} failed for {self.adapter}: {_shortfall(self.gate)}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, ReqcheckFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[str, int, str]:
        return "reqcheck-gate", 0, self.name


def _shortfall(gate: Gate) -> str:
    """Why a gate failed, in the terms it was decided on."""
    op = comparison(gate.name)
    if gate.on == "point" or gate.interval is None:
        return f"{gate.value:.3f} is not {op} {gate.threshold}"
    low, high = gate.interval
    p_value = f", p={gate.p_value:.2g}" if gate.p_value is not None else ""
    return (
        f"the lower bound {low:.3f} of its interval [{low:.3f}, {high:.3f}] is not {op} {gate.threshold} "
        f"(value {gate.value:.3f}{p_value})"
    )


def _junit_properties(gate: Gate) -> list[tuple[str, object]]:
    """The gate's numbers as JUnit properties of its test case (None values left out)."""
    facts = {key: value for key, value in gate.to_dict().items() if value is not None}
    interval = facts.pop("interval", None)
    if interval:
        facts["interval_low"], facts["interval_high"] = interval
    return list(facts.items())


@pytest.fixture(scope="session")
def reqcheck_backend(request: pytest.FixtureRequest) -> Any:
    """The session's LocalHFBackend with the --adapter adapters registered (skips without --adapter)."""
    plugin = request.config.stash.get(plugin_key, None)
    if plugin is None:
        pytest.skip("reqcheck_backend needs pytest --adapter PATH")
    return plugin.backend


@pytest.fixture
def reqcheck_check(reqcheck_backend: Any) -> Any:
    """`reqcheck_check(text, requirement=None) -> ValidationResult`, routed like LocalHFBackend.check."""
    from reqcheck.checking.requirements import req

    def check(text: str, requirement: str | None = None) -> Any:
        if requirement is None:
            adapter = next(iter(reqcheck_backend.adapters.values()))
            requirement = adapter.manifest.requirement or adapter.name
        return reqcheck_backend.check(req(requirement), text)

    return check

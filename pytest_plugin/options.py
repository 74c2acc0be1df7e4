"""The plugin's options: one table (`OPTIONS`) that registers every command-line option and ini key, and
reads and checks them once into the `SessionOptions` a gate session runs by.

docs/gating.md lists every entry of this table and of the gate table; a test keeps them in step.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import pytest

from reqcheck.errors import ReqcheckError
from reqcheck.gating.gates import GATES, GateSettings

FIXTURE_PATTERN = "*.reqcheck.jsonl"
FILES_INI = "reqcheck_files"  # extra glob patterns of fixture files (ini only)
MODES = {"on": ("adapter",), "off": ("judge",), "both": ("adapter", "judge")}
# the skew gates a compare run keeps unless told otherwise (docs/serving.md): a compare that gates nothing
# would measure the skew and pass whatever it found
COMPARE_GATES = {"min_agreement": 0.99, "max_score_diff": 0.02}


def dest(flag: str) -> str:
    """The attribute pytest keeps an option's value under: `--reqcheck-min-gain` -> `reqcheck_min_gain`."""
    return flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Option:
    """One command-line option. `ini` also makes it the key `reqcheck_<name>` of [tool.pytest.ini_options],
    which the command line overrides; `kind` is its value's type (bool: a switch)."""

    flag: str
    help: str
    kind: type = str
    choices: tuple[str, ...] | None = None
    default: Any = None
    metavar: str | None = None
    ini: bool = False
    repeat: bool = False

    @property
    def dest(self) -> str:
        return dest(self.flag)

    @property
    def ini_key(self) -> str | None:
        return self.dest if self.ini else None

    def add_to(self, group: Any) -> None:
        if self.repeat:
            group.addoption(self.flag, action="append", default=[], metavar=self.metavar, help=self.help)
        elif self.kind is bool:
            group.addoption(self.flag, action="store_true", default=self.default, help=self.help)
        else:
            kind = None if self.kind is str else self.kind
            group.addoption(
                self.flag,
                type=kind,
                choices=self.choices,
                default=self.default,
                metavar=self.metavar,
                help=self.help,
            )


OPTIONS = (
    Option(
        "--adapter",
        "adapter to evaluate *.reqcheck.jsonl cases with (repeatable); enables the plugin",
        metavar="PATH_OR_REPO_ID",
        repeat=True,
    ),
    Option("--basemodel", "base model (default: the adapter manifest's)"),
    Option(
        "--reqcheck-validation",
        "run cases with validation on (adapter), off (judge) or both [both]",
        choices=tuple(MODES),
        ini=True,
    ),
    Option(
        "--reqcheck-strict",
        "a wrong label fails its case instead of being an expected failure",
        bool,
        ini=True,
    ),
    *(Option(kind.option, f"gate: {kind.help}", float, ini=True) for kind in GATES),
    Option(
        "--reqcheck-baseline",
        "an earlier gate report to compare with (see max-drop)",
        metavar="REPORT",
        ini=True,
    ),
    Option(
        "--reqcheck-confidence",
        "confidence level of the intervals and paired tests [0.95]",
        float,
        metavar="LEVEL",
        ini=True,
    ),
    Option(
        "--reqcheck-gate-on",
        "decide gates on the point value or on the interval's lower bound (paired tests) [point]",
        choices=("point", "bound"),
        ini=True,
    ),
    Option("--reqcheck-report", "write the gate report (JSON) here", metavar="PATH"),
    Option("--reqcheck-html", "write the gate report as one HTML page here", metavar="PATH"),
    Option(
        "--reqcheck-report-items",
        "keep item text (shortened) or only its hash in the report and HTML [text]",
        choices=("text", "hash"),
        ini=True,
    ),
    Option("--reqcheck-no-cache", "do not read or write cached case results", bool, default=False),
    Option("--reqcheck-batch-size", "cases per model call [16]", int, default=16),
    Option("--reqcheck-device", "auto, cpu, cuda or mps [auto]", default="auto"),
    Option(
        "--reqcheck-endpoint",
        "check through this llama-server or vLLM server instead of in process (no local model needed); "
        "repeat it for replicas of one server, and the cases are spread over them",
        metavar="URL",
        repeat=True,
    ),
    Option("--reqcheck-concurrency", "requests in flight to each endpoint [4]", int, default=4, metavar="N"),
    Option(
        "--reqcheck-timeout",
        "seconds one request to the endpoint may take, retries and a slow answer included [120]",
        float,
        default=120.0,
        metavar="SECONDS",
    ),
    Option(
        "--reqcheck-compare",
        "with --reqcheck-endpoint, also run every case in process (mode local) and gate the train/serve skew "
        f"(by default: agreement >= {COMPARE_GATES['min_agreement']}, score difference <= "
        f"{COMPARE_GATES['max_score_diff']})",
        bool,
        default=False,
    ),
)
BY_DEST = {option.dest: option for option in OPTIONS}
OUTPUT_OPTIONS = ("reqcheck_report", "reqcheck_html")


def add_options(parser: pytest.Parser) -> None:
    """Register the table's options, their ini keys and the fixture-pattern ini key."""
    group = parser.getgroup("reqcheck", "requirement-check adapters (reqcheck)")
    for option in OPTIONS:
        option.add_to(group)
    parser.addini(FILES_INI, type="linelist", help="extra glob patterns of reqcheck fixture files")
    for option in OPTIONS:
        if option.ini_key:
            ini_type = "bool" if option.kind is bool else "string"
            parser.addini(option.ini_key, type=ini_type, default=None, help=option.help)


def setting(config: pytest.Config, dest: str) -> Any:
    """An option from the command line, else from [tool.pytest.ini_options] (when it has a key), else None."""
    option = BY_DEST[dest]
    value = config.getoption(dest)
    if value is None and option.ini_key:
        value = config.getini(option.ini_key)
    if value is None or value == "":
        return False if option.kind is bool else None
    if option.kind is bool:
        return bool(value)
    try:
        return option.kind(value)
    except ValueError:
        raise pytest.UsageError(f"{dest} = {value!r} is not a {option.kind.__name__}; fix it.") from None


@dataclass(frozen=True)
class SessionOptions:
    """What a gate session runs by, read and checked once: modes, gates' settings, where checks run."""

    modes: tuple[str, ...]
    strict: bool
    patterns: tuple[str, ...]
    settings: GateSettings
    endpoints: tuple[str, ...]  # replicas of one server; empty: checks run in process
    compare: bool
    batch_size: int
    concurrency: int
    timeout: float
    device: str
    no_cache: bool
    baseline: str | None
    thresholds: dict[str, float]  # gate name -> threshold, for the gates that are set

    @classmethod
    def read(cls, config: pytest.Config) -> SessionOptions:
        """The session's options; a value no run could use is a usage error before anything runs."""
        validation = setting(config, "reqcheck_validation") or "both"
        if validation not in MODES:
            raise pytest.UsageError(f"reqcheck_validation must be on, off or both, not {validation!r}.")
        compare = bool(config.getoption("reqcheck_compare"))
        endpoints = tuple(config.getoption("reqcheck_endpoint") or ())
        concurrency = config.getoption("reqcheck_concurrency")
        timeout = config.getoption("reqcheck_timeout")
        batch_size = config.getoption("reqcheck_batch_size")
        _at_least_one("--reqcheck-batch-size", batch_size, example=16)
        baseline = setting(config, "reqcheck_baseline")
        given = {kind.name: setting(config, dest(kind.option)) for kind in GATES}
        thresholds = {name: value for name, value in given.items() if value is not None}
        if compare:
            thresholds = {**COMPARE_GATES, **thresholds}
        _check_gates(thresholds, baseline, compare)
        _check_served(compare, endpoints, concurrency, timeout)
        return cls(
            modes=MODES[validation] + (("local",) if compare else ()),
            strict=setting(config, "reqcheck_strict"),
            patterns=(FIXTURE_PATTERN, *config.getini(FILES_INI)),
            settings=_gate_settings(config),
            endpoints=endpoints,
            compare=compare,
            batch_size=batch_size,
            concurrency=concurrency,
            timeout=timeout,
            device=config.getoption("reqcheck_device"),
            no_cache=bool(config.getoption("reqcheck_no_cache")),
            baseline=baseline,
            thresholds=thresholds,
        )

    @property
    def served(self) -> bool:
        """Whether checks go through --reqcheck-endpoint servers rather than in process."""
        return bool(self.endpoints)


def _check_gates(thresholds: dict[str, float], baseline: str | None, compare: bool) -> None:
    """Refuse thresholds no accuracy can meet, and a gate that lacks what it compares with, up front."""
    for kind in GATES:
        if kind.name not in thresholds:
            continue
        try:
            kind.check_threshold(thresholds[kind.name])
        except ReqcheckError as exc:
            raise pytest.UsageError(str(exc)) from None
        if kind.needs_baseline and not baseline:
            raise pytest.UsageError(f"{kind.option} needs --reqcheck-baseline REPORT.")
        if "local" in kind.modes and not compare:
            raise pytest.UsageError(f"{kind.option} needs --reqcheck-endpoint URL --reqcheck-compare.")


def _check_served(compare: bool, endpoints: tuple[str, ...], concurrency: int, timeout: float) -> None:
    """Refuse --reqcheck-compare without a server, fewer than one request in flight, and a deadline that
    no request could meet or that never comes."""
    if compare and not endpoints:
        raise pytest.UsageError(
            "--reqcheck-compare needs --reqcheck-endpoint URL, the server to compare with."
        )
    _at_least_one("--reqcheck-concurrency", concurrency, example=4)
    if not 0 < timeout < math.inf:  # NaN fails too
        raise pytest.UsageError(
            f"--reqcheck-timeout must be a number of seconds above 0, not {timeout}; pass e.g. 120."
        )


def _at_least_one(flag: str, value: int, example: int) -> None:
    """Refuse a count below one (cases per model call, requests in flight): no run could use it."""
    if value < 1:
        raise pytest.UsageError(f"{flag} must be at least 1; pass e.g. {example}.")


def _gate_settings(config: pytest.Config) -> GateSettings:
    confidence = setting(config, "reqcheck_confidence")
    try:
        return GateSettings(
            confidence=0.95 if confidence is None else confidence,
            gate_on=setting(config, "reqcheck_gate_on") or "point",
            items=setting(config, "reqcheck_report_items") or "text",
        )
    except ReqcheckError as exc:
        raise pytest.UsageError(str(exc)) from None


def outputs(config: pytest.Config) -> list[tuple[str, str]]:
    """(what, path) of every file the session writes: the report, the page, the CI step summary."""
    named = [(f"--{name.replace('_', '-')}", config.getoption(name)) for name in OUTPUT_OPTIONS]
    named.append(("GITHUB_STEP_SUMMARY", os.environ.get("GITHUB_STEP_SUMMARY")))
    return [(what, path) for what, path in named if path]

"""pytest-reqcheck: labelled `*.reqcheck.jsonl` lines become requirement-check test cases.

`pytest --adapter PATH` loads the adapter(s) into one session backend, runs every case through the
adapter (validation on) and the base-model judge (validation off) in batches, reports wrong labels as
expected failures (or failures with `--reqcheck-strict`), and adds gate items (accuracy, gain over
the judge, no regression, per-label recall) whose failure fails the run. Without `--adapter` the
plugin registers its options and nothing else: no torch or matplotlib import, no slower start-up.

This module holds the hooks and fixtures; the rooms hold the rest, one job each: `options` (the option
table), `adapters` (finding adapters, routing lines, the backends), `runner` (predictions and their
cache), `items` (files, cases and gates). Bookkeeping, statistics and verdicts live in
`reqcheck.gating.evaluation`, the renderings in `reqcheck.gating.report_text` and `report_html`.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_reqcheck.options import add_options, outputs
from reqcheck.errors import ReqcheckError

if TYPE_CHECKING:
    from pytest_reqcheck.items import Suite
    from reqcheck.formats.gate_report import GateReport

# the session's plugin object, kept the way _pytest.junitxml keeps its own
plugin_key = pytest.StashKey["ReqcheckPlugin"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


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
    from pytest_reqcheck.items import suite_key

    plugin = config.stash.get(plugin_key, None)
    if plugin is not None:
        del config.stash[plugin_key]
        del config.stash[suite_key]
        config.pluginmanager.unregister(plugin)


def refuse_clashing_outputs(
    config: pytest.Config, inputs: list[tuple[str, str]], baseline: str | None
) -> None:
    """Refuse an output path (report, page, step summary) that is the baseline, an input or another output."""
    from reqcheck.atomic import refuse_clashing_outputs as refuse

    if baseline:
        inputs = [*inputs, ("the baseline", baseline)]
    refuse(outputs(config), inputs)


class ReqcheckPlugin:
    """The session's hooks: collect fixture files, add the gate items, write and show the report."""

    def __init__(self, config: pytest.Config) -> None:
        from pytest_reqcheck.adapters import SessionAdapters
        from pytest_reqcheck.items import Suite, suite_key
        from pytest_reqcheck.options import SessionOptions
        from pytest_reqcheck.runner import PredictionRunner

        self.config = config
        options = SessionOptions.read(config)
        self.report: GateReport | None = None
        self.problems: list[str] = []
        try:
            refuse_clashing_outputs(config, [], options.baseline)
            adapters = SessionAdapters(config, options)
        except ReqcheckError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.suite: Suite = Suite(options, adapters, PredictionRunner(config, options, adapters))
        config.stash[suite_key] = self.suite

    # collection

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        from pytest_reqcheck.items import ReqcheckFile

        relative = (
            str(file_path.relative_to(self.config.rootpath))
            if file_path.is_relative_to(self.config.rootpath)
            else ""
        )
        patterns = self.suite.options.patterns
        if any(fnmatch.fnmatch(file_path.name, p) or fnmatch.fnmatch(relative, p) for p in patterns):
            return ReqcheckFile.from_parent(parent, path=file_path)
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        """Gates run after every case, whatever -k selected, so they appear in -v output and JUnit."""
        from pytest_reqcheck.items import GateItem, ReqcheckCase, make_gates

        cases = [item for item in items if isinstance(item, ReqcheckCase)]
        if not cases:
            return
        try:
            inputs = [("the fixture file", path) for path in self.suite.files]
            refuse_clashing_outputs(self.config, inputs, self.suite.options.baseline)
        except ReqcheckError as exc:
            pytest.exit(f"reqcheck: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        self.suite.gates = make_gates(self.suite, cases)
        items.extend(
            GateItem.from_parent(
                session,
                name=f"reqcheck-gate::{g.name}[{a}{'-' + g.label if g.label else ''}]",
                adapter=a,
                gate=g,
            )
            for a, g in self.suite.gates
        )

    # reporting

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Build the report once; write the JSON, the HTML page and the CI step summary its options name."""
        adapters = self.suite.adapters.by_name
        if not any(a.run.cases or a.run.errors for a in adapters.values()):
            return
        from reqcheck.gating.evaluation import build_report

        self.suite.adapters.record_failed_servers()
        for name, adapter in adapters.items():
            adapter.run.data = [f for fs in self.suite.files.values() for f in fs if f.adapter == name]
        self.report = build_report([a.run for a in adapters.values()])
        writers = [
            (self.config.getoption("reqcheck_report"), self._write_json),
            (self.config.getoption("reqcheck_html"), self._write_html),
            (os.environ.get("GITHUB_STEP_SUMMARY"), self._append_step_summary),
        ]
        for path, write in writers:
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
        from reqcheck.gating.explain import intervals_note
        from reqcheck.gating.report_text import terminal_lines

        terminalreporter.section("reqcheck")
        settings = self.suite.options.settings
        terminalreporter.write_line(intervals_note(settings.confidence, settings.gate_on))
        for entry in self.report.adapters:
            for line in terminal_lines(entry):
                terminalreporter.write_line(line)
            for gate in self.suite.ungated.get(entry.name, []):
                terminalreporter.write_line(f"  gate {gate}: no cases -> not gated")
        for problem in self.problems:
            terminalreporter.write_line(f"reqcheck: {problem}", red=True)


@pytest.fixture(scope="session")
def reqcheck_backend(request: pytest.FixtureRequest) -> Any:
    """The session's LocalHFBackend with the --adapter adapters registered (skips without --adapter)."""
    plugin = request.config.stash.get(plugin_key, None)
    if plugin is None:
        pytest.skip("reqcheck_backend needs pytest --adapter PATH")
    return plugin.suite.adapters.backend


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

"""What the gate writes for people and CI: the HTML page, the step summary, JUnit properties, bad inputs."""

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.plugin.test_plugin import CASES

pytest_plugins = ["pytester"]

# a line the adapter gets wrong (no "please", labelled yes), so the page and the summary show its text
SCRIPT_ITEM = '<script>alert("x")</script> & a | [link](http://example.com) *bold*'
SCRIPT_CASE = {"id": "c5", "item": SCRIPT_ITEM, "label": "yes"}
FORMAT_1 = {"report_format": 1, "passed": True,
            "adapters": [{"name": "alora", "modes": {"adapter": {"accuracy": 0.8}}, "gates": []}]}  # fmt: skip


@pytest.fixture
def suite(pytester: pytest.Pytester, tiny_adapters) -> tuple[pytest.Pytester, str]:
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c) for c in [*CASES, SCRIPT_CASE]))
    return pytester, str(tiny_adapters["alora"].outfile)


def run(suite, *args: str) -> pytest.RunResult:
    pytester, adapter = suite
    return pytester.runpytest(f"--adapter={adapter}", "--reqcheck-validation", "on", *args)


class Page(HTMLParser):
    """The tags, attributes, style text and table-cell text of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        self.cells: list[str] = []
        self.captions: list[str] = []
        self.style = ""
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(name, value or "") for name, value in attrs]
        self._open.append(tag)
        if tag == "td":
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        where = self._open[-1] if self._open else ""
        if where == "style":
            self.style += data
        elif where == "figcaption":
            self.captions.append(data)
        elif "td" in self._open:
            self.cells[-1] += data


def test_html_page_has_the_plots_loads_nothing_and_escapes_item_text(suite) -> None:
    pytester, _ = suite
    result = run(suite, "--reqcheck-min-accuracy", "0.5", "--reqcheck-html", "out/report.html")
    assert result.ret == 0
    text = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.tags.count("svg") == 5
    captions = " ".join(page.captions)
    for plot in (
        "Confusion matrices",
        "Recall per label",
        "Scores by expected label",
        "Reliability",
        "Training curve",
    ):
        assert plot in captions
    assert not {"script", "link", "img", "iframe", "object", "embed", "image"} & set(page.tags)
    assert not [(name, value) for name, value in page.attributes if name in ("src", "href", "xlink:href")
                and not value.startswith("#")]  # fmt: skip
    assert "url(" not in page.style and "@import" not in page.style
    assert "<script" not in text
    assert SCRIPT_ITEM in page.cells  # shown as the text it is, in the misclassified cases
    assert any(cell.startswith("min_accuracy") for cell in page.cells)


def test_report_items_hash_keeps_no_item_text(suite) -> None:
    pytester, _ = suite
    args = ["--reqcheck-report-items", "hash", "--reqcheck-report", "r.json", "--reqcheck-html", "r.html"]
    assert run(suite, *args).ret == 0
    report = json.loads((pytester.path / "r.json").read_text())
    cases = report["adapters"][0]["cases"]
    assert len(cases) == 5 and all("item" not in c and len(c["item_hash"]) == 64 for c in cases)
    html = (pytester.path / "r.html").read_text()
    assert "alert" not in html and "today please" not in html


def test_step_summary_is_appended_as_markdown_with_regressions_escaped(suite, monkeypatch) -> None:
    pytester, _ = suite
    assert run(suite, "--reqcheck-report", "base.json").ret == 0
    baseline = json.loads((pytester.path / "base.json").read_text())
    c5 = next(c for c in baseline["adapters"][0]["cases"] if c["id"] == "c5")
    c5["modes"]["adapter"]["predicted"] = "yes"  # right in the baseline, wrong now: a regression
    (pytester.path / "base.json").write_text(json.dumps(baseline))
    summary = pytester.path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run(suite, "--reqcheck-min-accuracy", "0.5", "--reqcheck-baseline", "base.json")
    assert result.ret == 0
    text = summary.read_text()
    assert text.startswith("earlier step\n## reqcheck gate: PASS\n")
    assert "| adapter | 5 | 0.600 | [0.231, 0.882] |" in text
    assert "| min_accuracy | ≥ 0.5 | 0.600 | [0.231, 0.882] | - | PASS on point (unresolved: about" in text
    assert "1 right → wrong, 0 wrong → right" in text
    row = next(line for line in text.splitlines() if line.startswith("| right → wrong |"))
    assert (
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a \\| \\[link\\](http://example.com) \\*bold\\*"
        in row
    )
    assert "<script" not in text


def test_gate_numbers_are_junit_properties(suite) -> None:
    pytester, _ = suite
    result = run(
        suite, "--reqcheck-min-accuracy", "0.7", "--reqcheck-gate-on", "bound", "--junitxml", "j.xml"
    )
    assert result.ret == 1
    case = next(
        c
        for c in ET.parse(pytester.path / "j.xml").iter("testcase")
        if c.get("name") == "min_accuracy[alora]"
    )
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["threshold"] == "0.7" and properties["value"] == "0.6" and properties["on"] == "bound"
    assert properties["passed"] == "False" and properties["n"] == "5"
    assert float(properties["bound"]) == float(properties["interval_low"]) == pytest.approx(0.2307, abs=1e-4)


def test_bound_gate_fails_on_the_lower_bound_and_says_how_many_cases_would_resolve_it(suite) -> None:
    point = run(suite, "--reqcheck-min-accuracy", "0.55")
    assert point.ret == 0
    bound = run(suite, "--reqcheck-min-accuracy", "0.55", "--reqcheck-gate-on", "bound")
    assert bound.ret == 1
    bound.stdout.fnmatch_lines([
        "*gate min_accuracy failed for alora: the lower bound 0.231 of its interval [[]0.231, 0.882[]] is not >= 0.55*",
        "*gate min_accuracy: 0.600 [[]0.231, 0.882[]] >= 0.55 -> FAIL (on the lower bound); the interval holds 0.55: "
        "about * cases would resolve it*",
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reqcheck-confidence", "1.5"], "*confidence level must lie strictly between 0 and 1, not 1.5*"),
        (["--reqcheck-gate-on", "median"], "*argument --reqcheck-gate-on: invalid choice: 'median'*"),
        (["--reqcheck-report-items", "all"], "*argument --reqcheck-report-items: invalid choice: 'all'*"),
        (["--reqcheck-baseline", "missing.json"], "*Report missing.json does not exist*"),
    ],
)
def test_bad_gate_options_are_usage_errors(suite, args: list[str], message: str) -> None:
    result = run(suite, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_baseline_of_another_format_is_one_sentence(suite) -> None:
    pytester, _ = suite
    (pytester.path / "new.json").write_text(json.dumps({"report_format": 7, "adapters": []}))
    result = run(suite, "--reqcheck-baseline", "new.json", "--reqcheck-max-drop", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*new.json is a gate report of format 7, and this reqcheck reads formats 1, 2*"]
    )


def test_a_format_1_baseline_works_for_point_gates_and_says_paired_gates_need_a_newer_report(suite) -> None:
    pytester, _ = suite
    (pytester.path / "old.json").write_text(json.dumps(FORMAT_1))
    args = ["--reqcheck-baseline", "old.json", "--reqcheck-max-drop", "0.25"]
    point = run(suite, *args)
    assert point.ret == 0
    point.stdout.fnmatch_lines([
        "*gate max_drop: 0.200 <= 0.25 -> PASS (on the point value)*",
        "*baseline: The baseline report old.json is of format 1 and holds no per-case records; regressions and "
        "paired gates need a baseline written by this reqcheck (report format 2).",
    ])  # fmt: skip
    bound = run(suite, *args, "--reqcheck-gate-on", "bound")
    assert bound.ret == 1
    bound.stdout.fnmatch_lines([
        "*reqcheck-gate::max_drop[[]alora[]]*",
        "The baseline report old.json is of format 1 and holds no per-case records; *",
        "*gate max_drop: FAIL: The baseline report old.json is of format 1*",
    ])  # fmt: skip


def test_a_baseline_of_other_cases_is_one_sentence(suite) -> None:
    pytester, _ = suite
    assert run(suite, "--reqcheck-report", "base.json").ret == 0
    baseline = json.loads((pytester.path / "base.json").read_text())
    for case in baseline["adapters"][0]["cases"]:
        case["item_hash"] = "0" * 64
    (pytester.path / "base.json").write_text(json.dumps(baseline))
    result = run(suite, "--reqcheck-baseline", "base.json", "--reqcheck-max-drop", "0")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*base.json shares no cases with this run (no item hash in common); pass a "
                                 "baseline written from the same test files.*"])  # fmt: skip


def test_reqcheck_report_renders_a_saved_report_without_a_model(suite, capsys, monkeypatch) -> None:
    pytester, _ = suite
    assert run(suite, "--reqcheck-report", "r.json").ret == 0
    code, err = run_cli(["report", str(pytester.path / "r.json"), "--html", str(pytester.path / "r.html")],
                        capsys, monkeypatch)  # fmt: skip
    assert code == 0 and "wrote" in err
    assert Page((pytester.path / "r.html").read_text()).tags.count("svg") == 5
    old = pytester.path / "old.json"
    old.write_text(json.dumps(FORMAT_1))
    code, err = run_cli(["report", str(old), "--html", str(pytester.path / "old.html")], capsys, monkeypatch)
    assert code == 2 and "format 1 and holds no per-case records" in err
    assert not (pytester.path / "old.html").exists()
    code, err = run_cli(["report", str(Path("nowhere.json")), "--html", "x.html"], capsys, monkeypatch)
    assert code == 2 and "does not exist" in err


def test_runs_without_the_cache_plugin(suite) -> None:
    result = run(suite, "-p", "no:cacheprovider", "--reqcheck-min-accuracy", "0.5")
    result.assert_outcomes(passed=4, xfailed=2)


def test_an_output_that_cannot_be_written_ends_the_run_with_one_line(suite) -> None:
    pytester, _ = suite
    (pytester.path / "taken").write_text("a file, not a folder")
    result = run(suite, "--reqcheck-report", "r.json", "--reqcheck-html", "taken/r.html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["reqcheck: could not write taken/r.html: *"])
    assert json.loads((pytester.path / "r.json").read_text())["report_format"] == 2


def test_report_items_hash_keeps_item_text_out_of_the_terminal_and_junit(suite) -> None:
    pytester, _ = suite
    for strict in ([], ["--reqcheck-strict"]):
        result = run(suite, "--reqcheck-report-items", "hash", "-rx", "--junitxml", "junit.xml", *strict)
        output = "\n".join(result.outlines) + (pytester.path / "junit.xml").read_text()
        assert "alert" not in output and "today please" not in output and "shipped" not in output
        assert "for item sha256:" in output


def test_a_failed_case_cuts_a_long_item_in_its_message(pytester: pytest.Pytester, tiny_adapters) -> None:
    long_item = "no polite word here " * 40
    pytester.makefile(".reqcheck.jsonl", cases=json.dumps({"id": "long", "item": long_item, "label": "yes"}))
    result = pytester.runpytest(
        f"--adapter={tiny_adapters['alora'].outfile}", "--reqcheck-validation", "on", "-rx"
    )
    result.assert_outcomes(xfailed=1)
    assert long_item not in result.stdout.str() and "no polite word here" in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "clash"),
    [
        (
            ["--reqcheck-report", "cases.reqcheck.jsonl"],
            "--reqcheck-report cases.reqcheck.jsonl is also the fixture",
        ),
        (
            ["--reqcheck-html", "cases.reqcheck.jsonl"],
            "--reqcheck-html cases.reqcheck.jsonl is also the fixture",
        ),
        (
            ["--reqcheck-report", "r.json", "--reqcheck-html", "r.json"],
            "--reqcheck-html r.json is also --reqcheck-report",
        ),
        (
            ["--reqcheck-baseline", "base.json", "--reqcheck-report", "base.json"],
            "is also the baseline base.json",
        ),
    ],
)
def test_an_output_that_is_an_input_or_the_other_output_is_refused(
    suite, args: list[str], clash: str
) -> None:
    pytester, _ = suite
    assert run(suite, "--reqcheck-report", "base.json").ret == 0
    before = {p.name: p.read_bytes() for p in pytester.path.iterdir() if p.is_file()}
    result = run(suite, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert clash in result.stdout.str() + result.stderr.str()
    assert {p.name: p.read_bytes() for p in pytester.path.iterdir() if p.is_file()} == before


def test_a_partial_run_is_recorded_in_the_report_and_the_terminal(suite) -> None:
    pytester, _ = suite
    result = run(suite, "-k", "c1 or c2", "--reqcheck-min-accuracy", "0.5", "--reqcheck-report", "part.json")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*partial run: 2 of 5 collected cases ran*--allow-partial-gate*"])
    entry = json.loads((pytester.path / "part.json").read_text())["adapters"][0]
    assert (entry["collected"], entry["ran"], entry["partial"]) == (5, 2, True)
    assert run(suite, "--reqcheck-report", "whole.json").ret == 0
    entry = json.loads((pytester.path / "whole.json").read_text())["adapters"][0]
    assert (entry["collected"], entry["ran"], entry["partial"]) == (5, 5, False)


# a hand-edited report: each numeric field the page shows, holding markup (the CSP blocks scripts, not forms)
NUMERIC_FIELDS = {
    "modes.adapter.n": ("modes", "adapter", "n"),
    "modes.adapter.cached": ("modes", "adapter", "cached"),
    "modes.adapter.accuracy": ("modes", "adapter", "accuracy"),
    "data[0].n": ("data", 0, "n"),
    "baseline.shared": ("baseline", "shared"),
    "baseline.baseline_only": ("baseline", "baseline_only"),
    "baseline.current_only": ("baseline", "current_only"),
    "gates[0].n": ("gates", 0, "n"),
    "gates[0].threshold": ("gates", 0, "threshold"),
    "cases[0].line": ("cases", 0, "line"),
    "confidence": ("confidence",),
}
HOSTILE_VALUES = [
    "<img src=x>",
    '<form action="https://example.com">',
    '<meta http-equiv="refresh" content="0">',
]


def test_markup_in_a_numeric_field_is_one_sentence_and_no_page(suite, capsys, monkeypatch) -> None:
    pytester, _ = suite
    assert run(suite, "--reqcheck-report", "base.json").ret == 0
    assert run(suite, "--reqcheck-min-accuracy", "0.5", "--reqcheck-baseline", "base.json",
               "--reqcheck-report", "r.json").ret == 0  # fmt: skip
    good = json.loads((pytester.path / "r.json").read_text())
    for name, path in NUMERIC_FIELDS.items():
        for value in HOSTILE_VALUES:
            report = json.loads(json.dumps(good))
            node = report["adapters"][0]
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            (pytester.path / "bad.json").write_text(json.dumps(report))
            page = pytester.path / "bad.html"
            code, err = run_cli(
                ["report", str(pytester.path / "bad.json"), "--html", str(page)], capsys, monkeypatch
            )
            assert code == 2 and err.startswith("error: ") and f"adapters[0].{name} is not" in err, (
                name,
                err,
            )
            assert "\n" not in err.strip() and not page.exists()


DAMAGED_REPORTS = {
    "accuracy a word": lambda e: e["modes"]["adapter"].update(accuracy="high"),
    "gate without name": lambda e: e["gates"][0].pop("name"),
    "gate a string": lambda e: e["gates"].__setitem__(0, "min_accuracy"),
    "case without modes as objects": lambda e: e["cases"][0].update(modes={"adapter": "yes"}),
    "case without expected": lambda e: e["cases"][0].pop("expected"),
    "probabilities of words": lambda e: e["cases"][0]["modes"]["adapter"].update(probabilities={"yes": "hi"}),
    "cases an object": lambda e: e.update(cases={"c1": 1}),
    "interval of three": lambda e: e["modes"]["adapter"].update(accuracy_interval="[0, 1]"),
    "data of strings": lambda e: e.update(data=["cases.reqcheck.jsonl"]),
    "training a list": lambda e: e.update(training=[1]),
}


def test_damaged_reports_and_baselines_are_one_sentence(suite, capsys, monkeypatch) -> None:
    pytester, _ = suite
    assert run(suite, "--reqcheck-min-accuracy", "0.5", "--reqcheck-report", "good.json").ret == 0
    good = json.loads((pytester.path / "good.json").read_text())
    for name, damage in DAMAGED_REPORTS.items():
        report = json.loads(json.dumps(good))
        damage(report["adapters"][0])
        (pytester.path / "bad.json").write_text(json.dumps(report))
        code, err = run_cli(
            ["report", str(pytester.path / "bad.json"), "--html", "bad.html"], capsys, monkeypatch
        )
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err, (name, err)
    result = run(
        suite, "--reqcheck-baseline", "bad.json", "--reqcheck-max-drop", "0.1", "--reqcheck-report", "r.json"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "INTERNALERROR" not in result.stdout.str()
    assert "bad.json: adapters[0].training is not an object" in result.stderr.str()


def test_report_paths_that_are_folders_or_lie_under_a_file_are_one_sentence(
    suite, capsys, monkeypatch
) -> None:
    pytester, _ = suite
    assert run(suite, "--reqcheck-report", "r.json").ret == 0
    (pytester.path / "folder").mkdir()
    report = str(pytester.path / "r.json")
    cases = {
        "html a folder": ([report, "--html", str(pytester.path / "folder")], "is a directory"),
        "html under a file": ([report, "--html", str(pytester.path / "r.json/x.html")], "lies under a file"),
        "report under a file": (
            [str(pytester.path / "r.json/x.json"), "--html", "x.html"],
            "part of its path is a file",
        ),
        "html is the report": ([report, "--html", report], "is also the report"),
    }
    for name, (args, message) in cases.items():
        code, err = run_cli(["report", *args], capsys, monkeypatch)
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
    assert json.loads((pytester.path / "r.json").read_text())["report_format"] == 2

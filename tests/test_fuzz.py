"""Property-based fuzzing of everything that reads a user's file: JSONL data, io.yaml and gate reports.

Whatever the bytes, the only failures allowed are ReqcheckError (exit code 2 on the command line) or a
pytest collection error that lists `file:line: reason`; every reported line number exists. The `ci`
profile (tests/conftest.py) keeps this under 30 s; `--hypothesis-profile thorough` runs many more cases.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reqcheck.cli import main
from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import fingerprint, label_counts, load_examples
from reqcheck.formats.gate_report import DataFile, Gate
from reqcheck.formats.io_yaml import RESPONSE_SCHEMA
from reqcheck.formats.manifest import content_hash
from reqcheck.gating.cases import Prediction
from reqcheck.gating.evaluation import AdapterRun, build_report
from reqcheck.training.config import TrainConfig
from reqcheck.training.prepare import load_training_data

# --- generated values -------------------------------------------------------------------------------

SPECIAL_TEXT = [
    "",
    " ",
    "\t",
    "\u2028",
    "\u2029",
    "\u0085",
    "\x00",
    "\ufeff",
    "yes",
    "no",
    " yes ",
    "é",
    "🙂",
]
texts = st.one_of(st.sampled_from(SPECIAL_TEXT), st.text(max_size=30))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
labels = st.one_of(st.sampled_from(["yes", "no", "maybe", " yes ", "", "   "]), texts)

objects = st.fixed_dictionaries(
    {},
    optional={
        "item": st.one_of(texts, texts, json_values),
        "label": st.one_of(labels, labels, json_values),
        "requirement": st.one_of(texts, json_values),
        "id": st.one_of(st.integers(), st.sampled_from(["a", "a", "b", "x/y", "[1]", "::"]), json_values),
        "unknown": json_values,
    },
)
HOSTILE_LINES = [
    "[" * 100_000,
    "{" * 3000,
    '{"item": "x", "label": "yes", "id": ' + "9" * 5000 + "}",
    '{"item": "lone \\ud800 surrogate", "label": "no"}',
    '{"item": "ok", "label": "\\udfff"}',
    "null",
    "[]",
    "42",
    '"text"',
    "{}",
    "\x00",
    '{"item": "a\x00b", "label": "yes"}',
    "NaN",
]


@st.composite
def jsonl_lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["good", "object", "object", "hostile", "json", "text"]))
    if kind == "good":
        row = {"item": draw(st.text(min_size=1, max_size=20).filter(str.strip)), "label": draw(labels)}
        return json.dumps(row, ensure_ascii=draw(st.booleans()))
    if kind == "object":
        return json.dumps(draw(objects), ensure_ascii=draw(st.booleans()))
    if kind == "hostile":
        return draw(st.sampled_from(HOSTILE_LINES))
    if kind == "json":
        return json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    return draw(st.text(max_size=40))


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    """A JSONL file as bytes: LF or CRLF, maybe a BOM, maybe invalid UTF-8 or NUL bytes spliced in."""
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = draw(st.lists(jsonl_lines(), max_size=12))
    data = (newline.join(lines) + draw(st.sampled_from(["", newline]))).encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(data)))
        data = (
            data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80", b"\r"])) + data[at:]
        )
    return data


# --- shared checks ----------------------------------------------------------------------------------


def assert_lines_named(message: str, path: Path, data: bytes) -> None:
    """Every `path:N:` in the message names a line the file has."""
    n_lines = data.count(b"\n") + 1
    numbers = [int(n) for n in re.findall(rf"{re.escape(str(path))}:(\d+):", message)]
    assert all(1 <= n <= n_lines for n in numbers), (numbers, n_lines)


class Workspace:
    """A fresh folder per generated case (hypothesis reuses one test's tmp_path for all of its cases)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def new(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root))


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def cli(args: list[str]) -> tuple[int, str]:
    """Run `reqcheck ARGS` in-process (no function-scoped fixtures: hypothesis calls this many times)."""
    err = io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["reqcheck", *args]), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, err.getvalue()


def assert_clean_exit(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("error: "), err


# --- JSONL through the data loader, `reqcheck train`'s validation and the plugin's collection -------


@given(data=jsonl_files())
def test_data_loader_raises_only_reqcheck_errors_naming_lines(workspace: Workspace, data: bytes) -> None:
    path = workspace.new() / "data.jsonl"
    path.write_bytes(data)
    try:
        examples = load_examples(path)
    except ReqcheckError as exc:
        assert_lines_named(str(exc), path, data)
        return
    assert examples and all(e.item.strip() and e.label for e in examples)
    assert len(fingerprint(examples)) == 64 and sum(label_counts(examples).values()) == len(examples)


@given(
    data=jsonl_files(),
    val_fraction=st.one_of(st.sampled_from([0.0, 0.2, 0.5, 0.99, 1.0, -0.1]), st.floats(allow_nan=True)),
    positive=st.lists(labels, max_size=2),
)
def test_train_data_validation_raises_only_reqcheck_errors(
    workspace: Workspace, data: bytes, val_fraction: float, positive: list[str]
) -> None:
    folder = workspace.new()
    path = folder / "train.jsonl"
    path.write_bytes(data)
    try:  # the config refuses a bad --val-fraction itself; the data is checked after it
        config = TrainConfig(
            path, "unused-model", folder / "out", val_fraction=val_fraction, positive_labels=positive
        )
        examples, train, val = load_training_data(config)
    except ReqcheckError as exc:
        assert_lines_named(str(exc), path, data)
        return
    assert len(train) + len(val) == len(examples) and len(label_counts(examples)) >= 2


class CollectionReports:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.failed.append(report.longreprtext)


@settings(max_examples=max(8, settings.default.max_examples // 2))  # a pytest session per case
@given(data=jsonl_files())
def test_plugin_collection_fails_only_with_line_listing_errors(
    workspace: Workspace, tiny_adapters, data: bytes
) -> None:
    folder = workspace.new()
    path = folder / "cases.reqcheck.jsonl"
    path.write_bytes(data)
    reports = CollectionReports()
    # only what collection needs: unraisableexception alone costs two full gc passes per session
    quiet = [f"-pno:{name}" for name in ("cacheprovider", "hypothesispytest", "anyio", "unraisableexception")]
    args = ["--collect-only", "-q", *quiet, f"--rootdir={folder}", str(path)]
    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main([*args, f"--adapter={tiny_adapters['alora'].outfile}"], plugins=[reports])
    assert code in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED, pytest.ExitCode.INTERRUPTED)
    assert (code == pytest.ExitCode.INTERRUPTED) == bool(reports.failed)
    for text in reports.failed:
        assert re.match(r"\d+ bad line\(s\) in ", text) and "Traceback" not in text, text
        assert_lines_named(text, path, data)


# --- io.yaml through `reqcheck package`, gate reports through `upload --dry-run` and `package` --------

steps = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["likelihood", "nest", "project", ""])},
        optional={
            "input_path": json_values,
            "field_name": json_values,
            "categories_to_values": st.one_of(st.dictionaries(texts, scalars, max_size=3), json_values),
        },
    ),
    json_values,
)
io_configs = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values,
        "response_format": st.one_of(
            st.just(json.dumps(RESPONSE_SCHEMA)), json_values.map(json.dumps), texts, json_values
        ),
        "transformations": st.one_of(st.none(), st.lists(steps, max_size=3), json_values),
        "parameters": st.one_of(st.none(), st.dictionaries(texts, scalars, max_size=2), json_values),
        "instruction": st.one_of(texts, json_values),
        "unexpected": json_values,
    },
)
RAW_YAML = ["a: [", ":", "- - -\n  x", "!!python/object/apply:os.system ['true']", "\t", "key: &a [*a]", "{{"]


@st.composite
def io_yaml_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["config", "config", "raw", "text", "bytes"]))
    if kind == "config":
        return yaml.safe_dump(draw(io_configs), allow_unicode=draw(st.booleans())).encode("utf-8")
    if kind == "raw":
        return draw(st.sampled_from(RAW_YAML)).encode()
    if kind == "text":
        return draw(st.text(max_size=60)).encode("utf-8")
    return draw(st.binary(max_size=40))


@pytest.fixture
def adapter(tiny_adapters, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_adapters["alora"].outfile, tmp_path / "adapter"))


@given(text=io_yaml_files())
def test_package_accepts_a_valid_io_yaml_verbatim_and_refuses_others_in_one_sentence(
    workspace: Workspace, adapter: Path, text: bytes
) -> None:
    folder = workspace.new()
    (folder / "io.yaml").write_bytes(text)
    out = folder / "out"
    code, err = cli(
        [
            "package",
            str(adapter),
            "--name",
            "acme/fuzz",
            "--out",
            str(out),
            "--io-yaml",
            str(folder / "io.yaml"),
        ]
    )
    assert_clean_exit(code, err)
    if code == 0:
        (written,) = out.rglob("io.yaml")
        assert written.read_bytes() == text


def valid_report(adapter: Path) -> dict:
    metrics = {"n": 40, "accuracy": 0.95, "macro_f1": 0.94, "latency_ms": {"p50": 9.0, "p95": 12.0}}
    gate = {"name": "min_accuracy", "mode": "adapter", "threshold": 0.9, "value": 0.95, "passed": True}
    entry = {
        "name": "adapter",
        "path": str(adapter),
        "content_hash": content_hash(adapter),
        "modes": {"adapter": metrics, "judge": {**metrics, "accuracy": 0.6}},
        "gates": [gate],
        "passed": True,
    }
    return {"report_format": 1, "reqcheck_version": "0.1.0", "passed": True, "adapters": [entry]}


def _slots(node: object) -> list[tuple[object, object]]:
    """Every (container, key) of a JSON tree, for mutating one of them."""
    found: list[tuple[object, object]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += [(node, key), *_slots(value)]
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += [(node, index), *_slots(value)]
    return found


def format_2_report(adapter: Path) -> dict:
    """A report as the plugin writes it (format 2: cases, gates with intervals, a baseline comparison)."""
    run = AdapterRun("adapter", str(adapter), content_hash(adapter), {"name": "tiny"}, "alora", ["no", "yes"],
                     ["yes"], gates=[Gate("min_accuracy", "adapter", 0.5)], collected=6)  # fmt: skip
    for line, (expected, yes) in enumerate([("yes", 0.9), ("no", 0.2), ("no", 0.7)], start=1):
        for mode in ("adapter", "judge"):
            prediction = Prediction({"no": 1 - yes, "yes": yes}, 0.01)
            run.record(id=f"c{line}", file="t.reqcheck.jsonl", line=line, item=f"item {line}",
                       expected=expected, mode=mode, prediction=prediction)  # fmt: skip
    run.data = [DataFile("t.reqcheck.jsonl", "adapter", "sha256:" + "0" * 64, 3)]
    for gate in run.gates:
        run.evaluate(gate)
    report = build_report([run]).to_dict()
    report["adapters"][0]["baseline"] = {"path": "base.json", "shared": 3, "baseline_only": 0, "current_only": 0,
                                         "right_to_wrong": [], "wrong_to_right": []}  # fmt: skip
    return report


# markup where a page shows a value: the page's CSP blocks scripts, not forms, images or a meta refresh
MARKUP = ["<img src=x>", '<form action="https://example.com">', '<meta http-equiv="refresh" content="0">']
hostile_values = st.one_of(json_values, st.sampled_from(MARKUP))


def damaged(draw: st.DrawFn, value: dict) -> dict:
    """`value` with one to three of its parts deleted or replaced by other JSON or by markup."""
    value = copy.deepcopy(value)
    for _ in range(draw(st.integers(1, 3))):
        container, key = draw(st.sampled_from(_slots(value)))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(hostile_values)  # type: ignore[index]
        if not _slots(value):
            break
    return value


@st.composite
def gate_reports(draw: st.DrawFn, adapter: Path, format_2: bool = False) -> bytes:
    """A valid report for `adapter` with a few parts deleted or replaced, or JSON that is no report at all."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    return json.dumps(damaged(draw, format_2_report(adapter) if format_2 else valid_report(adapter))).encode()


@given(data=st.data())
def test_gate_reports_through_upload_dry_run_and_package_end_in_one_sentence(
    workspace: Workspace, adapter: Path, data: st.DataObject
) -> None:
    folder = workspace.new()
    report = folder / "report.json"
    report.write_bytes(data.draw(gate_reports(adapter)))
    gate = ["--gate", str(report)]
    code, err = cli(["upload", str(adapter), "--name", "acme/fuzz", "--intrinsic", *gate, "--dry-run"])
    assert_clean_exit(code, err)
    code, err = cli(["package", str(adapter), "--name", "acme/fuzz", "--out", str(folder / "out"), *gate])
    assert_clean_exit(code, err)


def test_a_ten_megabyte_line_is_read_or_reported(tmp_path: Path) -> None:
    big = "x " * 5_000_000
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"item": big, "label": "yes"}) + "\n" + '{"item": "' + big + "\n")
    with pytest.raises(ReqcheckError, match=rf"{re.escape(str(path))}:2: not valid JSON"):
        load_examples(path)


@settings(max_examples=max(8, settings.default.max_examples // 3))  # a page with five plots per case
@given(data=st.data())
def test_damaged_reports_through_reqcheck_report_end_in_one_sentence_and_no_markup(
    workspace: Workspace, adapter: Path, data: st.DataObject
) -> None:
    folder = workspace.new()
    (folder / "report.json").write_bytes(data.draw(gate_reports(adapter, format_2=True)))
    page = folder / "report.html"
    code, err = cli(["report", str(folder / "report.json"), "--html", str(page)])
    assert_clean_exit(code, err)
    assert page.exists() == (code == 0)
    if code == 0:
        text = page.read_text(encoding="utf-8")
        assert not [markup for markup in MARKUP if markup in text]


@settings(max_examples=max(8, settings.default.max_examples // 4))  # a pytest session per case
@given(data=st.data())
def test_damaged_baselines_are_usage_errors_of_the_plugin(
    workspace: Workspace, adapter: Path, data: st.DataObject
) -> None:
    folder = workspace.new()
    (folder / "base.json").write_bytes(data.draw(gate_reports(adapter, format_2=True)))
    (folder / "t.reqcheck.jsonl").write_text(json.dumps({"item": "a", "label": "yes"}) + "\n")
    quiet = [f"-pno:{name}" for name in ("cacheprovider", "hypothesispytest", "anyio", "unraisableexception")]
    args = ["--collect-only", "-q", *quiet, f"--rootdir={folder}", str(folder / "t.reqcheck.jsonl")]
    baseline = [
        f"--adapter={adapter}",
        f"--reqcheck-baseline={folder / 'base.json'}",
        "--reqcheck-max-drop=0.1",
    ]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = pytest.main([*args, *baseline])
    assert code in (pytest.ExitCode.OK, pytest.ExitCode.USAGE_ERROR), err.getvalue()
    assert "Traceback" not in err.getvalue()


@st.composite
def manifests(draw: st.DrawFn, adapter: Path) -> bytes:
    """The adapter's reqcheck.json with a few parts deleted or replaced, or JSON that is no manifest."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    return json.dumps(damaged(draw, json.loads((adapter / "reqcheck.json").read_text()))).encode()


@settings(max_examples=max(8, settings.default.max_examples // 2))
@given(data=st.data())
def test_damaged_manifests_through_package_and_upload_end_in_one_sentence(
    workspace: Workspace, adapter: Path, data: st.DataObject
) -> None:
    folder = workspace.new()
    copy_of = Path(shutil.copytree(adapter, folder / "adapter"))
    (copy_of / "reqcheck.json").write_bytes(data.draw(manifests(adapter)))
    upload = ["upload", str(copy_of), "--name", "acme/fuzz", "--intrinsic", "--no-gate", "--dry-run"]
    assert_clean_exit(*cli(upload))
    assert_clean_exit(*cli(["package", str(copy_of), "--name", "acme/fuzz", "--out", str(folder / "out")]))

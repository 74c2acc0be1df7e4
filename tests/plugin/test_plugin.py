"""The pytest plugin, driven with pytester on the tiny model and its marker-task adapter."""

import json
import shutil
from pathlib import Path

import pytest
from scipy.stats import binomtest

from reqcheck.formats.manifest import content_hash
from tests.helpers import PLEASE


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The reference interval: SciPy's Wilson score interval at 95%."""
    interval = binomtest(successes, n).proportion_ci(0.95, method="wilson")
    return interval.low, interval.high


pytest_plugins = ["pytester"]

PLEASE_ITEM = "the reply please is late"
PLAIN_ITEM = "the reply is late"
# the adapter gets every line right except the mislabelled third: expected no, predicted yes
CASES = [
    {"id": "c1", "item": PLEASE_ITEM, "label": "yes"},
    {"id": "c2", "item": PLAIN_ITEM, "label": "no"},
    {"id": "c3", "item": "we will help you today please", "label": "no"},
    {"id": "c4", "item": "your refund is shipped today", "label": "no"},
]


@pytest.fixture
def suite(pytester: pytest.Pytester, tiny_adapters) -> tuple[pytest.Pytester, str]:
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c) for c in CASES))
    return pytester, str(tiny_adapters["alora"].outfile)


def run(suite, *args: str) -> pytest.RunResult:
    pytester, adapter = suite
    return pytester.runpytest(f"--adapter={adapter}", *args)


def test_lines_become_cases_in_both_modes(suite) -> None:
    result = run(suite, "--collect-only", "-q")
    names = [line.split("/")[-1] for line in result.outlines if "::" in line]
    assert names == [
        f"cases.reqcheck.jsonl::c{i}[{mode}]" for i in range(1, 5) for mode in ("adapter", "judge")
    ]


def test_a_wrong_label_is_an_expected_failure_by_default_and_a_failure_when_strict(suite) -> None:
    result = run(suite, "--reqcheck-validation", "on", "-rx")
    result.assert_outcomes(passed=3, xfailed=1)
    result.stdout.fnmatch_lines(
        ["*c3*adapter: expected 'no', got 'yes'*for item 'we will help you today please'*"]
    )
    strict = run(suite, "--reqcheck-validation", "on", "--reqcheck-strict")
    strict.assert_outcomes(passed=3, failed=1)
    assert strict.ret == 1


def test_judge_mode_runs_the_base_model(suite) -> None:
    result = run(suite, "--reqcheck-validation", "off", "-v")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("xfailed", 0) == 4
    result.stdout.fnmatch_lines(["*c1?judge?*"])


def test_bad_lines_are_collection_errors_with_file_and_line(pytester: pytest.Pytester, tiny_adapters) -> None:
    pytester.makefile(".reqcheck.jsonl", broken='{"item": "a", "label": "yes"}\nnot json\n{"item": "b"}\n')
    result = pytester.runpytest(f"--adapter={tiny_adapters['alora'].outfile}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*2 bad line(s)*", "*broken.reqcheck.jsonl:2: not valid JSON*",
                                 "*broken.reqcheck.jsonl:3: missing required key 'label'*"])  # fmt: skip


@pytest.mark.parametrize(
    ("args", "failed_gate"),
    [
        (["--reqcheck-min-accuracy", "0.7"], None),
        (["--reqcheck-min-accuracy", "0.8"], "min_accuracy"),
        (["--reqcheck-min-recall", "0.6"], None),
        (["--reqcheck-min-recall", "0.7"], "min_recall"),
    ],
)
def test_gates_pass_and_fail_with_the_right_exit_code(
    suite, args: list[str], failed_gate: str | None
) -> None:
    result = run(suite, "--reqcheck-validation", "on", "-v", *args)
    assert result.ret == (1 if failed_gate else 0)
    result.stdout.fnmatch_lines(
        ["*reqcheck-gate::*PASSED*" if not failed_gate else f"*reqcheck-gate::{failed_gate}*FAILED*"]
    )
    if failed_gate:
        result.stdout.fnmatch_lines([f"*gate {failed_gate} failed for alora*"])


def test_gain_gate_compares_adapter_with_judge(suite) -> None:
    result = run(suite, "--reqcheck-min-gain", "1.0", "--reqcheck-report", "report.json")
    assert result.ret == 1
    report = json.loads((suite[0].path / "report.json").read_text())
    gate = report["adapters"][0]["gates"][0]
    modes = report["adapters"][0]["modes"]
    assert gate["name"] == "min_gain" and gate["passed"] is False
    assert gate["value"] == pytest.approx(modes["adapter"]["accuracy"] - modes["judge"]["accuracy"])
    assert run(suite, "--reqcheck-validation", "on", "--reqcheck-min-gain", "0").ret == 1


def test_baseline_gate_catches_a_regression_and_names_the_cases(suite) -> None:
    pytester, _ = suite
    assert run(suite, "--reqcheck-validation", "on", "--reqcheck-report", "base.json").ret == 0
    baseline = json.loads((pytester.path / "base.json").read_text())
    c3 = next(c for c in baseline["adapters"][0]["cases"] if c["id"] == "c3")
    c3["modes"]["adapter"]["predicted"] = "no"  # the baseline got c3 right; this run gets it wrong
    (pytester.path / "base.json").write_text(json.dumps(baseline))
    args = ["--reqcheck-validation", "on", "--reqcheck-baseline", "base.json", "--reqcheck-report", "r.json"]
    failed = run(suite, *args, "--reqcheck-max-drop", "0.1")
    assert failed.ret == 1
    failed.stdout.fnmatch_lines([
        "*gate max_drop failed for alora: 0.250 is not <= 0.1*",
        "*baseline base.json: 4 shared cases; 1 right->wrong, 0 wrong->right*",
        "*right->wrong c3 (cases.reqcheck.jsonl:3) expected 'no': now 'yes' (p=*), was 'no'*",
    ])  # fmt: skip
    entry = json.loads((pytester.path / "r.json").read_text())["adapters"][0]
    assert [c["id"] for c in entry["baseline"]["right_to_wrong"]] == ["c3"]
    assert run(suite, *args, "--reqcheck-max-drop", "0.25").ret == 0
    # one case in four is no evidence of a drop: paired, the gate passes even at max-drop 0
    bound = run(suite, *args, "--reqcheck-max-drop", "0", "--reqcheck-gate-on", "bound")
    assert bound.ret == 0
    bound.stdout.fnmatch_lines(["*gate max_drop: 0.250 [[]*, *[]] p=1 <= 0.0 -> PASS (on the lower bound)*"])


def test_report_matches_a_hand_computed_confusion_matrix(suite, tiny_adapters) -> None:
    pytester, adapter = suite
    result = run(suite, "--reqcheck-min-accuracy", "0.7", "--reqcheck-report", "out/report.json")
    assert result.ret == 0
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["report_format"] == 2 and report["passed"] is True and report["reqcheck_version"]
    entry = report["adapters"][0]
    assert entry["content_hash"] == content_hash(adapter)
    assert entry["base_model"]["name"] == "tiny-model0" and entry["adapter_type"] == "alora"
    assert entry["data"][0]["n"] == 4 and len(entry["data"][0]["fingerprint"]) == 64
    adapter_mode = entry["modes"]["adapter"]
    assert adapter_mode["confusion"] == {"labels": ["no", "yes"], "matrix": [[2, 1], [0, 1]]}
    assert adapter_mode["accuracy"] == 0.75
    assert adapter_mode["per_label"]["no"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "recall_interval": pytest.approx(wilson(2, 3)),
        "f1": 0.8,
        "support": 3,
    }
    assert adapter_mode["per_label"]["yes"] == {
        "precision": 0.5,
        "recall": 1.0,
        "recall_interval": pytest.approx(wilson(1, 1)),
        "f1": pytest.approx(2 / 3),
        "support": 1,
    }
    assert adapter_mode["accuracy_interval"] == pytest.approx(wilson(3, 4))
    assert adapter_mode["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert set(adapter_mode["latency_ms"]) == {"p50", "p95"} and adapter_mode["items_per_s"] > 0
    assert set(entry["modes"]) == {"adapter", "judge"}
    low, high = wilson(3, 4)
    assert entry["gates"] == [
        {"name": "min_accuracy", "mode": "adapter", "threshold": 0.7, "on": "point", "value": 0.75,
         "interval": pytest.approx([low, high]), "bound": pytest.approx(low), "n": 4, "resolved": False,
         "cases_needed": entry["gates"][0]["cases_needed"], "passed": True}
    ]  # fmt: skip
    assert entry["gates"][0]["cases_needed"] > 4
    result.stdout.fnmatch_lines([
        "*reqcheck*",
        "*intervals: 95% (Wilson*gates decided on the point value*",
        f"*adapter*4*0.750*[[]{low:.3f}, {high:.3f}[]]*",
        "*judge*4*",
        "*recall (adapter): no 0.667 [[]*[]] (3), yes 1.000 [[]*[]] (1)*",
        f"*gate min_accuracy: 0.750 [[]{low:.3f}, {high:.3f}[]] >= 0.7 -> PASS (on the point value); the interval "
        "holds 0.7: about * cases would resolve it*",
    ])  # fmt: skip


def test_second_run_is_served_from_the_cache(suite) -> None:
    first = run(suite, "--reqcheck-report", "first.json")
    second = run(suite, "--reqcheck-report", "second.json", "--reqcheck-min-accuracy", "0.5")
    cleared = run(suite, "--reqcheck-report", "cleared.json", "--cache-clear")
    uncached = run(suite, "--reqcheck-report", "uncached.json", "--reqcheck-no-cache")
    assert {first.ret, second.ret, cleared.ret, uncached.ret} == {0}
    cached = {name: json.loads((suite[0].path / f"{name}.json").read_text())["adapters"][0]["modes"]
              for name in ("first", "second", "cleared", "uncached")}  # fmt: skip
    assert [cached["first"][m]["cached"] for m in ("adapter", "judge")] == [0, 0]
    assert [cached["second"][m]["cached"] for m in ("adapter", "judge")] == [4, 4]
    assert [cached["cleared"][m]["cached"] for m in ("adapter", "judge")] == [0, 0]
    assert [cached["uncached"][m]["cached"] for m in ("adapter", "judge")] == [0, 0]
    assert cached["second"]["adapter"]["confusion"] == cached["first"]["adapter"]["confusion"]


def test_k_selects_cases_and_junit_lists_the_gates(suite) -> None:
    result = run(suite, "-k", "c1 or c2", "--reqcheck-validation", "on", "--reqcheck-min-accuracy", "0.9",
                 "--junitxml", "junit.xml")  # fmt: skip
    result.assert_outcomes(passed=3)
    junit = (suite[0].path / "junit.xml").read_text()
    assert 'name="c1[adapter]"' in junit
    assert 'classname=".reqcheck-gate" name="min_accuracy[alora]"' in junit


def test_hand_written_tests_get_the_backend_fixtures(suite) -> None:
    pytester, _ = suite
    pytester.makepyfile(test_handwritten=f"""
        def test_polite(reqcheck_check, reqcheck_backend):
            assert "alora" in reqcheck_backend.adapters
            assert reqcheck_check({PLEASE_ITEM!r}).passed
            assert not reqcheck_check({PLAIN_ITEM!r}, requirement="The reply says please.")
    """)  # fmt: skip
    run(suite, "test_handwritten.py").assert_outcomes(passed=1)


def test_without_adapter_the_plugin_is_idle_and_imports_no_torch(pytester: pytest.Pytester) -> None:
    pytester.makefile(".reqcheck.jsonl", cases=json.dumps(CASES[0]))
    pytester.makeconftest("""
        import sys
        def pytest_sessionfinish(session):
            print("TORCH_IMPORTED=%s" % ("torch" in sys.modules))
            print("MATPLOTLIB_IMPORTED=%s" % ("matplotlib" in sys.modules))
    """)
    pytester.makepyfile(test_plain="def test_ok():\n    assert True\n")
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*TORCH_IMPORTED=False*", "*MATPLOTLIB_IMPORTED=False*"])
    assert pytester.runpytest_subprocess("-p", "no:reqcheck").ret == 0


def test_missing_adapter_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """Fault 19: a missing folder said "cannot tell the base model"."""
    pytester.makefile(".reqcheck.jsonl", cases=json.dumps(CASES[0]))
    result = pytester.runpytest(f"--adapter={Path(pytester.path) / 'nope'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--adapter */nope does not exist; pass the directory reqcheck train wrote*"]
    )


def test_several_adapters_take_the_lines_of_their_requirement(
    pytester: pytest.Pytester, tiny_adapters
) -> None:
    other = pytester.path / "other-adapter"
    shutil.copytree(tiny_adapters["lora"].outfile, other)
    manifest = json.loads((other / "reqcheck.json").read_text())
    (other / "reqcheck.json").write_text(json.dumps({**manifest, "requirement": "The reply is short."}))
    lines = [
        {**CASES[0], "requirement": PLEASE},
        {**CASES[1], "id": "c5", "requirement": "The reply is short."},
    ]
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c) for c in lines))
    adapters = [f"--adapter={tiny_adapters['alora'].outfile}", f"--adapter={other}"]
    result = pytester.runpytest(*adapters, "--reqcheck-validation", "on", "--reqcheck-report", "r.json")
    result.assert_outcomes(passed=2)
    entries = {e["name"]: e for e in json.loads((pytester.path / "r.json").read_text())["adapters"]}
    assert [entries["alora"]["modes"]["adapter"]["n"], entries["other-adapter"]["modes"]["adapter"]["n"]] == [
        1,
        1,
    ]
    pytester.makefile(".reqcheck.jsonl", cases=json.dumps(CASES[0]))
    unclear = pytester.runpytest(*adapters)
    unclear.stdout.fnmatch_lines(
        ["*cannot tell which of the adapters (alora, other-adapter) checks this line*"]
    )


def test_recall_gate_skips_labels_without_cases(pytester: pytest.Pytester, tiny_adapters) -> None:
    """Fault 1: a label with no case got recall 0.0 and a gate that could never pass."""
    no_only = [c for c in CASES if c["label"] == "no" and c["id"] != "c3"]
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c) for c in no_only))
    args = [f"--adapter={tiny_adapters['alora'].outfile}", "--reqcheck-validation", "on"]
    result = pytester.runpytest(*args, "--reqcheck-min-recall", "0.9", "-v")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["*reqcheck-gate::min_recall?alora-no?*PASSED*", "*min_recall?yes?: no cases*"]
    )
    assert "min_recall[alora-yes]" not in result.stdout.str()


def test_the_same_item_under_two_requirements_is_predicted_twice(
    pytester: pytest.Pytester, tiny_adapters
) -> None:
    """Fault 2: missing cases were de-duplicated by item only, so the second requirement's case hit KeyError."""
    lines = [
        {"id": "a", "item": PLEASE_ITEM, "label": "yes", "requirement": PLEASE},
        {"id": "b", "item": PLEASE_ITEM, "label": "yes", "requirement": "The reply is kind."},
    ]
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c) for c in lines))
    result = pytester.runpytest(f"--adapter={tiny_adapters['alora'].outfile}")
    outcomes = result.parseoutcomes()
    assert result.ret == 0 and outcomes.get("passed", 0) + outcomes.get("xfailed", 0) == 4


def test_an_adapter_trained_by_mellea_is_gated(
    pytester: pytest.Pytester, mellea_adapter: Path, tiny_model_dir
) -> None:
    """Fault 9: the plugin required reqcheck.json although LocalHFBackend loads Mellea's adapters."""
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c) for c in CASES))
    result = pytester.runpytest(
        f"--adapter={mellea_adapter}",
        f"--basemodel={tiny_model_dir}",
        "--reqcheck-validation",
        "on",
        "--reqcheck-min-accuracy",
        "0.7",
        "--reqcheck-report",
        "r.json",
    )
    assert result.ret == 0
    entry = json.loads((pytester.path / "r.json").read_text())["adapters"][0]
    assert sorted(entry["labels"]) == ["no", "yes"] and entry["modes"]["adapter"]["accuracy"] >= 0.75


def test_truncated_weights_are_one_usage_error(pytester: pytest.Pytester, tiny_adapters) -> None:
    """Fault 16: each case failed with pages of pluggy internals ending in SafetensorError."""
    cut = pytester.path / "cut"
    shutil.copytree(tiny_adapters["alora"].outfile, cut)
    weights = cut / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c) for c in CASES))
    result = pytester.runpytest(f"--adapter={cut}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cut/adapter_model.safetensors is damaged*train the adapter again."])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


BAD_GATE_OPTIONS = {
    "accuracy above 1": (["--reqcheck-min-accuracy", "2"], "--reqcheck-min-accuracy 2.0 is outside [0, 1]"),
    "negative accuracy": (["--reqcheck-min-accuracy=-5"], "--reqcheck-min-accuracy -5.0 is outside [0, 1]"),
    "recall nan": (["--reqcheck-min-recall", "nan"], "--reqcheck-min-recall nan is outside [0, 1]"),
    "max-drop without baseline": (
        ["--reqcheck-max-drop", "0.1"],
        "--reqcheck-max-drop needs --reqcheck-baseline",
    ),
    "malformed baseline": (
        ["--reqcheck-baseline", "bad.json", "--reqcheck-max-drop", "0.1"],
        "bad.json is not valid JSON",
    ),
    "baseline without adapters": (
        ["--reqcheck-baseline", "empty.json", "--reqcheck-max-drop", "0.1"],
        "empty.json holds no list of adapter entries",
    ),
    "baseline entry without modes": (
        ["--reqcheck-baseline", "entry.json", "--reqcheck-max-drop", "0.1"],
        "entry.json: adapter entry 1 is not an object with 'modes' and 'gates'",
    ),
}


@pytest.mark.parametrize("case", BAD_GATE_OPTIONS, ids=list(BAD_GATE_OPTIONS))
def test_bad_gate_options_are_usage_errors(suite, case: str) -> None:
    """Fault 18: impossible thresholds were accepted, and a baseline without adapters (or with an entry
    that is not shaped like one) gave a KeyError traceback."""
    pytester, _ = suite
    (pytester.path / "bad.json").write_text("{not json")
    (pytester.path / "empty.json").write_text('{"report_format": 1}')
    (pytester.path / "entry.json").write_text('{"report_format": 2, "adapters": [{"modes": []}]}')
    args, message = BAD_GATE_OPTIONS[case]
    result = run(suite, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_a_folder_without_an_adapter_says_so_in_pytest_terms(
    pytester: pytest.Pytester, tiny_model_dir
) -> None:
    """Fault 19: a non-adapter folder suggested base_model_name= (a Python argument) to a pytest user."""
    (pytester.path / "notes").mkdir()
    pytester.makefile(".reqcheck.jsonl", cases=json.dumps(CASES[0]))
    result = pytester.runpytest(f"--adapter={pytester.path / 'notes'}", f"--basemodel={tiny_model_dir}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*notes holds no adapter (no adapter_config.json in it)*"])
    assert "base_model_name=" not in result.stderr.str()


def test_a_base_model_that_cannot_load_stops_the_run_once(
    pytester: pytest.Pytester, tiny_adapters, tiny_model_dir
) -> None:
    """A backend that cannot load would fail every case the same way: one usage error instead."""
    broken = pytester.path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").unlink()
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(c) for c in CASES))
    result = pytester.runpytest(f"--adapter={tiny_adapters['alora'].outfile}", f"--basemodel={broken}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stdout.str().count("reqcheck: Could not load base model") == 1
    assert "failed" not in result.parseoutcomes()


def test_two_adapters_with_the_same_folder_name_are_refused(pytester: pytest.Pytester, tiny_adapters) -> None:
    for parent in ("a", "b"):
        shutil.copytree(tiny_adapters["alora"].outfile, pytester.path / parent / "ad")
    pytester.makefile(".reqcheck.jsonl", cases=json.dumps(CASES[0]))
    result = pytester.runpytest(f"--adapter={pytester.path / 'a/ad'}", f"--adapter={pytester.path / 'b/ad'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--adapter */a/ad and --adapter */b/ad are both named 'ad'*rename one folder*"]
    )

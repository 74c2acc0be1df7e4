"""The plugin's options: a value no run could use is one usage error at start, before any adapter or model
is looked at, whether it comes from the command line or from an ini file."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

COMMAND_LINE = {
    "batch size 0": (
        ["--reqcheck-batch-size", "0"],
        "--reqcheck-batch-size must be at least 1; pass e.g. 16.",
    ),
    "batch size -1": (
        ["--reqcheck-batch-size=-1"],
        "--reqcheck-batch-size must be at least 1; pass e.g. 16.",
    ),
    "concurrency 0": (
        ["--reqcheck-concurrency", "0"],
        "--reqcheck-concurrency must be at least 1; pass e.g. 4.",
    ),
    "batch size not a number": (["--reqcheck-batch-size", "many"], "invalid int value: 'many'"),
    "threshold above 1": (["--reqcheck-min-accuracy", "2"], "--reqcheck-min-accuracy 2.0 is outside [0, 1]"),
    "confidence of 1": (["--reqcheck-confidence", "1"], "must lie strictly between 0 and 1, not 1.0"),
}
INI = {
    "threshold above 1": ("reqcheck_min_accuracy = 2", "--reqcheck-min-accuracy 2.0 is outside [0, 1]"),
    "negative recall": ("reqcheck_min_recall = -0.5", "--reqcheck-min-recall -0.5 is outside [0, 1]"),
    "confidence above 1": ("reqcheck_confidence = 1.5", "must lie strictly between 0 and 1, not 1.5"),
    "confidence not a number": ("reqcheck_confidence = high", "reqcheck_confidence = 'high' is not a float"),
}


def _refused(result: pytest.RunResult, message: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert any(message in line for line in errors), errors
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.fixture
def fixture_file(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makefile(".reqcheck.jsonl", cases=json.dumps({"item": "thanks please", "label": "yes"}))
    return pytester


@pytest.mark.parametrize("case", COMMAND_LINE, ids=list(COMMAND_LINE))
def test_a_bad_option_value_is_one_usage_error_at_start(case: str, fixture_file: pytest.Pytester) -> None:
    args, message = COMMAND_LINE[case]
    _refused(fixture_file.runpytest("--adapter=no-such-adapter", *args), message)


@pytest.mark.parametrize("case", INI, ids=list(INI))
def test_a_bad_ini_value_is_one_usage_error_at_start(case: str, fixture_file: pytest.Pytester) -> None:
    line, message = INI[case]
    fixture_file.makeini(f"[pytest]\n{line}\n")
    _refused(fixture_file.runpytest("--adapter=no-such-adapter"), message)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], {"min_agreement": 0.99, "max_score_diff": 0.02}),
        (["--reqcheck-max-score-diff=0.05"], {"min_agreement": 0.99, "max_score_diff": 0.05}),
        (
            ["--reqcheck-min-agreement=0.9", "--reqcheck-min-accuracy=0.8"],
            {"min_agreement": 0.9, "max_score_diff": 0.02, "min_accuracy": 0.8},
        ),
    ],
)
def test_a_compare_run_gates_the_skew_unless_told_otherwise(
    pytester: pytest.Pytester, args: list[str], expected: dict[str, float]
) -> None:
    """docs/serving.md's values; a compare run that gated nothing would pass whatever skew it measured."""
    from pytest_reqcheck.options import SessionOptions

    config = pytester.parseconfig(
        "--adapter=a", "--reqcheck-endpoint=http://127.0.0.1:9", "--reqcheck-compare", *args
    )
    assert SessionOptions.read(config).thresholds == expected
    assert SessionOptions.read(pytester.parseconfig("--adapter=a", *args[1:])).thresholds == {
        name: value for name, value in expected.items() if name == "min_accuracy"
    }

"""The served gate against a broken or hostile server, through the plugin: each case that cannot be checked
is one error, sent once; the report is still written; a mode's failure stays that mode's.

The server is `fakes.fake_llama`, a fake llama-server replaying real answer shapes around a fake adapter.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from reqcheck.checking import replica
from reqcheck.checking.remote import RemoteBackend
from reqcheck.errors import ReqcheckError
from reqcheck.formats.gate_report import GateReport
from tests.checking.fakes import adapter_answer, fake_adapter, fake_llama, is_judge, judge_answer, lora_entry

pytest_plugins = ["pytester"]

CASES = 12


@pytest.fixture
def adapter(pytester: pytest.Pytester) -> Path:
    lines = [{"id": f"c{i}", "item": f"Reply number {i}, thanks.", "label": "yes" if i % 2 else "no"}
             for i in range(CASES)]  # fmt: skip
    pytester.makefile(".reqcheck.jsonl", cases="\n".join(json.dumps(line) for line in lines))
    return fake_adapter(pytester.path / "adapters")


def gate(pytester: pytest.Pytester, adapter: Path, url: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest(
        f"--adapter={adapter}",
        f"--reqcheck-endpoint={url}",
        "--reqcheck-min-accuracy=0.5",
        "--reqcheck-report=report.json",
        "--reqcheck-html=report.html",
        *args,
    )


def answers(adapter_side: Any = None, judge_side: Any = None) -> Any:
    """A chat-completion script: each mode's answer (a good one where None)."""

    def complete(body: dict[str, Any]) -> tuple[int, Any]:
        if is_judge(body):
            return 200, judge_side if judge_side is not None else judge_answer()
        return 200, adapter_side if adapter_side is not None else adapter_answer()

    return complete


def _report(pytester: pytest.Pytester) -> GateReport:
    report = GateReport.read(pytester.path / "report.json")
    assert (pytester.path / "report.html").is_file()
    return report


def test_a_check_that_raises_a_bug_is_one_error_per_case_and_sent_once(
    pytester: pytest.Pytester, adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_reader(*args: object) -> float:
        raise RuntimeError("the reader broke\non two lines")

    monkeypatch.setattr(replica, "_score", broken_reader)
    with fake_llama([lora_entry(adapter)], answers()) as (url, server):
        result = gate(pytester, adapter, url, "--reqcheck-validation=on")
    # each case at most once (requests in flight when the first failed still finish), never again later
    assert 0 < server.completions <= CASES
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*adapter: could not be checked: RuntimeError: the reader broke on two lines",
            f"*min_accuracy*{CASES} case(s) could not be checked*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    entry = _report(pytester).adapters[0]
    assert entry.partial and not entry.passed and entry.ran == 0


def _null_logprob(answer: dict[str, Any]) -> dict[str, Any]:
    for entry in answer["choices"][0]["logprobs"]["content"]:
        entry["top_logprobs"][0]["logprob"] = None
    return answer


def test_null_logprobs_in_both_modes_send_each_case_once_and_leave_a_report(
    pytester: pytest.Pytester, adapter: Path
) -> None:
    """The campaign's case: 12 cases sent 153 requests and left 23,256 lines of tracebacks and no report."""
    complete = answers(_null_logprob(adapter_answer()), _null_logprob(judge_answer()))
    with fake_llama([lora_entry(adapter)], complete) as (url, server):
        result = gate(pytester, adapter, url)
    assert 0 < server.completions <= CASES * 2
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*adapter: could not be checked: The server at * with a null logprob*"])
    assert "Traceback" not in result.stdout.str()
    entry = _report(pytester).adapters[0]
    assert entry.partial and entry.ran == 0 and entry.modes == {}


def test_the_judges_failure_is_only_the_judges_cases_error(pytester: pytest.Pytester, adapter: Path) -> None:
    """Defect 9: a judge that cannot score (no label among its top tokens) errored every adapter case too."""
    no_label = judge_answer("The", logprobs={"The": -0.1, "A": -2.5, "It": -3.0})
    with fake_llama([lora_entry(adapter)], answers(judge_side=no_label)) as (url, _):
        result = gate(pytester, adapter, url, "--reqcheck-validation=both")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the judge's cases errored
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == CASES and outcomes["passed"] == CASES // 2 + 1  # the gate passed
    result.stdout.fnmatch_lines(["*judge: could not be checked: *hold none of the labels yes, no*"])
    assert "adapter: could not be checked" not in result.stdout.str()
    entry = _report(pytester).adapters[0]
    assert set(entry.modes) == {"adapter"} and entry.modes["adapter"].n == CASES
    assert [(g.name, g.passed) for g in entry.gates] == [("min_accuracy", True)]


def _slow(seconds: float) -> Any:
    """Chat completions that answer only after `seconds` (the request deadline comes first)."""

    def complete(body: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(seconds)
        return 200, judge_answer() if is_judge(body) else adapter_answer()

    return complete


def test_past_the_timeout_the_case_errors_with_one_sentence(pytester: pytest.Pytester, adapter: Path) -> None:
    with fake_llama([lora_entry(adapter)], _slow(6.0)) as (url, server):
        result = gate(pytester, adapter, url, "--reqcheck-validation=on", "--reqcheck-timeout=0.5")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*adapter: could not be checked: The server at * gave no answer to POST /v1/chat/completions "
            "within 0.5 s (1 attempt; *); raise the deadline (--reqcheck-timeout) or check the server."
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert 0 < server.completions <= CASES
    assert _report(pytester).adapters[0].ran == 0


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_timeout_no_request_could_meet_is_a_usage_error(
    pytester: pytest.Pytester, adapter: Path, value: str
) -> None:
    result = pytester.runpytest(
        f"--adapter={adapter}", "--reqcheck-endpoint=http://127.0.0.1:9", f"--reqcheck-timeout={value}"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--reqcheck-timeout must be a number of seconds above 0, not *; pass e.g. 120."]
    )
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_remote_backend_refuses_a_deadline_that_never_comes() -> None:
    with pytest.raises(ReqcheckError, match=r"deadline must be a number of seconds above 0, not inf; pass"):
        RemoteBackend("http://127.0.0.1:9", timeout=math.inf)


# defect 5: text from a server is data. A hostile server erased lines, set the terminal title, printed a spoofed
# gate verdict and a GitHub `::error` workflow command through /props, a task name and an error body.
HOSTILE = (
    "base.gguf\x1b[2K\r\x1b[1A  gate min_accuracy: PASS\x1b]0;pwned\x07\x9b31m\n::error::spoofed\r\n"
    "::warning file=x::y\u2028::notice::z"
)


def _plain(text: str) -> None:
    """No escape or control character in `text`, and no line that a CI runner would take as a command."""
    assert not {"\x1b", "\x07", "\x9b", "\r", "\u2028"} & set(text)
    assert [line for line in text.splitlines() if line.lstrip().startswith("::")] == []


@pytest.mark.parametrize("where", ["props", "error-body"])
def test_what_a_server_says_reaches_the_terminal_and_the_step_summary_as_plain_text(
    pytester: pytest.Pytester, adapter: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    refusal = {"error": {"code": 400, "message": HOSTILE, "type": "invalid_request_error"}}
    complete = answers() if where == "props" else (lambda body: (400, refusal))
    with fake_llama([lora_entry(adapter)], complete) as (url, server):
        server.props = {"build_info": "b1" + HOSTILE, "model_path": HOSTILE}
        result = gate(pytester, adapter, url, "--reqcheck-validation=on")
    out = result.stdout.str()
    _plain(out)
    _plain(summary.read_text())
    if where == "props":
        result.stdout.fnmatch_lines(
            ["*served: llama.cpp b1base.gguf gate min_accuracy: PASS ::error::spoofed *"]
        )
        served = _report(pytester).adapters[0].served
        assert served is not None and served.model == "base.gguf gate min_accuracy: PASS ::error::spoofed " \
            "::warning file=x::y ::notice::z"  # fmt: skip
    else:
        result.stdout.fnmatch_lines(["*refused POST /v1/chat/completions with HTTP 400 (base.gguf gate *)*"])


def test_a_hostile_task_name_is_plain_text_in_the_refusal(pytester: pytest.Pytester, adapter: Path) -> None:
    other = {"id": 0, "path": "/srv/x.gguf", "scale": 0.0, "task_name": HOSTILE}
    with fake_llama([other], answers()) as (url, _):
        result = gate(pytester, adapter, url)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        ["*does not serve adapter polite (*; it serves base.gguf gate min_accuracy: PASS*"]
    )
    _plain(result.stdout.str() + result.stderr.str())


def test_a_replica_killed_mid_run_loses_no_case_and_the_gate_names_it(
    pytester: pytest.Pytester, adapter: Path
) -> None:
    with (
        fake_llama([lora_entry(adapter)], answers()) as (first, dying),
        fake_llama([lora_entry(adapter)], answers()) as (second, _),
    ):

        def complete(body: dict[str, Any]) -> tuple[int, Any]:
            dying.dead = dying.completions > 2  # killed while it answers its third check
            return answers()(body)

        dying.complete = complete
        result = gate(pytester, adapter, first, f"--reqcheck-endpoint={second}", "--reqcheck-concurrency=1")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            f"*served: llama.cpp * at 2 replicas ({first}, {second})*",
            f"*warning: {first} stopped answering during the run, so its unfinished cases went to the other "
            f"replicas: The server at {first} failed POST /* (the server dropped the connection)*",
        ]
    )
    entry = _report(pytester).adapters[0]
    assert entry.ran == 2 * CASES and not entry.partial and entry.passed
    assert entry.served is not None and list(entry.served.failed) == [first]
    assert entry.served.replicas == [first, second]

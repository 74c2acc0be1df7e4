"""A fake llama-server answering at random, through the whole served gate: whatever it sends, every case
ends as a finite probability in [0, 1] or one sentence, the requests stay bounded, the report is written
and reads back, and no traceback is printed.

The answers are llama-server's shapes with random parts: any JSON where a logprob or a token goes (NaN,
infinities, null, text, booleans), top-logprobs lists of any size, a key left out, a body that is not a
chat completion or not JSON, statuses that are retried or refused, and short delays well within the
deadline. A server that continues a prefilled answer gets the one-step reads, whose `top_probs` entries
carry junk where a token id or a probability goes. The `ci` profile (tests/conftest.py) fixes and
derandomizes the cases.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reqcheck.formats.gate_report import GateReport
from tests.checking.fakes import (
    adapter_answer,
    fake_adapter,
    fake_llama,
    first_token_answer,
    is_judge,
    judge_answer,
    lora_entry,
)

CASES = 3
MODES = ("adapter", "judge")
RETRIES = 3  # the plugin's: RemoteBackend's default
DEADLINE = "1.5"  # seconds; a retried answer's backoff meets it after two attempts, so a case ends soon

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.none(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.none(), max_size=2),
)
logprobs = st.one_of(st.floats(-20.0, 0.0), st.floats(-20.0, 0.0), junk)
tokens = st.one_of(st.sampled_from(["yes", "no", "Yes", " no", "The"]), junk)
alternatives = st.lists(st.fixed_dictionaries({"token": tokens, "logprob": logprobs}), max_size=4)
DROPPED = (None, None, None, "choices", "logprobs", "message", "content", "top_logprobs", "token", "logprob")
# the one-step read: probabilities by token id, the labels' first tokens among others
probabilities = st.one_of(st.floats(0.0, 1.0), st.floats(0.0, 1.0), junk)
token_ids = st.one_of(st.sampled_from([7, 9, 17, 19, 999]), junk)
by_id = st.lists(st.fixed_dictionaries({"id": token_ids, "prob": probabilities}), max_size=4)
JUDGE_TOKENS = {"yes": [7], "Yes": [17], "no": [9], "No": [19]}


@dataclass(frozen=True)
class Reply:
    """One answer of the fake server: its status, a delay, and how a well-formed answer is broken."""

    status: int
    delay: float
    body: str  # "shaped": a chat completion with random parts; "json": any JSON; "bytes": not JSON
    top: list[dict[str, Any]]
    own: Any  # the deciding token's own logprob
    probs: list[dict[str, Any]]  # a one-step answer's top_probs
    dropped: str | None
    junk: Any

    def answer(self, request: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(self.delay)
        if self.body == "json":
            return self.status, self.junk
        if self.body == "bytes":
            return self.status, b"\x00<html>not json"
        one_step = request.get("post_sampling_probs")
        if one_step:
            answer = first_token_answer({7: 0.6, 9: 0.4})
        else:
            answer = copy.deepcopy(judge_answer() if is_judge(request) else adapter_answer())
        choice = answer["choices"][0]
        deciding = choice["logprobs"]["content"][0 if one_step or is_judge(request) else 4]
        deciding.update(top_logprobs=self.top, logprob=self.own)
        if one_step:
            deciding.update(top_probs=self.probs, prob=self.own)
            deciding.pop("top_logprobs")
        holders = {"choices": answer, "logprobs": choice, "message": choice, "content": choice["message"],
                   "top_logprobs": deciding, "token": deciding, "logprob": deciding}  # fmt: skip
        if self.dropped:
            key = (
                {"top_logprobs": "top_probs", "logprob": "prob"}.get(self.dropped, self.dropped)
                if one_step
                else self.dropped
            )
            holders[self.dropped].pop(key)
        return self.status, answer


replies = st.builds(
    Reply,
    status=st.sampled_from([200] * 8 + [400, 404, 429, 500, 503]),
    delay=st.sampled_from([0.0, 0.0, 0.01, 0.05]),
    body=st.sampled_from(["shaped"] * 6 + ["json", "bytes"]),
    top=alternatives,
    own=logprobs,
    probs=by_id,
    dropped=st.sampled_from(DROPPED),
    junk=junk,
)


class Outcomes:
    """Each case's call-phase outcome and text, as pytest reports it."""

    def __init__(self) -> None:
        self.cases: dict[str, tuple[str, str]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and "reqcheck-gate" not in report.nodeid:
            self.cases[report.nodeid] = (report.outcome, report.longreprtext)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The adapter and a fixture file of CASES lines, shared by every generated case."""
    root = tmp_path_factory.mktemp("suite")
    lines = [{"item": f"Reply {i}, thank you.", "label": "yes" if i % 2 else "no"} for i in range(CASES)]
    (root / "cases.reqcheck.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return fake_adapter(root / "adapters"), root / "cases.reqcheck.jsonl"


@pytest.mark.parametrize("prefill", [False, True], ids=["whole-json", "one-step"])
@settings(max_examples=max(8, settings.default.max_examples // 4))  # a pytest session per case
@given(script=st.lists(replies, min_size=1, max_size=4))
def test_whatever_the_server_answers_each_case_is_a_probability_or_one_sentence(
    suite: tuple[Path, Path], script: list[Reply], prefill: bool
) -> None:
    adapter, cases = suite
    answered = iter(range(10**6))
    outcomes, out = Outcomes(), io.StringIO()
    with (
        tempfile.TemporaryDirectory() as folder,
        fake_llama(
            [lora_entry(adapter)],
            lambda body: script[next(answered) % len(script)].answer(body),
            prefill=prefill,
        ) as (url, server),
    ):
        server.tokens = JUDGE_TOKENS
        report = Path(folder) / "report.json"
        quiet = [f"-pno:{name}" for name in ("cacheprovider", "hypothesispytest", "anyio", "randomly")]
        args = [*quiet, f"--rootdir={folder}", str(cases), f"--adapter={adapter}", f"--reqcheck-endpoint={url}",
                f"--reqcheck-timeout={DEADLINE}", f"--reqcheck-report={report}"]  # fmt: skip
        with contextlib.redirect_stdout(out):
            code = pytest.main(args, plugins=[outcomes])
        read = GateReport.read(report)  # written, and it reads back
    text = out.getvalue()
    assert code in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), text[-2000:]
    assert "Traceback" not in text and "INTERNALERROR" not in text
    assert server.completions <= CASES * len(MODES) * (RETRIES + 1)
    assert len(outcomes.cases) == CASES * len(MODES)
    for outcome, reason in outcomes.cases.values():
        if outcome == "failed":  # one sentence from reqcheck, never a raw exception's text
            assert re.fullmatch(r"(adapter|judge): could not be checked: [^\n]+[.)]", reason), reason
            assert not re.search(r"could not be checked: \w+(Error|Exception):", reason), reason
    [entry] = read.adapters
    for case in entry.cases:
        for mode in case.modes.values():
            assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in mode.probabilities.values())
    ran = sum(len(case.modes) for case in entry.cases)
    assert ran == sum(outcome != "failed" for outcome, _ in outcomes.cases.values())

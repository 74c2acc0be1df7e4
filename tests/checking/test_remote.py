"""The served checker against a real llama-server: RemoteBackend, the plugin's --reqcheck-endpoint, failures.

Every test talks to a real llama.cpp server (the prebuilt engine; the agreement test also a stock
llama-server when there is one, see `llama_engine` in tests/conftest.py), on SmolLM2 adapters trained and
exported by `served_smollm2`. One test puts a small HTTP proxy of its own
between the client and the real server, to strip logprobs from real answers: no real server omits them.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.endpoint import Endpoint, ServerInfo
from reqcheck.checking.remote import RemoteBackend
from reqcheck.checking.requirements import req
from reqcheck.checking.session import Session
from reqcheck.errors import ReqcheckError
from reqcheck.formats.gate_report import AdapterEntry, GateReport, ServedRecord
from reqcheck.serving.llama_server import LlamaServer, free_port, zero_global_scales
from reqcheck.serving.llamacpp import run_script, source_dir

pytest_plugins = ["pytester"]

ITEMS = [
    "Thank you so much for waiting, I am happy to help you with your refund.",
    "Figure it out yourself.",
    "We shipped it.",
    "Sorry for the delay, we will fix it today, thanks!",
]


@pytest.fixture(scope="module")
def server(served_smollm2, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """The prebuilt llama.cpp server with the exported base model, the aLoRA and the LoRA."""
    pair = served_smollm2
    log = tmp_path_factory.mktemp("server") / "llama-server.log"
    with LlamaServer(
        pair.base, [pair.exports["alora"].adapter, pair.exports["lora"].adapter], log=log
    ) as running:
        yield running


@pytest.fixture
def shared_cache(served_smollm2, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache the fixture trained in: the converted SmolLM2 is not converted again for in-process runs."""
    monkeypatch.setenv("REQCHECK_CACHE", str(served_smollm2.alora.parent / "cache"))


def remote(url: str, pair, *kinds: str) -> RemoteBackend:
    backend = RemoteBackend(url, concurrency=4)
    for kind in kinds:
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(getattr(pair, kind)), intrinsic_name=kind))
    return backend


@pytest.mark.slow
def test_served_checks_equal_in_process_ones(
    served_smollm2, llama_engine, shared_cache, tmp_path: Path
) -> None:
    pair = served_smollm2
    adapters = [pair.exports["alora"].adapter, pair.exports["lora"].adapter]
    with LlamaServer(pair.base, adapters, log=tmp_path / "server.log", binary=llama_engine) as server:
        _served_equals_in_process(remote(server.url, pair, "alora", "lora"), pair)


def _served_equals_in_process(served: RemoteBackend, pair) -> None:
    from reqcheck.checking.backend import LocalHFBackend

    local = LocalHFBackend("smollm2-135m-instruct", device="cpu")
    for kind in ("alora", "lora"):
        local.add_adapter(CustomIntrinsicAdapter(model_id=str(getattr(pair, kind)), intrinsic_name=kind))
        there, here = served.classify(kind, ITEMS), local.classify(kind, ITEMS)
        for a, b in zip(there, here, strict=True):
            assert max(a, key=a.get) == max(b, key=b.get)
            assert max(abs(a[label] - b[label]) for label in a) <= 0.02, (kind, served.info.version, a, b)
    requirement = served.adapters["alora"].manifest.requirement
    judged = served.judge(ITEMS, [requirement] * len(ITEMS))
    assert [max(p, key=p.get) for p in judged] == [
        max(p, key=p.get) for p in local.judge(ITEMS, [requirement] * len(ITEMS))
    ]
    # labels of several tokens are read by one rule, their first token, served and in process
    labels = ["abbreviation", "description", "human", "location"]
    for a, b in zip(
        served.judge(ITEMS, [None] * 4, labels), local.judge(ITEMS, [None] * 4, labels), strict=True
    ):
        assert max(abs(a[label] - b[label]) for label in labels) <= 0.02, (served.info.version, a, b)
    results = Session(served).validate([req(requirement)], ITEMS[0])
    assert results[0].via == "adapter:alora"
    served.default_to_constraint_checking_alora = False
    assert served.check(req(requirement), ITEMS[0]).via == "judge"
    assert served.info.engine == "llama.cpp" and served.info.version


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["alora", "lora"])
def test_the_plugin_gates_through_the_endpoint(
    pytester: pytest.Pytester, server, served_smollm2, shared_cache, kind: str
) -> None:
    pair = served_smollm2
    shutil.copy(pair.test_cases, pytester.path / "test.reqcheck.jsonl")
    result = pytester.runpytest(
        f"--adapter={getattr(pair, kind)}",
        f"--reqcheck-endpoint={server.url}",
        "--reqcheck-concurrency=4",
        "--reqcheck-compare",
        "--reqcheck-min-agreement=0.95",  # a case within 0.01 of the threshold may flip
        "--reqcheck-max-score-diff=0.02",
        "--reqcheck-report=report.json",
        "--reqcheck-html=report.html",
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    entry = GateReport.read(pytester.path / "report.json").adapters[0]
    assert entry.served is not None and entry.served.endpoint == server.url
    assert entry.served.engine == "llama.cpp" and entry.served.compared
    assert {"adapter", "judge", "local"} <= set(entry.modes)
    assert all(gate.passed for gate in entry.gates) and not entry.partial
    result.stdout.fnmatch_lines([f"*served: llama.cpp * at {server.url}*"])


def test_a_refused_connection_is_one_sentence() -> None:
    with pytest.raises(
        ReqcheckError, match=r"failed GET /v1/models .*connection was refused.*; check"
    ) as caught:
        RemoteBackend(f"http://127.0.0.1:{free_port()}", retries=1)
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_a_replica_killed_mid_run_loses_no_case(server, served_smollm2, tmp_path: Path) -> None:
    """Two real servers, one killed (SIGKILL) while checks are in flight: every case is scored, as one server
    alone scores it, and the backend names the dead one."""
    pair = served_smollm2
    replies = [f"Thanks for waiting, order {i} ships today." for i in range(48)]
    alone = remote(server.url, pair, "alora").classify("alora", replies)
    adapters = [pair.exports["alora"].adapter, pair.exports["lora"].adapter]
    with LlamaServer(pair.base, adapters, log=tmp_path / "doomed.log") as doomed:
        backend = RemoteBackend([doomed.url, server.url], concurrency=1, retries=1)
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(pair.alora), intrinsic_name="alora"))
        killer = threading.Timer(1.0, doomed.process.kill)  # type: ignore[union-attr]
        killer.start()
        spread = backend.classify("alora", replies)
        killer.join()
    assert list(backend.failed) == [doomed.url]
    assert all(abs(a[k] - b[k]) <= 1e-3 for a, b in zip(spread, alone, strict=True) for k in a)


@pytest.mark.slow
def test_an_adapter_the_server_lacks_is_refused(server, served_smollm2, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(served_smollm2.alora, other)
    manifest = json.loads((other / "reqcheck.json").read_text())
    manifest["requirement"] += " Really."  # another adapter: its content hash differs
    (other / "reqcheck.json").write_text(json.dumps(manifest))
    backend = RemoteBackend(server.url)
    with pytest.raises(ReqcheckError, match=r"does not serve adapter other .*start llama-server with --lora"):
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(other)))


@pytest.mark.slow
def test_an_alora_the_server_would_apply_as_a_lora_is_refused(served_smollm2, tmp_path: Path) -> None:
    pair = served_smollm2
    plain = tmp_path / "plain.gguf"
    script = source_dir() / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"
    run_script(
        script,
        [
            "--force",  # the script asks for a typed YES before it removes a key
            "--remove-metadata",
            "adapter.alora.invocation_tokens",
            str(pair.exports["alora"].adapter),
            str(plain),
        ],
    )
    with LlamaServer(pair.base, [plain], log=tmp_path / "server.log") as running:
        backend = RemoteBackend(running.url)
        with pytest.raises(ReqcheckError, match=r"would apply aLoRA alora as a plain LoRA"):
            backend.add_adapter(CustomIntrinsicAdapter(model_id=str(pair.alora), intrinsic_name="alora"))


@pytest.mark.slow
def test_a_server_running_another_base_model_is_refused(server, tiny_adapters) -> None:
    backend = RemoteBackend(server.url)
    with pytest.raises(ReqcheckError, match=r"not adapter .* base model .*serve the base model"):
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(tiny_adapters["alora"].outfile)))


class _EditingProxy(BaseHTTPRequestHandler):
    """Forwards to the real server and passes each chat-completion choice through `edit` (by default it drops
    `logprobs`, as a server without them would)."""

    target = ""
    pool = urllib3.PoolManager()

    @staticmethod
    def edit(choice: dict) -> None:
        choice.pop("logprobs", None)

    def _forward(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        answer = self.pool.request(method, self.target + self.path, body=body)
        data = answer.data
        if self.path == "/v1/chat/completions" and answer.status == 200:
            parsed = json.loads(data)
            for choice in parsed["choices"]:
                self.edit(choice)
            data = json.dumps(parsed).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")

    def log_message(self, *args: object) -> None:
        pass


def _without_judge_labels(choice: dict) -> None:
    for token in choice["logprobs"]["content"]:
        token["top_probs"] = [
            t for t in token["top_probs"] if t["token"].strip().lower() not in ("yes", "no")
        ]


@pytest.mark.slow
def test_an_answer_without_the_labels_tokens_is_one_sentence(server, served_smollm2) -> None:
    handler = type(
        "Handler", (_EditingProxy,), {"target": server.url, "edit": staticmethod(_without_judge_labels)}
    )
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        backend = remote(f"http://127.0.0.1:{proxy.server_address[1]}", served_smollm2, "alora")
        with pytest.raises(ReqcheckError, match=r"answered the judge without any probability on the labels'"):
            backend.judge(ITEMS[:1], [None])
    finally:
        proxy.shutdown()


@pytest.mark.slow
def test_llama_servers_probabilities_after_a_logit_bias_keep_the_models_ratios(server) -> None:
    """What the one-step read relies on, asked of the prebuilt engine itself: it continues a prefilled answer,
    and with `post_sampling_probs` and the sampler chain neutral, tokens raised by the same bias keep the
    ratios of the unbiased distribution, however unlikely they were (here: ranks 1, 5, 12 and 20), to the
    1e-4 that two forwards of one prompt differ by (the second reads the first one's cached prompt)."""
    from reqcheck.checking.engines import Engine

    endpoint = Endpoint(server.url, 1, 120.0, 0)
    engine = Engine.for_server(endpoint, ServerInfo.probe(endpoint))
    assert engine.reads_first_token()
    messages = [{"role": "user", "content": ITEMS[2]}, {"role": "assistant", "content": "The reply"}]
    body = {"messages": messages, "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 20}
    raw = endpoint.post("/v1/chat/completions", {**body, **engine.base_select()})
    top = raw["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    picked = {entry["id"]: entry["logprob"] for entry in (top[0], top[4], top[11], top[19])}
    fields = engine.first_token_fields(list(picked))
    biased = endpoint.post("/v1/chat/completions", {"messages": messages, **fields, **engine.base_select()})
    after = {
        entry["id"]: entry["prob"] for entry in biased["choices"][0]["logprobs"]["content"][0]["top_probs"]
    }
    assert set(after) == set(picked)  # the raised tokens are the top ones, whatever their rank before
    unbiased = {i: math.exp(lp) for i, lp in picked.items()}
    for token in picked:
        assert after[token] / sum(after.values()) == pytest.approx(
            unbiased[token] / sum(unbiased.values()), abs=1e-3
        )


@pytest.mark.slow
def test_a_server_that_returns_no_logprobs_is_one_sentence(server, served_smollm2) -> None:
    handler = type("Handler", (_EditingProxy,), {"target": server.url})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        backend = remote(f"http://127.0.0.1:{proxy.server_address[1]}", served_smollm2, "alora")
        with pytest.raises(
            ReqcheckError, match=r"returned no token probabilities for adapter alora.*; serve with"
        ):
            backend.classify("alora", ITEMS[:1])
    finally:
        proxy.shutdown()


@pytest.mark.slow
def test_a_server_that_dies_mid_run_fails_cases_and_gates_and_leaves_a_whole_report(
    pytester: pytest.Pytester, served_smollm2, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pair = served_smollm2
    shutil.copy(pair.test_cases, pytester.path / "test.reqcheck.jsonl")
    with LlamaServer(pair.base, [pair.exports["alora"].adapter], log=tmp_path / "server.log") as running:
        answered = []
        post = Endpoint.post

        def post_then_die(self: Endpoint, path: str, body: dict) -> object:
            if path == "/v1/chat/completions":
                answered.append(path)
                if len(answered) == 5:
                    running.stop()  # the real server goes away: later requests meet a refused connection
            return post(self, path, body)

        monkeypatch.setattr(Endpoint, "post", post_then_die)
        result = pytester.runpytest(
            f"--adapter={pair.alora}",
            f"--reqcheck-endpoint={running.url}",
            "--reqcheck-validation=on",
            "--reqcheck-batch-size=4",  # batches of 4 one at a time: the first is checked, the rest meet a dead server
            "--reqcheck-concurrency=1",
            "--reqcheck-min-accuracy=0.5",
            "--reqcheck-report=report.json",
        )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*adapter: could not be checked: The server at * failed POST /v1/chat/completions *refused*",
            "*min_accuracy*76 case(s) could not be checked*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    report = GateReport.read(pytester.path / "report.json")
    assert report.passed is False and report.adapters[0].partial
    assert sorted(p.name for p in pytester.path.iterdir() if p.name.startswith("report")) == ["report.json"]


@pytest.mark.slow
def test_the_report_keeps_the_server_and_older_reports_still_read(tmp_path: Path) -> None:
    served = ServedRecord("http://127.0.0.1:8080", "llama.cpp", "b1-0c1e570", "base.gguf", None, True)
    report = GateReport(report_format=2, passed=True, adapters=[AdapterEntry(name="a", served=served)])
    report.write(tmp_path / "served.json")
    assert GateReport.read(tmp_path / "served.json").adapters[0].served == served
    older = report.to_dict()
    del older["adapters"][0]["served"]
    assert GateReport.from_dict(older).adapters[0].served is None
    older["adapters"][0]["served"] = {"endpoint": 8080, "engine": "llama.cpp"}
    with pytest.raises(ReqcheckError, match=r"served\.endpoint"):
        GateReport.from_dict(older)


@pytest.mark.slow
def test_a_server_that_gives_the_adapter_to_everyone_is_named_in_the_report(tmp_path: Path) -> None:
    from reqcheck.gating.report_html import write_html
    from reqcheck.gating.report_text import terminal_lines

    served = ServedRecord("http://h:8080", "llama.cpp", on_by_default=["polite"])
    report = GateReport(report_format=2, passed=True, adapters=[AdapterEntry(name="polite", served=served)])
    report.write(tmp_path / "report.json")
    read = GateReport.read(tmp_path / "report.json").adapters[0]
    assert read.served is not None and read.served.on_by_default == ["polite"]
    warning = "every request to http://h:8080 that names no adapter gets polite (global scale not 0)"
    assert [line for line in terminal_lines(read) if warning in line] == [f"  warning: {warning}; set the "
        "scale to 0 with POST /lora-adapters, or serve with reqcheck serve"]  # fmt: skip
    write_html(report, tmp_path / "report.html")
    assert warning in (tmp_path / "report.html").read_text()
    older = report.to_dict()
    del older["adapters"][0]["served"]["on_by_default"]  # reports written before the field
    assert GateReport.from_dict(older).adapters[0].served.on_by_default == []


@pytest.mark.slow
def test_the_gate_says_when_the_server_gives_the_adapter_to_everyone(
    pytester: pytest.Pytester, server, served_smollm2, shared_cache
) -> None:
    pair = served_smollm2
    lines = pair.test_cases.read_text().splitlines()[:6]
    (pytester.path / "few.reqcheck.jsonl").write_text("\n".join(lines) + "\n")
    entries = Endpoint(server.url).get("/lora-adapters")
    Endpoint(server.url).post("/lora-adapters", [{"id": e["id"], "scale": 1.0} for e in entries])
    try:
        backend = remote(server.url, pair, "alora", "lora")
        assert backend.on_by_default == ["alora", "lora"]
        result = pytester.runpytest(
            f"--adapter={pair.alora}",
            f"--reqcheck-endpoint={server.url}",
            "--reqcheck-validation=on",
            "--reqcheck-report=report.json",
        )
    finally:
        zero_global_scales(server.url)
    result.stdout.fnmatch_lines(
        [f"*warning: every request to {server.url} that names no adapter gets alora*"]
    )
    entry = GateReport.read(pytester.path / "report.json").adapters[0]
    assert entry.served is not None and entry.served.on_by_default == ["alora"]

"""`reqcheck serve`: llama.cpp's server from the prebuilt engine (or a stock binary), adapters off for every
request that names none, and one sentence for each way a start can fail, with nothing written.

The slow tests run real llama.cpp servers on the SmolLM2 adapters of `served_smollm2`: the prebuilt
engine always, a stock llama-server too when one is on the PATH or in REQCHECK_LLAMA_SERVER.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import content_hash
from reqcheck.formats.served import ServedTag
from reqcheck.models.loading import cache_dir
from reqcheck.serving.engine import ServerSettings
from reqcheck.serving.export import START_FILE
from reqcheck.serving.llama_server import LlamaServer, free_port, zero_global_scales
from reqcheck.serving.serve import replica_settings
from reqcheck.training.loop import TrainResult
from tests.conftest import ServedPair
from tests.helpers import run_cli

ANY_PORT = ["--port", "0"]  # a free one: the failures under test must not depend on 8080 being free
ASKS = [
    [{"role": "user", "content": "Write one polite sentence to a customer whose parcel is late."}],
    [{"role": "user", "content": "Write one short sentence that thanks a customer for a refund request."}],
]


def _get(url: str) -> list[dict]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def _reply(url: str, lora: list[dict] | None, ask: int = 0, cache: bool = True) -> str:
    """The greedy reply to ASKS[ask]; `lora` None sends no adapter field at all."""
    body: dict[str, object] = {"messages": ASKS[ask], "max_tokens": 24, "temperature": 0.0}
    if not cache:
        body["cache_prompt"] = False
    if lora is not None:
        body["lora"] = lora
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())["choices"][0]["message"]["content"]


def _adapter_id(url: str, adapter: Path) -> int:
    tag = ServedTag(adapter.name, content_hash(adapter))
    return next(int(a["id"]) for a in _get(f"{url}/lora-adapters") if ServedTag.parse(a["task_name"]) == tag)


def _nothing_served() -> bool:
    return not (cache_dir() / "served").exists()


# failures before anything is converted


def test_serve_without_the_engine_names_the_extra(
    tiny_adapters: dict[str, TrainResult],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # as if the serve extra were not installed
    monkeypatch.delenv("REQCHECK_LLAMA_SERVER", raising=False)  # which would run a stock binary instead
    code, err = run_cli(["serve", str(tiny_adapters["alora"].outfile)], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert 'install it with pip install "reqcheck[serve]"' in err
    assert _nothing_served()


@pytest.mark.parametrize("replicas", [1, 2])  # with 2, the taken port is the second replica's
def test_serve_refuses_a_taken_port_before_converting(
    replicas: int,
    tiny_adapters: dict[str, TrainResult],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        first = port - replicas + 1
        args = [
            "serve",
            str(tiny_adapters["alora"].outfile),
            "--port",
            str(first),
            "--replicas",
            str(replicas),
        ]
        code, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    assert f"Port {port} on 127.0.0.1 is taken" in err and "pass another --port" in err
    assert _nothing_served()


def test_replicas_have_one_slot_their_share_of_the_threads_and_consecutive_ports() -> None:
    settings = ServerSettings(Path("base.gguf"), port=8080, threads=4, slots=1)
    every = replica_settings(settings, 2)
    assert [(s.port, s.threads, s.slots) for s in every] == [(8080, 2, 1), (8081, 2, 1)]
    assert [s.port for s in replica_settings(ServerSettings(Path("b"), port=0), 3)] == [0, 0, 0]
    assert replica_settings(settings, 1) == [settings]
    with pytest.raises(ReqcheckError, match="would need ports above 65535; pass a lower --port"):
        replica_settings(ServerSettings(Path("b"), port=65535), 2)


def test_serve_refuses_adapters_on_different_base_models(
    tiny_adapters: dict[str, TrainResult],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for file in tiny_adapters["lora"].outfile.iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    manifest = json.loads((other / "reqcheck.json").read_text())
    manifest["base_model"]["name"] = "someone/another-model"
    (other / "reqcheck.json").write_text(json.dumps(manifest))
    code, err = run_cli(
        ["serve", str(tiny_adapters["alora"].outfile), str(other), *ANY_PORT], capsys, monkeypatch
    )
    assert code == 2 and err.count("\n") == 1
    assert f"{other} was trained on someone/another-model, not on" in err
    assert "serve them with one reqcheck serve each" in err
    assert _nothing_served()


def test_serve_refuses_a_folder_that_is_not_an_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err = run_cli(["serve", str(tmp_path), *ANY_PORT], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1
    assert "has no reqcheck.json; pass a directory written by reqcheck train" in err
    assert _nothing_served()


def test_serve_says_when_the_base_model_cannot_be_converted(
    tiny_adapters: dict[str, TrainResult],
    llama_cpp: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tiny test model's tokenizer is one llama.cpp's convert_hf_to_gguf.py does not know."""
    code, err = run_cli(["serve", str(tiny_adapters["alora"].outfile), *ANY_PORT], capsys, monkeypatch)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert last.startswith("error: llama.cpp's convert_hf_to_gguf.py failed (NotImplementedError: BPE")
    assert "; fix what it names" in last
    assert not list((cache_dir() / "served").glob("*.gguf"))


# real servers


def _start_line(pair: ServedPair, binary: Path, port: int) -> list[str]:
    """The export's own start line, as a user copies it from llama-server.txt, on a free port."""
    line = (pair.exports["alora"].folder / START_FILE).read_text().splitlines()[0]
    words = shlex.split(line.split("#")[0])
    return [str(binary), *words[1:], "--port", str(port), "--no-webui"]


@pytest.mark.slow
def test_a_loaded_adapter_answers_requests_that_name_none_until_its_scale_is_zero(
    served_smollm2: ServedPair, llama_engine: Path | None, tmp_path: Path
) -> None:
    """llama.cpp's own behaviour, on both versions: loading "without apply" leaves the adapter at global scale
    1, so requests naming no adapter get it; scale 0 (what reqcheck sets) gives them the base model.

    A slot keeps the KV the aLoRA computed for its invocation, and a later request that names no adapter and
    repeats that prompt reuses it unless it sends `cache_prompt: false` (docs/serving.md); so the base model
    is compared on a prompt the adapter has not seen."""
    pair = served_smollm2
    with LlamaServer(pair.base, [], log=tmp_path / "base.log") as plain:
        base = [_reply(plain.url, None, ask) for ask in range(len(ASKS))]
    adapter = pair.exports["alora"].adapter
    with _loaded_without_apply(pair, adapter, llama_engine, tmp_path) as url:
        assert [a["scale"] for a in _get(f"{url}/lora-adapters")] == [1.0]
        assert _reply(url, None) == _reply(url, []) == _reply(url, [{"id": 0, "scale": 1.0}])
        assert _reply(url, None).startswith('{"')
        zero_global_scales(url)  # the start file's POST /lora-adapters
        assert [a["scale"] for a in _get(f"{url}/lora-adapters")] == [0.0]
        # the slot still holds the first prompt with the KV the aLoRA computed for its invocation
        assert _reply(url, None, 0) != base[0]
        assert _reply(url, None, 0, cache=False) == base[0]
        assert _reply(url, None, 1) == base[1] and _reply(url, [], 1) == base[1]
        assert _reply(url, [{"id": 0, "scale": 1.0}], 1) != base[1]


class _loaded_without_apply:
    """A llama.cpp server with one adapter loaded as llama.cpp's "without apply" leaves it: the stock binary
    from the export's start line, or the prebuilt engine's `lora_init_without_apply` at scale 1."""

    def __init__(self, pair: ServedPair, adapter: Path, binary: Path | None, tmp_path: Path) -> None:
        self.pair, self.adapter, self.binary, self.tmp_path = pair, adapter, binary, tmp_path

    def __enter__(self) -> str:
        port = free_port()
        if self.binary is not None:
            log = (self.tmp_path / "stock.log").open("wb")
            self.process = subprocess.Popen(_start_line(self.pair, self.binary, port), stdout=log, stderr=log)
        else:
            script = (
                "import sys, threading, xllamacpp as x\n"
                "p = x.CommonParams(); p.model.path = sys.argv[1]; p.port = int(sys.argv[3]); p.verbosity = 0\n"
                "p.lora_adapters = [x.CommonAdapterLoraInfo(sys.argv[2], 1.0)]; p.lora_init_without_apply = True\n"
                "p.cache_ram_mib = 0; s = x.Server(p); threading.Event().wait()\n"
            )
            command = [sys.executable, "-c", script, str(self.pair.base), str(self.adapter), str(port)]
            self.process = subprocess.Popen(command)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                _get(f"{url}/lora-adapters")
                return url
            except OSError:
                time.sleep(0.25)
        raise AssertionError("the server did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


class _Serve:
    """`reqcheck serve` as a user runs it, in its own process; its stderr lines arrive in `lines`."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "reqcheck", "serve", *args]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stderr is not None
        stream = self.process.stderr
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    def wait_for(self, text: str, timeout: float = 600) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.seen.append(self.lines.get(timeout=1).rstrip("\n"))
            except queue.Empty:
                assert self.process.poll() is None, "\n".join(self.seen)
                continue
            if text in self.seen[-1]:
                return self.seen
        raise AssertionError(f"no {text!r} within {timeout} s: {self.seen}")

    def stop(self, number: int) -> int:
        self.process.send_signal(number)
        code = self.process.wait(timeout=60)
        self.wait_for("stopped", timeout=5)
        return code


@pytest.mark.slow
def test_reqcheck_serve_answers_only_requests_that_name_an_adapter(
    served_smollm2: ServedPair, llama_engine: Path | None, tmp_path: Path
) -> None:
    pair = served_smollm2
    env = {**os.environ, "REQCHECK_CACHE": str(pair.alora.parent / "cache")}
    env.pop("REQCHECK_LLAMA_SERVER", None)
    with LlamaServer(pair.base, [], log=tmp_path / "base.log") as plain:
        base = _reply(plain.url, None)
    port = free_port()
    args = [str(pair.alora), str(pair.lora), "--port", str(port), "--threads", "2"]
    if llama_engine is not None:
        args += ["--llama-server", str(llama_engine), "--log", str(tmp_path / "stock.log")]
    serving = _Serve(args, env)
    try:
        said = serving.wait_for("gate it with:")
        url = f"http://127.0.0.1:{port}"
        assert f"at {url}" in said[-4]
        assert f"--adapter={pair.alora} --adapter={pair.lora} --reqcheck-endpoint={url}" in said[-1]
        assert {a["scale"] for a in _get(f"{url}/lora-adapters")} == {0.0}
        assert _reply(url, None) == base and _reply(url, []) == base
        named = _reply(url, [{"id": _adapter_id(url, pair.alora), "scale": 1.0}])
        assert named.startswith('{"') and named != base
        assert serving.stop(signal.SIGTERM) == 0
    finally:
        serving.process.kill()
    again = _Serve(args, env)  # a second start converts nothing
    try:
        said = again.wait_for("gate it with:", timeout=120)
        assert not [line for line in said if "converting" in line]
        assert again.stop(signal.SIGINT) == 0
    finally:
        again.process.kill()


@pytest.mark.slow
def test_reqcheck_serve_starts_one_slot_replicas_that_split_the_threads(
    served_smollm2: ServedPair, tmp_path: Path
) -> None:
    pair = served_smollm2
    env = {**os.environ, "REQCHECK_CACHE": str(pair.alora.parent / "cache")}
    env.pop("REQCHECK_LLAMA_SERVER", None)
    port = free_port()
    serving = _Serve([str(pair.alora), "--port", str(port), "--threads", "2", "--replicas", "2"], env)
    try:
        said = serving.wait_for("gate it with:")
        urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
        assert f"at 2 one-slot replicas (xllamacpp {_engine_version()}, 1 thread(s) each): " + ", ".join(
            urls
        ) in "\n".join(said)
        assert said[-1].endswith(" ".join(f"--reqcheck-endpoint={url}" for url in urls))
        replies = set()
        for url in urls:
            props = _get_props(url)
            assert props["total_slots"] == 1
            assert {a["scale"] for a in _get(f"{url}/lora-adapters")} == {0.0}
            replies.add(_reply(url, [{"id": _adapter_id(url, pair.alora), "scale": 1.0}]))
        assert len(replies) == 1 and next(iter(replies)).startswith('{"')
        assert serving.stop(signal.SIGTERM) == 0
    finally:
        serving.process.kill()
    for url_port in (port, port + 1):  # both replicas stopped with it
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", url_port)) != 0


def _get_props(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/props", timeout=30) as answer:
        return json.loads(answer.read())


def _engine_version() -> str | None:
    from reqcheck.serving import engine

    return engine.version()


def test_flash_attention_is_off_on_a_cpu_only_engine_unless_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    from reqcheck.serving import engine

    module = engine.load()
    kinds = module.llama_flash_attn_type
    cpu = {"name": "CPU", "type": module.ggml_backend_dev_type.GGML_BACKEND_DEVICE_TYPE_CPU}
    gpu = {"name": "CUDA0", "type": module.ggml_backend_dev_type.GGML_BACKEND_DEVICE_TYPE_GPU}
    monkeypatch.setattr(module, "get_device_info", lambda: [cpu])
    assert engine._attention(module, None) == kinds.LLAMA_FLASH_ATTN_TYPE_DISABLED
    assert engine._attention(module, "on") == kinds.LLAMA_FLASH_ATTN_TYPE_ENABLED
    monkeypatch.setattr(module, "get_device_info", lambda: [cpu, gpu])
    assert engine._attention(module, None) == kinds.LLAMA_FLASH_ATTN_TYPE_AUTO
    assert engine._arguments(["-m", "b.gguf", "-fa", "off"]).flash_attn == "off"

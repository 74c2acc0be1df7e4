"""Fake servers for the served-path fault tests: a scripted HTTP server, and a llama-server that replays real
answer shapes around a fake reqcheck adapter (a manifest and empty weights, no model).

Every server listens on 127.0.0.1, stops by itself after `LIFETIME` seconds, and records what it was sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from reqcheck.formats.manifest import BaseModelRef, Manifest, content_hash
from reqcheck.formats.output import JSON_V1, OutputSpec
from reqcheck.formats.prompting import INTRINSIC_RENDERER, PromptSpec
from reqcheck.formats.served import ServedTag

LIFETIME = 60.0  # seconds a fake server lives, whatever the test does
INVOCATION_IDS = [1, 520, 9531, 198]  # SmolLM2's `<|im_start|>assistant\n`, as a real export lists it
REQUIREMENT = "The reply is polite."
BUILD = "b7000-abc1234"

Answer = Callable[[BaseHTTPRequestHandler], None]
Seen = list[tuple[str, str, dict[str, str]]]


class _Fake(BaseHTTPRequestHandler):
    """Records each request (method, path, headers by lower-case name) and answers it with `answer`."""

    answer: Answer
    seen: Seen

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        self.answer()

    do_GET = do_POST = _handle

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the client hung up on a slow answer: that is the point


@contextmanager
def fake_server(answer: Answer, keep_alive: bool = False) -> Iterator[tuple[str, Seen]]:
    """A server on 127.0.0.1 that answers every request with `answer`; yields its URL and what it saw.

    Without `keep_alive` it speaks HTTP/1.0, closing the connection after each answer.
    """
    seen: Seen = []
    handler = type(
        "Handler",
        (_Fake,),
        {"answer": answer, "seen": seen, "protocol_version": "HTTP/1.1" if keep_alive else "HTTP/1.0"},
    )
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    timer = threading.Timer(LIFETIME, server.shutdown)
    timer.daemon = True
    thread.start()
    timer.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()


def send(status: int, body: bytes, content_type: str = "application/json", **headers: str) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def fake_adapter(
    folder: Path,
    name: str = "polite",
    requirement: str = REQUIREMENT,
    label_token_ids: dict[str, list[int]] | None = None,
    adapter_type: str = "lora",
) -> Path:
    """A reqcheck adapter directory as `reqcheck train` writes it for SmolLM2 (json-v1 output, intrinsic-v1
    prompt), with an empty weights file: enough for a served check, which loads no model.

    By default a requirement check (`{"score": "yes"}`); with `label_token_ids`, a classifier of those labels
    (`{"label": ...}`)."""
    classifier = label_token_ids is not None
    label_token_ids = label_token_ids or {"yes": [7, 8, 2], "no": [9, 8, 2]}
    from safetensors.numpy import save_file

    path = folder / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({}, str(path / "adapter_model.safetensors"))
    Manifest(
        base_model=BaseModelRef("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        adapter_type=adapter_type,
        prompt=PromptSpec(
            "<|im_start|>assistant\n",
            INTRINSIC_RENDERER,
            instruction="Does the message above meet the requirement?",
        ),
        invocation_ids=list(INVOCATION_IDS),
        labels=dict.fromkeys(label_token_ids, 10),
        label_token_ids=label_token_ids,
        positive_labels=[] if classifier else ["yes"],
        requirement=None if classifier else requirement,
        output=OutputSpec(JSON_V1, "label" if classifier else "score"),
    ).write(path)
    return path


def lora_entry(adapter: Path, id: int = 0) -> dict[str, Any]:
    """The `/lora-adapters` entry llama-server lists for `adapter` exported by reqcheck (an aLoRA's with its
    invocation tokens, less the leading one, as reqcheck export writes them)."""
    tag = ServedTag(adapter.name, content_hash(adapter)).render()
    entry = {
        "id": id,
        "path": f"/srv/{adapter.name}.gguf",
        "scale": 0.0,
        "task_name": tag,
        "prompt_prefix": "",
    }
    if Manifest.read(adapter).adapter_type == "alora":
        entry["alora_invocation_tokens"] = INVOCATION_IDS[1:]
    return entry


def top(label_logprobs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": i, "token": token, "bytes": list(token.encode()), "logprob": lp}
            for i, (token, lp) in enumerate(label_logprobs.items())]  # fmt: skip


def adapter_answer(label: str = "yes", logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A llama-server chat completion of a json-v1 adapter: `{"score": "<label>"}`, a token at a time, with
    top logprobs at every token; `logprobs` replaces the value token's alternatives."""
    alternatives = logprobs if logprobs is not None else {"yes": -0.105, "no": -2.303}
    pieces = ['{"', "score", '":', ' "', label, '"}']
    content = [
        {"id": i, "token": piece, "bytes": list(piece.encode()), "logprob": alternatives.get(piece, -0.01),
         "top_logprobs": top(alternatives if piece == label else {piece: -0.01})}
        for i, piece in enumerate(pieces)
    ]  # fmt: skip
    return _completion("".join(pieces), content)


def first_token_answer(probs: dict[int, float]) -> dict[str, Any]:
    """A llama-server chat completion of one token with `post_sampling_probs`: `top_probs` by token id, the
    most probable first (the one-step read of `RemoteBackend`)."""
    top = [
        {"id": token_id, "token": f"t{token_id}", "bytes": list(f"t{token_id}".encode()), "prob": prob}
        for token_id, prob in sorted(probs.items(), key=lambda item: -item[1])
    ]
    entry = {**top[0], "top_probs": top} if top else {"id": 0, "token": "", "prob": 1.0, "top_probs": []}
    return _completion(str(entry["token"]), [entry])


def judge_answer(label: str = "yes", logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A llama-server chat completion of the base model asked the judge's question: one token."""
    alternatives = logprobs if logprobs is not None else {"yes": -0.223, "no": -1.609, "Yes": -4.0}
    entry = {"id": 0, "token": label, "bytes": list(label.encode()), "logprob": alternatives.get(label, -0.2),
             "top_logprobs": top(alternatives)}  # fmt: skip
    return _completion(label, [entry])


def _completion(text: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": {"content": content},
            }
        ],
        "created": 1765000000,
        "model": "base.gguf",
        "system_fingerprint": BUILD,
        "object": "chat.completion",
        "usage": {"completion_tokens": len(content), "prompt_tokens": 40, "total_tokens": 40 + len(content)},
        "id": "chatcmpl-fake",
    }


def is_judge(body: dict[str, Any]) -> bool:
    """Whether a chat completion request is the judge's (every adapter at scale 0)."""
    return all(entry.get("scale") == 0.0 for entry in body.get("lora") or [{}])


@dataclass
class FakeLlama:
    """A llama-server's routes: `/props`, `/v1/models`, `/lora-adapters`, `/tokenize`, and chat completions
    answered by `complete(body) -> (status, JSON-able answer or raw bytes)`. `completions` counts them."""

    adapters: list[dict[str, Any]]
    complete: Callable[[dict[str, Any]], tuple[int, Any]]
    props: dict[str, Any] = field(
        default_factory=lambda: {"build_info": BUILD, "model_path": "/srv/base.gguf"}
    )
    completions: int = 0
    seen: Seen = field(default_factory=list)  # every request: method, path, headers
    prefill: bool = False  # whether `/apply-template` continues a final assistant message (else: no route)
    tokens: dict[str, list[int]] = field(default_factory=dict)  # `/tokenize` by text (else the invocation)
    lock: threading.Lock = field(default_factory=threading.Lock)
    dead: bool = False  # a killed server: every request, the one being answered included, gets no answer

    def count(self, path: str) -> int:
        return sum(1 for _, seen_path, _ in self.seen if seen_path == path)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.body or b"null")  # type: ignore[attr-defined]
        routes = {
            "/props": lambda: (200, self.props),
            "/v1/models": lambda: (200, {"data": [{"id": "base.gguf", "meta": {"n_embd": 576}}]}),
            "/lora-adapters": lambda: (200, self.adapters),
            "/tokenize": lambda: (
                200,
                {"tokens": self.tokens.get(body.get("content"), list(INVOCATION_IDS))},
            ),
            "/apply-template": lambda: self._template(body),
            "/v1/chat/completions": lambda: self._completion(body),
        }
        status, data = routes.get(handler.path, lambda: (404, {"error": {"message": "not found"}}))()
        if self.dead:
            handler.close_connection = True
            return
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        send(status, raw)(handler)

    def _template(self, body: dict[str, Any]) -> tuple[int, Any]:
        if not self.prefill:
            return 404, {"error": {"message": "not found"}}
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in body["messages"][:-1])
        return 200, {"prompt": f"{turns}<|im_start|>assistant\n{body['messages'][-1]['content']}"}

    def _completion(self, body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            self.completions += 1
        return self.complete(body)


@contextmanager
def fake_llama(
    adapters: list[dict[str, Any]],
    complete: Callable[[dict[str, Any]], tuple[int, Any]],
    keep_alive: bool = False,
    prefill: bool = False,
) -> Iterator[tuple[str, FakeLlama]]:
    """A fake llama-server serving `adapters`; yields its URL and its state (edit it to change the server).

    With `prefill` it continues a prefilled answer, so checks take the one-step read."""
    state = FakeLlama(adapters, complete, prefill=prefill)
    with fake_server(lambda handler: state.answer(handler), keep_alive) as (url, seen):
        state.seen = seen
        yield url, state

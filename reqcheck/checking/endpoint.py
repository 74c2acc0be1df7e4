"""An OpenAI-compatible server over HTTP: pooled connections, bounded retries, and what the server is.

`Endpoint` sends JSON requests through one urllib3 connection pool shared by every thread, retries 429,
5xx, timeouts and dropped connections with exponential backoff (a bounded number of times), and turns
every other failure into one sentence naming the fix. `ServerInfo.probe` tells llama.cpp's
`llama-server` from vLLM by what each exposes (`/props` and `/lora-adapters`; `/version` and
`/v1/models` entries with a `parent`) and keeps what they report about their base model and adapters.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, TimeoutError

from reqcheck.errors import ReqcheckError, hide_url_credentials

LLAMA_CPP = "llama.cpp"
VLLM = "vllm"
RETRIED_STATUS = (429, 500, 502, 503, 504)
API_KEY_ENV = "REQCHECK_API_KEY"


class Endpoint:
    """JSON over HTTP to one server, safe to share between threads (`concurrency` pooled connections).

    `retries` more attempts follow a 429, a 5xx, a timeout or a refused or dropped connection, waiting
    `backoff`, then twice as long each time. A bearer token comes from `api_key` or $REQCHECK_API_KEY.
    """

    def __init__(
        self,
        url: str,
        concurrency: int = 4,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        api_key: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ReqcheckError(
                f"Endpoint {hide_url_credentials(url)!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8080."
            )
        self.shown = hide_url_credentials(self.url)
        self.retries, self.backoff = retries, backoff
        headers = {"Content-Type": "application/json"}
        key = api_key or os.environ.get(API_KEY_ENV)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._pool = urllib3.PoolManager(
            maxsize=max(1, concurrency),
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=10.0, read=timeout),
            headers=headers,
        )
        self.timeout = timeout

    def get(self, path: str, missing_ok: bool = False) -> Any:
        """The JSON a GET answers; None for a 404 when `missing_ok` (a route this engine lacks)."""
        return self.request("GET", path, None, missing_ok)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def request(self, method: str, path: str, body: dict[str, Any] | None, missing_ok: bool = False) -> Any:
        """One request, retried on what a busy or restarting server answers; its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._pool.request(method, self.url + path, body=data)
            except HTTPError as exc:
                problem = _connection_problem(exc, self.timeout)
                continue
            if response.status in RETRIED_STATUS:
                problem = f"it answered HTTP {response.status} ({_message(response.data)})"
                continue
            if response.status == 404 and missing_ok:
                return None
            if response.status >= 400:
                raise ReqcheckError(
                    f"The server at {self.shown} refused {method} {path} with HTTP {response.status} "
                    f"({_message(response.data)}); fix the request or the server's options."
                )
            try:
                return json.loads(response.data)
            except ValueError:
                raise ReqcheckError(
                    f"The server at {self.shown} answered {method} {path} with something that is not JSON; "
                    "point --reqcheck-endpoint at an OpenAI-compatible server (llama-server or vLLM)."
                ) from None
        raise ReqcheckError(
            f"The server at {self.shown} failed {method} {path} {self.retries + 1} times ({problem}); "
            "check that it is running and reachable, then rerun."
        )


def _connection_problem(exc: HTTPError, timeout: float) -> str:
    if isinstance(exc, NewConnectionError) or "refused" in str(exc).lower():
        return "the connection was refused"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ProtocolError):
        return "the server dropped the connection"
    return f"{type(exc).__name__}"


def _message(data: bytes) -> str:
    """The server's error message, on one line and short."""
    text = data.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except ValueError:
        pass
    text = " ".join(text.split())
    return (text[:200] + "…") if len(text) > 200 else text or "no message"


@dataclass
class ServerInfo:
    """What a server says about itself: engine, version, base model, its hash if any, adapters.

    `adapters` are llama-server's `/lora-adapters` entries (`id`, `path`, `scale`, `task_name`, and
    `alora_invocation_tokens` for an aLoRA) or vLLM's `/v1/models` entries whose `parent` is the base.
    `meta` is llama-server's model metadata (`n_vocab`, `n_embd`, `n_params`, ...).
    """

    engine: str
    version: str | None = None
    model: str | None = None
    model_hash: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    adapters: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def probe(cls, endpoint: Endpoint) -> ServerInfo:
        """Ask the server what it is; one sentence when it is neither llama-server nor vLLM."""
        models = endpoint.get("/v1/models", missing_ok=True) or {}
        entries = [m for m in models.get("data") or [] if isinstance(m, dict)]
        props = endpoint.get("/props", missing_ok=True)
        if isinstance(props, dict) and "build_info" in props:
            adapters = endpoint.get("/lora-adapters", missing_ok=True) or []
            first = entries[0] if entries else {}
            return cls(
                engine=LLAMA_CPP,
                version=str(props.get("build_info")),
                model=props.get("model_path") or props.get("model_alias") or first.get("id"),
                model_hash=props.get("model_hash") or first.get("digest"),
                meta=dict(first.get("meta") or {}),
                adapters=[a for a in adapters if isinstance(a, dict)],
            )
        if entries and all("parent" in m for m in entries):
            version = endpoint.get("/version", missing_ok=True) or {}
            bases = [m for m in entries if not m.get("parent")]
            base = bases[0] if bases else entries[0]
            return cls(
                engine=VLLM,
                version=str(version.get("version")) if version else None,
                model=base.get("root") or base.get("id"),
                meta={"max_model_len": base.get("max_model_len"), "id": base.get("id")},
                adapters=[m for m in entries if m.get("parent")],
            )
        raise ReqcheckError(
            f"The server at {endpoint.shown} is neither llama-server nor vLLM (it has no /props with "
            "build_info and no /v1/models entries with a parent); serve the adapter with one of those."
        )

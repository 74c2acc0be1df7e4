"""An OpenAI-compatible server over HTTP: pooled connections, bounded retries, a deadline, and what the
server is.

`Endpoint` sends JSON requests through one urllib3 connection pool shared by every thread, retries 429,
5xx, timeouts and dropped connections with exponential backoff (a bounded number of times), and turns
every other failure into one sentence naming the fix. Its `timeout` is a deadline for the whole request,
retries, waits and a slow answer included: urllib3's own timeouts bound each socket read, so a server that
sends one byte a second would never meet them. `ServerInfo.probe` tells llama.cpp's `llama-server` from
vLLM by what each exposes (`/props` and `/lora-adapters`; `/version` and `/v1/models` entries with a
`parent`) and keeps what they report about their base model and adapters.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.util import parse_url

from reqcheck.errors import ReqcheckError, hide_url_credentials, plain_text

LLAMA_CPP = "llama.cpp"
VLLM = "vllm"
RETRIED_STATUS = (429, 500, 502, 503, 504)
API_KEY_ENV = "REQCHECK_API_KEY"
CONNECT_TIMEOUT = 10.0
# a host name (RFC 3986 reg-name), or an IP literal in brackets, which parse_url has checked
_HOST = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+|\[[^\]]+\]")


class Unreachable(ReqcheckError):
    """The server stopped answering (refused, dropped, busy or late past every retry): where there are other
    replicas, its unfinished checks can go to them."""


class Endpoint:
    """JSON over HTTP to one server, safe to share between threads (`concurrency` pooled connections).

    `timeout` is each request's deadline in seconds, over every attempt and every byte of the answer.
    `connections` counts the connections opened so far (a new one may reach a restarted server).
    Within it, `retries` more attempts follow a 429, a 5xx, a timeout or a refused or dropped connection,
    waiting `backoff`, then twice as long each time. A `user:pass@` in `url` is sent as basic auth (never
    in the request line, never shown); without one, a bearer token comes from `api_key` or
    $REQCHECK_API_KEY. A trailing `/v1` (an OpenAI base URL) names the same server and is dropped.
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
        if not 0 < timeout < math.inf:  # NaN fails too
            raise ReqcheckError(
                f"A request's deadline must be a number of seconds above 0, not {timeout}; pass e.g. 120."
            )
        self.url, user_info = _request_root(url)
        self.shown = hide_url_credentials(url.rstrip("/"))
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        # connections opened so far: a new one may reach a restarted server or another replica
        self.connections = 0
        self._counting = threading.Lock()
        headers = {"Content-Type": "application/json"}
        key = api_key or os.environ.get(API_KEY_ENV)
        if user_info is not None:
            user, _, password = user_info.partition(":")
            # UTF-8 (RFC 7617), which make_headers would send for ASCII too, where it fails on other characters
            pair = f"{unquote(user)}:{unquote(password)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif key:
            headers["Authorization"] = f"Bearer {key}"
        self._pool = urllib3.PoolManager(
            maxsize=max(1, concurrency), block=True, retries=False, headers=headers
        )
        self._pool.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedTLSPool}

    def get(self, path: str, missing_ok: bool = False) -> Any:
        """The JSON a GET answers; None for a 404 when `missing_ok` (a route this engine lacks)."""
        return self.request("GET", path, None, missing_ok)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def request(self, method: str, path: str, body: dict[str, Any] | None, missing_ok: bool = False) -> Any:
        """One request, retried on what a busy or restarting server answers, within the deadline; its JSON."""
        data = None if body is None else json.dumps(body).encode()
        deadline = time.monotonic() + self.timeout
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                wait = self.backoff * 2 ** (attempt - 1)
                if time.monotonic() + wait >= deadline:
                    raise self._late(method, path, attempt, problem)
                time.sleep(wait)
            try:
                status, payload, location = self._send(method, path, data, deadline)
            except _Expired:
                raise self._late(method, path, attempt + 1, "it had not finished answering") from None
            except HTTPError as exc:
                problem = _connection_problem(exc)
                if isinstance(exc, ReadTimeoutError) or time.monotonic() >= deadline:
                    raise self._late(method, path, attempt + 1, problem) from None
                continue
            if status in RETRIED_STATUS:
                problem = f"it answered HTTP {status} ({_message(payload)})"
                continue
            if 300 <= status < 400:
                raise ReqcheckError(
                    f"The server at {self.shown} answered {method} {path} with a redirect (HTTP {status}) to "
                    f"{plain_text(location or 'no location')}; point --reqcheck-endpoint at the server itself."
                )
            if status == 404 and missing_ok:
                return None
            if status in (401, 403):
                raise ReqcheckError(
                    f"The server at {self.shown} refused {method} {path} with HTTP {status} "
                    f"({_message(payload)}); give it the credentials it wants: an API key in ${API_KEY_ENV}, "
                    "or user:pass@ in the endpoint URL for basic auth."
                )
            if status >= 400:
                raise ReqcheckError(
                    f"The server at {self.shown} refused {method} {path} with HTTP {status} "
                    f"({_message(payload)}); fix the request or the server's options."
                )
            try:
                return json.loads(payload)
            except ValueError:
                raise ReqcheckError(
                    f"The server at {self.shown} answered {method} {path} with something that is not JSON; "
                    "point --reqcheck-endpoint at an OpenAI-compatible server (llama-server or vLLM)."
                ) from None
        raise Unreachable(
            f"The server at {self.shown} failed {method} {path} {self.retries + 1} times ({problem}); "
            "check that it is running and reachable, then rerun."
        )

    def _send(
        self, method: str, path: str, data: bytes | None, deadline: float
    ) -> tuple[int, bytes, str | None]:
        """One attempt: status, whole body and Location; `_Expired` when the deadline cut it short."""
        left = max(deadline - time.monotonic(), 0.001)
        watch = _Watch(left)
        _current.watch = watch
        try:
            response = self._pool.request(
                method,
                self.url + path,
                body=data,
                preload_content=False,
                timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT, left), read=left),
                pool_timeout=left,
            )
            try:
                payload = response.read()
            finally:
                watch.stop()  # before the connection goes back to the pool for another request
                response.release_conn()
        except HTTPError:
            if watch.expired:
                raise _Expired from None
            raise
        finally:
            watch.stop()
            _current.watch = None
            if watch.connected:
                with self._counting:
                    self.connections += 1
        if watch.expired:  # an answer without a length ends where the deadline shut the socket
            raise _Expired
        return response.status, payload, response.headers.get("Location")

    def _late(self, method: str, path: str, attempts: int, problem: str) -> Unreachable:
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        return Unreachable(
            f"The server at {self.shown} gave no answer to {method} {path} within {self.timeout:g} s ({tries}; "
            f"the last: {problem}); raise the deadline (--reqcheck-timeout) or check the server."
        )


def _request_root(url: str) -> tuple[str, str | None]:
    """`url` as the root every request path is appended to, without credentials, and its user-info.

    The user-info ends at the last `@`, so a password may hold `/`, `#`, `?` or `@`. A URL that cannot be
    a request target is one sentence here, not a failure retried later.
    """
    shown = hide_url_credentials(url)
    scheme, separator, rest = url.rstrip("/").partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        raise ReqcheckError(f"Endpoint {shown!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8080.")
    user_info, at, rest = rest.rpartition("@")
    problem = _target_problem(url, f"{scheme}://{rest}")
    if problem:
        raise ReqcheckError(
            f"Endpoint {shown!r} cannot be a request target ({problem}); pass the server's root URL, e.g. "
            "http://127.0.0.1:8080."
        )
    root = f"{scheme.lower()}://{rest}"
    if root.endswith("/v1"):
        root = root[: -len("/v1")].rstrip("/")
    return root, user_info if at else None


def _target_problem(url: str, bare: str) -> str:
    """Why `bare` (`url` without its user-info) cannot be a request target; empty when it can."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return "it holds a space or a control character"
    try:
        parsed = parse_url(bare)
    except LocationParseError:
        return "its host or port is malformed"
    if not parsed.host:
        return "it names no host"
    if parsed.port == 0:
        return "port 0 is not a port a server listens on"
    if not _HOST.fullmatch(parsed.host):
        return "its host holds characters no host name has"
    if parsed.query is not None or parsed.fragment is not None:
        return "it has a query or a fragment"
    return ""


class _Expired(Exception):
    """The deadline passed while an attempt was still connecting, sending or reading."""


_current = threading.local()  # the `_Watch` of the attempt this thread is making


class _Watch:
    """Shuts the attempt's socket when its time is up, so that a read blocked on a slow server returns."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self.connected = False  # the attempt opened a connection of its own
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, connection: HTTPConnection, opened: bool) -> None:
        with self._lock:
            self._connection = connection
            self.connected |= opened
            if self.expired:
                _shut(connection)

    def stop(self) -> None:
        with self._lock:
            self._connection = None
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._connection is not None:
                _shut(self._connection)


def _shut(connection: HTTPConnection) -> None:
    sock = connection.sock
    if isinstance(sock, socket.socket):
        # the plain socket's shutdown, also under TLS: SSLSocket.shutdown would unwrap it under a reader
        with suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedConnection(HTTPConnection):
    """Hands itself to the current attempt's `_Watch` once connected and on every request."""

    def connect(self) -> None:
        super().connect()
        _watched(self, opened=True)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watched(self)
        super().request(*args, **kwargs)


class _WatchedTLSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _watched(self, opened=True)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watched(self)
        super().request(*args, **kwargs)


def _watched(connection: HTTPConnection, opened: bool = False) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.watch(connection, opened)


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedTLSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedTLSConnection


def _connection_problem(exc: HTTPError) -> str:
    if isinstance(exc, NewConnectionError) or "refused" in str(exc).lower():
        return "the connection was refused"
    if isinstance(exc, ConnectTimeoutError):
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, ProtocolError):
        return "the server dropped the connection"
    return f"{type(exc).__name__}"


def _message(data: bytes) -> str:
    """The server's error message, as one short line of plain text."""
    text = data.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        text = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except ValueError:
        pass
    return plain_text(text) or "no message"


@dataclass
class ServerInfo:
    """What a server says about itself: engine, version, base model, its hash if any, adapters.

    `adapters` are llama-server's `/lora-adapters` entries (`id`, `path`, `scale`, `task_name`, and
    `alora_invocation_tokens` for an aLoRA) or vLLM's `/v1/models` entries whose `parent` is the base.
    `meta` is llama-server's model metadata (`n_vocab`, `n_embd`, `n_params`, ...); `slots` its parallel
    slots (`/props` `total_slots`; None when it does not say).
    """

    engine: str
    version: str | None = None
    model: str | None = None
    model_hash: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    adapters: list[dict[str, Any]] = field(default_factory=list)
    slots: int | None = None

    @classmethod
    def probe(cls, endpoint: Endpoint) -> ServerInfo:
        """Ask the server what it is; one sentence when it is neither llama-server nor vLLM."""
        models = endpoint.get("/v1/models", missing_ok=True) or {}
        entries = [m for m in models.get("data") or [] if isinstance(m, dict)]
        props = endpoint.get("/props", missing_ok=True)
        if isinstance(props, dict) and "build_info" in props:
            first = entries[0] if entries else {}
            return cls(
                engine=LLAMA_CPP,
                version=_shown(props.get("build_info")),
                model=_shown(props.get("model_path") or props.get("model_alias") or first.get("id")),
                model_hash=_shown(props.get("model_hash") or first.get("digest")),
                meta=dict(first.get("meta") or {}),
                adapters=read_adapters(endpoint),
                slots=_count(props.get("total_slots")),
            )
        if entries and all("parent" in m for m in entries):
            version = endpoint.get("/version", missing_ok=True) or {}
            bases = [m for m in entries if not m.get("parent")]
            base = bases[0] if bases else entries[0]
            return cls(
                engine=VLLM,
                version=_shown(version.get("version")) if version else None,
                model=_shown(base.get("root") or base.get("id")),
                meta={"max_model_len": base.get("max_model_len"), "id": base.get("id")},
                adapters=[m for m in entries if m.get("parent")],
            )
        raise ReqcheckError(
            f"The server at {endpoint.shown} is neither llama-server nor vLLM (it has no /props with "
            "build_info and no /v1/models entries with a parent); serve the adapter with one of those."
        )


def read_adapters(endpoint: Endpoint) -> list[dict[str, Any]]:
    """llama-server's `/lora-adapters` entries, those with an integer id (a server that lacks the route has none)."""
    entries = endpoint.get("/lora-adapters", missing_ok=True)
    if not isinstance(entries, list):
        return []
    return [a for a in entries if isinstance(a, dict) and type(a.get("id")) is int]


def _shown(value: Any) -> str | None:
    """What a server says about itself, as reqcheck shows and reports it: plain text (None stays None)."""
    return None if value is None else plain_text(value)


def _count(value: Any) -> int | None:
    """A positive count a server reports, or None for anything else."""
    return value if type(value) is int and value > 0 else None

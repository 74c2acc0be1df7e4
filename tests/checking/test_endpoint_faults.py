"""`Endpoint` against hostile servers: each fault is one sentence, soon, and never a hang or a leaked password.

Every server here is a small fake on 127.0.0.1 (`fakes.fake_server`): it answers with a scripted function, stops
by itself after `fakes.LIFETIME` seconds, and its slow answers stop after a bounded number of bytes. The only
timing assertions are loose upper bounds that prove a call does not hang.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest

from reqcheck.checking.endpoint import LLAMA_CPP, Endpoint, ServerInfo
from reqcheck.errors import ReqcheckError, hide_url_credentials
from reqcheck.serving.llama_server import free_port
from tests.checking.fakes import Answer, fake_server, send

HANG_BOUND = 15.0  # a call with a 2 s deadline that takes longer than this hangs
DEADLINE = "; raise the deadline \\(--reqcheck-timeout\\) or check the server\\.$"


def _trickle(raw: bytes, gap: float = 0.1, head: bytes = b"") -> Answer:
    """`head` at once, then `raw` one byte every `gap` seconds (bounded: `raw` is short)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(head)
        for i in range(len(raw)):
            handler.wfile.write(raw[i : i + 1])
            time.sleep(gap)

    return answer


def _raises_soon(call: Callable[[], object], pattern: str) -> str:
    """The one-line ReqcheckError `call` raises, within HANG_BOUND seconds."""
    started = time.monotonic()
    with pytest.raises(ReqcheckError, match=pattern) as caught:
        call()
    assert time.monotonic() - started < HANG_BOUND
    assert "\n" not in str(caught.value)
    return str(caught.value)


# defect 3: `timeout` is a deadline for the whole request: every retry and every byte of a slow answer


def test_a_body_that_trickles_meets_the_deadline() -> None:
    body = json.dumps({"data": [], "pad": "x" * 180}).encode()  # 20 s at one byte per 0.1 s
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with fake_server(_trickle(body, head=head.encode())) as (url, _):
        endpoint = Endpoint(url, timeout=2.0, retries=1, backoff=0.1)
        _raises_soon(
            lambda: endpoint.get("/v1/models"), f"no answer to GET /v1/models within 2 s.*{DEADLINE}"
        )


def test_headers_that_trickle_meet_the_deadline() -> None:
    raw = f"HTTP/1.1 200 OK\r\nX-Pad: {'a' * 160}\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    with fake_server(_trickle(raw)) as (url, _):
        endpoint = Endpoint(url, timeout=2.0, retries=1, backoff=0.1)
        _raises_soon(lambda: endpoint.get("/props"), f"no answer to GET /props within 2 s.*{DEADLINE}")


def test_retries_and_their_waits_end_at_the_deadline() -> None:
    with fake_server(send(503, b'{"error": {"message": "busy"}}')) as (url, _):
        endpoint = Endpoint(url, timeout=1.0, retries=4, backoff=2.0)  # waits alone would take 30 s
        _raises_soon(
            lambda: endpoint.post("/v1/chat/completions", {}),
            f"no answer to POST /v1/chat/completions within 1 s .*HTTP 503 \\(busy\\)\\){DEADLINE}",
        )


def test_a_server_that_never_answers_meets_the_deadline() -> None:
    with fake_server(lambda handler: time.sleep(20)) as (url, _):
        endpoint = Endpoint(url, timeout=2.0, retries=3, backoff=0.5)
        _raises_soon(lambda: endpoint.get("/v1/models"), f"within 2 s.*{DEADLINE}")


# what held against the same campaign, and must keep holding: one sentence each, soon


def _reset_mid_body(handler: BaseHTTPRequestHandler) -> None:
    handler.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"data": [')
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    handler.connection.close()


@pytest.mark.parametrize(
    ("answer", "pattern"),
    [
        (
            send(200, b"<html>hello</html>", "text/html"),
            "something that is not JSON; point --reqcheck-endpoint",
        ),
        (send(200, b"x" * 50_000_000, "text/plain"), "something that is not JSON"),
        (
            send(429, b"slow down"),
            "failed GET /v1/models 2 times \\(it answered HTTP 429 \\(slow down\\)\\)",
        ),
        (send(500, b'{"error": "boom"}'), "failed GET /v1/models 2 times .*HTTP 500 \\(boom\\)"),
        (_reset_mid_body, "failed GET /v1/models 2 times \\(the server dropped the connection\\)"),
        (send(404, b"no such route"), "refused GET /v1/models with HTTP 404 \\(no such route\\); fix"),
    ],
    ids=["html", "50MB", "429-storm", "500-storm", "reset-mid-body", "404"],
)
def test_a_misbehaving_server_is_one_sentence(answer: Answer, pattern: str) -> None:
    with fake_server(answer) as (url, _):
        endpoint = Endpoint(url, timeout=5.0, retries=1, backoff=0.1)
        _raises_soon(lambda: endpoint.get("/v1/models"), pattern)


@pytest.mark.parametrize(
    "url",
    [f"http://127.0.0.1:{free_port()}", f"http://[::1]:{free_port()}"],
    ids=["closed-port", "ipv6-closed-port"],
)
def test_a_closed_port_is_one_sentence(url: str) -> None:
    endpoint = Endpoint(url, timeout=2.0, retries=1, backoff=0.1)
    _raises_soon(
        lambda: endpoint.get("/v1/models"), "failed GET /v1/models 2 times .*; check that it is running"
    )


def test_https_to_a_plain_server_is_one_sentence() -> None:
    with fake_server(send(200, b"{}")) as (url, _):
        endpoint = Endpoint(url.replace("http://", "https://"), timeout=2.0, retries=1, backoff=0.1)
        _raises_soon(lambda: endpoint.get("/v1/models"), "The server at https://127.0.0.1:.* GET /v1/models")


# defect 10: a redirect, an OpenAI base URL, and URLs that cannot be a request target


def test_a_redirect_is_an_error_naming_where_it_points() -> None:
    answer = send(302, b'{"data": []}', Location="http://elsewhere.example:9000/v1/models")
    with (
        fake_server(answer) as (url, seen),
        pytest.raises(
            ReqcheckError, match=r"redirect \(HTTP 302\) to http://elsewhere\.example:9000/v1/models"
        ),
    ):
        Endpoint(url, retries=2).get("/v1/models")
    assert len(seen) == 1  # not retried, not followed


def _llama_server(handler: BaseHTTPRequestHandler) -> None:
    answers = {"/props": {"build_info": "b1-abc"}, "/v1/models": {"data": []}, "/lora-adapters": []}
    if handler.path in answers:
        send(200, json.dumps(answers[handler.path]).encode())(handler)
    else:
        send(404, b"not found")(handler)


@pytest.mark.parametrize("suffix", ["/v1", "/v1/"])
def test_an_openai_base_url_is_the_same_server(suffix: str) -> None:
    """Decided: a trailing /v1 (the usual OpenAI base URL) is dropped silently; it names the same server."""
    with fake_server(_llama_server) as (url, seen):
        info = ServerInfo.probe(Endpoint(url + suffix))
    assert info.engine == LLAMA_CPP and info.version == "b1-abc"
    assert {path for _, path, _ in seen} == {"/v1/models", "/props", "/lora-adapters"}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999",
        "http://127.0.0.1:0",
        "http://127.0.0.1:port",
        "http://:8080",
        "http://",
        "http://user:secret@",
        "http://ho st:8080",
        "http://host\x00:8080",
        "http://h<o>st:8080",
        "http://127.0.0.1:8080/?model=x",
        "http://127.0.0.1:8080/#x",
        "http://127.0.0.1:8080/a b",
        "ftp://127.0.0.1:8080",
        "127.0.0.1:8080",
    ],
)
def test_a_url_that_cannot_be_a_request_target_is_one_sentence_at_once(url: str) -> None:
    with pytest.raises(
        ReqcheckError, match=r"^Endpoint .* (is not|cannot be) .*; pass .*http://127\.0\.0\.1:8080"
    ) as caught:
        Endpoint(url)
    assert "\n" not in str(caught.value) and "secret" not in str(caught.value)


# defect 6: credentials in the URL are hidden whatever they hold, and sent as basic auth


@pytest.mark.parametrize(
    "secret", ["p/ss", "p#ss", "p?ss", "p@ss", "aGVsbG8/d29y+bGQ=", "a/b#c?d@e", "%2Fenc%40oded"]
)
def test_credentials_are_hidden_whatever_they_hold(secret: str) -> None:
    text = f"failed at http://bot:{secret}@gpu-box:8080/v1 and at https://other.example/x (twice)"
    assert hide_url_credentials(text) == (
        "failed at http://***@gpu-box:8080/v1 and at https://other.example/x (twice)"
    )
    assert str(ReqcheckError(f"The server at http://bot:{secret}@h:1 failed; check it.")) == (
        "The server at http://***@h:1 failed; check it."
    )
    assert Endpoint(f"http://bot:{secret}@127.0.0.1:8080").shown == "http://***@127.0.0.1:8080"


@pytest.mark.parametrize(
    ("user_info", "sent"),
    [("bot:a%2Fb/c#d?e@f", "bot:a/b/c#d?e@f"), ("bot:p%C3%A4ss%E2%9C%93", "bot:päss✓"), ("tok", "tok:")],
    ids=["special-characters", "non-ascii", "token-only"],
)
def test_credentials_in_the_url_are_sent_as_basic_auth_and_not_in_the_request(
    user_info: str, sent: str
) -> None:
    with fake_server(send(200, b'{"ok": true}')) as (url, seen):
        endpoint = Endpoint(url.replace("://", f"://{user_info}@"), api_key="not sent")
        assert endpoint.get("/v1/models") == {"ok": True}
    [(method, path, headers)] = seen
    assert (method, path) == ("GET", "/v1/models")
    assert headers["authorization"] == "Basic " + base64.b64encode(sent.encode()).decode()
    assert "bot" not in headers["host"]


def test_without_credentials_in_the_url_the_api_key_is_a_bearer_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQCHECK_API_KEY", "from-the-environment")
    with fake_server(send(200, b"{}")) as (url, seen):
        Endpoint(url).get("/v1/models")
        Endpoint(url, api_key="passed").get("/v1/models")
    assert [headers["authorization"] for _, _, headers in seen] == [
        "Bearer from-the-environment",
        "Bearer passed",
    ]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_for_credentials_names_where_they_go(status: int) -> None:
    with fake_server(send(status, b'{"error": {"message": "Invalid API Key"}}')) as (url, _):
        message = _raises_soon(
            lambda: Endpoint(url, retries=2).get("/v1/models"),
            f"HTTP {status} \\(Invalid API Key\\); .*REQCHECK_API_KEY.*user:pass@",
        )
    assert "fix the request or the server's options" not in message

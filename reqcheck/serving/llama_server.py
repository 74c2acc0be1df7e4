"""Run a real llama.cpp server process for a base model and exported adapters: the tests', the benchmarks'
and `reqcheck serve --llama-server`'s server.

The process is the prebuilt engine (`python -m reqcheck.serving.engine`, from the `serve` extra) or a
stock `llama-server` binary; both take the same flags. The server gets a free port, its log goes to a
file beside the caller's outputs, readiness is its own `/health`, and it is stopped by its process id
(the whole process group) however the caller exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from reqcheck.errors import ReqcheckError
from reqcheck.serving.engine import ServerSettings

# Adapters load unapplied, and `zero_global_scales` sets their global scale to 0 before any traffic, so each
# request names its own and a request naming none gets the base model: `--lora-init-without-apply` alone
# leaves them at scale 1 for such requests (llama.cpp #28674; `--lora-scaled` would do it at load, but its
# syntax changed between llama.cpp versions). The RAM prompt cache stays off: llama-server restores a
# cached prompt's KV by its tokens alone, whichever adapter computed it, so a plain LoRA's check could
# start from the judge's KV (measured: scores off by 0.83) and the judge from a LoRA's. Each slot's own
# cache still serves repeated contexts.
ADAPTER_FLAGS = ("--lora-init-without-apply", "--cache-ram", "0")


def zero_global_scales(url: str) -> None:
    """Set every adapter's global scale to 0 where it is not, and check that the server kept it."""
    listed = _get_json(f"{url}/lora-adapters")
    if any(float(a.get("scale", 0)) for a in listed):
        body = json.dumps([{"id": a["id"], "scale": 0.0} for a in listed]).encode()
        request = urllib.request.Request(
            f"{url}/lora-adapters", body, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30):
            pass
        listed = _get_json(f"{url}/lora-adapters")
    if any(float(a.get("scale", 0)) for a in listed):
        raise ReqcheckError(
            f"The server at {url} kept a global adapter scale above 0 after reqcheck set it to 0, so requests "
            "naming no adapter would get an adapter; use another llama.cpp version."
        )


def _get_json(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return list(json.loads(answer.read()))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LlamaServer:
    """`with LlamaServer(base, [adapter, ...], log) as server:` serves at `server.url` until the block ends.

    `binary` None runs the prebuilt engine; a path runs that stock llama-server, started with
    `ADAPTER_FLAGS` and then `zero_global_scales`, as `reqcheck export`'s start file says. `slots` None
    keeps the engine's default (the prebuilt engine: 1; llama-server: 4); `context` is the whole context,
    shared by the slots.
    """

    base: Path
    adapters: Sequence[Path] = ()
    log: Path | None = None
    context: int = 4096
    threads: int | None = None
    extra: Sequence[str] = ()
    startup_timeout: float = 180.0
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    binary: Path | None = None
    slots: int | None = None
    host: str = "127.0.0.1"

    @classmethod
    def for_settings(cls, settings: ServerSettings, binary: Path | None, log: Path | None) -> LlamaServer:
        """The process that serves `settings` (port 0: a free one)."""
        return cls(
            settings.base,
            list(settings.adapters),
            log,
            settings.context * settings.slots,
            settings.threads,
            port=settings.port or free_port(),
            binary=binary,
            slots=settings.slots,
            host=settings.host,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        program = [str(self.binary)] if self.binary else [sys.executable, "-m", "reqcheck.serving.engine"]
        line = [*program, "-m", str(self.base), "--host", self.host, "--port", str(self.port)]
        line += ["-c", str(self.context)]
        for adapter in self.adapters:
            line += ["--lora", str(adapter)]
        if self.binary:
            line += [*ADAPTER_FLAGS, "--no-webui"]
        if self.threads:
            line += ["-t", str(self.threads)]
        if self.slots:
            line += ["-np", str(self.slots)]
        return [*line, *self.extra]

    def __enter__(self) -> LlamaServer:
        log = (self.log or Path(os.devnull)).open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            self._wait_healthy()
            zero_global_scales(self.url)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def _name(self) -> str:
        return str(self.binary) if self.binary else "The prebuilt llama.cpp server"

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ReqcheckError(
                    f"{self._name} exited with code {self.process.returncode} before it was ready; read its log "
                    f"{self.log or '(pass log=...)'} for the cause."
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if json.loads(answer.read()).get("status") == "ok":
                        return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.25)
        raise ReqcheckError(
            f"{self._name} did not report healthy within {self.startup_timeout:.0f} s; read its log "
            f"{self.log or '(pass log=...)'} for the cause."
        )

    def stop(self) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

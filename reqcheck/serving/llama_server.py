"""Run a real llama-server for a base model and exported adapters: the tests' and benchmarks' server.

The server gets a free port, its log goes to a file beside the caller's outputs, readiness is its own
`/health`, and it is stopped by its process id (the whole process group) however the caller exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from reqcheck.errors import ReqcheckError
from reqcheck.serving.llamacpp import server_binary

# Adapters load unapplied, so each request names its own and a request naming none gets the base model.
# The RAM prompt cache stays off: llama-server restores a cached prompt's KV by its tokens alone, whichever
# adapter computed it, so a plain LoRA's check could start from the judge's KV (measured: scores off by
# 0.83) and the judge from a LoRA's. Each slot's own cache still serves repeated contexts.
ADAPTER_FLAGS = ("--lora-init-without-apply", "--cache-ram", "0")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LlamaServer:
    """`with LlamaServer(base, [adapter, ...], log) as server:` serves at `server.url` until the block ends.

    It starts with `ADAPTER_FLAGS`, as `reqcheck export`'s start line does.
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        line = [str(server_binary()), "-m", str(self.base), "--host", "127.0.0.1", "--port", str(self.port)]
        line += ["-c", str(self.context), *ADAPTER_FLAGS, "--no-webui"]
        for adapter in self.adapters:
            line += ["--lora", str(adapter)]
        if self.threads:
            line += ["-t", str(self.threads)]
        return [*line, *self.extra]

    def __enter__(self) -> LlamaServer:
        log = (self.log or Path(os.devnull)).open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ReqcheckError(
                    f"llama-server exited with code {self.process.returncode} before it was ready; read its log "
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
            f"llama-server did not report healthy within {self.startup_timeout:.0f} s; read its log "
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

"""`reqcheck serve`: reqcheck adapters on one base model, served by llama.cpp, in one command.

It exports what is missing into the reqcheck cache (each adapter under its content hash, the base model
under its weights' hash and float type), so a second start converts nothing. Then it runs llama.cpp's
server: the prebuilt engine in this process (`engine`), or a stock `llama-server` binary when one is
named. Before the endpoint is announced, every adapter's global scale is read back as 0, whatever the
engine's "load without apply" does: a request that names no adapter gets the base model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import Manifest, content_hash
from reqcheck.models.loading import cache_dir, resolve_base_model
from reqcheck.serving import engine
from reqcheck.serving.export import ADAPTER_FILE, BASE_TYPES, export, export_base
from reqcheck.serving.llama_server import LlamaServer, zero_global_scales


@dataclass(frozen=True)
class ServedAdapter:
    """One adapter as served: its folder, the name pytest and `RemoteBackend` know it by, its GGUF."""

    folder: Path
    name: str
    gguf: Path


@dataclass(frozen=True)
class Plan:
    """What a server is started with: the base model's GGUF and each adapter's."""

    base: Path
    base_name: str
    adapters: list[ServedAdapter]

    def settings(self, **knobs: object) -> engine.ServerSettings:
        """The server settings for this plan; `knobs` are ServerSettings' host, port, threads, context, slots."""
        return engine.ServerSettings(self.base, [a.gguf for a in self.adapters], **knobs)  # type: ignore[arg-type]


def prepare(folders: Sequence[Path], base_type: str = "f32", say: Callable[[str], None] = print) -> Plan:
    """Check the adapters, then convert what the cache lacks; nothing is converted twice."""
    if base_type not in BASE_TYPES:
        raise ReqcheckError(
            f"--base-type {base_type} is not one of {', '.join(BASE_TYPES)}; pass one of them."
        )
    if not folders:
        raise ReqcheckError(
            "reqcheck serve needs at least one adapter folder; pass one written by reqcheck train."
        )
    manifests = [Manifest.read(Path(folder).expanduser()) for folder in folders]
    first = manifests[0].base_model
    for folder, manifest in zip(folders, manifests, strict=True):
        if (manifest.base_model.name, manifest.base_model.revision) != (first.name, first.revision):
            raise ReqcheckError(
                f"{folder} was trained on {manifest.base_model.name}, not on {first.name} like {folders[0]}; "
                "one server serves one base model, so serve them with one reqcheck serve each."
            )
    names = [Path(folder).expanduser().resolve().name for folder in folders]
    if len(set(names)) < len(names):
        raise ReqcheckError(
            "Two adapter folders share a name, and a served adapter is known by its folder's name; rename one."
        )
    home = cache_dir() / "served"
    base = resolve_base_model(first.spec)
    key = hashlib.sha256(f"{base.revision or base.path}|{base_type}".encode()).hexdigest()[:16]
    base_gguf = home / f"base-{key}-{base_type}.gguf"
    if not base_gguf.exists():
        say(f"converting {base.name} to {base_type} GGUF (once)")
        export_base(base, base_gguf, base_type)
    adapters = []
    for folder, name in zip(folders, names, strict=True):
        folder = Path(folder).expanduser()
        out = home / f"adapter-{content_hash(folder).split(':')[-1][:16]}"
        if not (out / ADAPTER_FILE).exists():
            say(f"converting {name} to GGUF (once)")
            export(folder, out)
        adapters.append(ServedAdapter(folder, name, out / ADAPTER_FILE))
    return Plan(base_gguf, base.name, adapters)


@contextmanager
def started(
    settings: engine.ServerSettings, binary: Path | None = None, log: Path | None = None
) -> Iterator[str]:
    """A server with every adapter's global scale read back as 0; yields its URL.

    `binary` runs a stock llama-server instead of the prebuilt engine; its output goes to `log`.
    """
    if binary is None:
        with engine.running(settings) as url:
            zero_global_scales(url)
            yield url
        return
    engine.check_port_free(settings.host, settings.port)
    with LlamaServer.for_settings(settings, binary, log) as server:
        yield server.url


def replica_settings(settings: engine.ServerSettings, replicas: int) -> list[engine.ServerSettings]:
    """Each replica's settings: one slot, the threads split between them (every core when none are given),
    and consecutive ports from `settings.port` (0: free ones)."""
    if replicas < 1:
        raise ReqcheckError(f"--replicas must be at least 1, not {replicas}; pass e.g. 2.")
    if settings.port and settings.port + replicas - 1 > 65535:
        raise ReqcheckError(
            f"{replicas} replicas from port {settings.port} would need ports above 65535; pass a lower --port."
        )
    if replicas == 1:
        return [settings]
    threads = max(1, (settings.threads or os.cpu_count() or 1) // replicas)
    return [
        dataclasses.replace(
            settings, slots=1, threads=threads, port=settings.port + i if settings.port else 0
        )
        for i in range(replicas)
    ]


@contextmanager
def started_replicas(
    every: Sequence[engine.ServerSettings], binary: Path | None = None, log: Path | None = None
) -> Iterator[list[str]]:
    """Every replica served, each as `started` serves one; yields their URLs. More than one run each in their
    own process (the prebuilt engine's `python -m reqcheck.serving.engine` or the stock binary)."""
    if len(every) == 1:
        with started(every[0], binary, log) as url:
            yield [url]
        return
    for settings in every:
        engine.check_port_free(settings.host, settings.port)
    with ExitStack() as stack:
        yield [stack.enter_context(LlamaServer.for_settings(s, binary, log)).url for s in every]


def pytest_line(plan: Plan, urls: Sequence[str]) -> str:
    """The command that gates these adapters through these servers."""
    adapters = " ".join(f"--adapter={a.folder}" for a in plan.adapters)
    endpoints = " ".join(f"--reqcheck-endpoint={url}" for url in urls)
    return f"pytest {adapters} {endpoints}"


def serve(
    plan: Plan,
    settings: engine.ServerSettings,
    binary: Path | None = None,
    log: Path | None = None,
    say: Callable[[str], None] = print,
    replicas: int = 1,
) -> None:
    """Serve until Ctrl-C or SIGTERM, after saying where and what, then stop the servers."""
    every = replica_settings(settings, replicas)
    stop = threading.Event()
    previous = {n: signal.signal(n, lambda *_: stop.set()) for n in (signal.SIGINT, signal.SIGTERM)}
    try:
        with started_replicas(every, binary, log) as urls:
            engine_name = f"llama-server {binary}" if binary else f"{engine.PACKAGE} {engine.version()}"
            if len(urls) == 1:
                say(f"serving {plan.base_name} at {urls[0]} ({engine_name}, {settings.slots} slot(s))")
            else:
                threads = every[0].threads
                say(
                    f"serving {plan.base_name} at {len(urls)} one-slot replicas ({engine_name}, {threads} "
                    f"thread(s) each): {', '.join(urls)}"
                )
            for adapter in plan.adapters:
                say(f"  adapter {adapter.name}: {adapter.folder} (only for requests that name it)")
            say(f"gate it with: {pytest_line(plan, urls)}")
            say("stop with Ctrl-C")
            stop.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    say("stopped")

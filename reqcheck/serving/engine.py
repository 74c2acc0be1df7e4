"""llama.cpp's server run in this process from the prebuilt `xllamacpp` wheel: no C++ build anywhere.

`xllamacpp.Server(CommonParams)` is llama.cpp's own `llama-server` (the same HTTP routes: `/health`,
`/props`, `/lora-adapters`, `/tokenize`, `/v1/chat/completions`) compiled into a Python extension and
published as CPU wheels on PyPI (CUDA, ROCm and Vulkan wheels on its project's index). It listens once the
model has loaded and stops when the object is dropped. It installs llama.cpp's own SIGINT/SIGTERM
handlers; `running` puts Python's back, so Ctrl-C and SIGTERM reach the caller.

On a machine with only CPU devices, flash attention is off (`_attention`). Every adapter loads at global
scale 0 (`CommonAdapterLoraInfo(path, 0.0)`), so a request that names no
adapter gets the base model: llama.cpp's "load without apply" still leaves each adapter at scale 1 for
such requests (llama.cpp #28674). One slot by default: parallel slots misapply an aLoRA (its on/off state
is kept per batch in `server-context.cpp`), and a one-slot server queues concurrent requests itself.

`python -m reqcheck.serving.engine -m BASE.gguf --lora A.gguf --port N` takes llama-server's flags for
these settings, so the tests and benchmarks start either engine with one command line.
"""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from reqcheck.errors import ReqcheckError

PACKAGE = "xllamacpp"
EXTRA = "serve"
INSTALL = f'pip install "reqcheck[{EXTRA}]"'


@dataclass(frozen=True)
class ServerSettings:
    """What a llama.cpp server is started with, whichever engine runs it.

    `port` 0 picks a free port. `threads` None lets llama.cpp use every core. `slots` is llama.cpp's
    `--parallel`; `context` is each slot's context window in tokens.
    """

    base: Path
    adapters: Sequence[Path] = ()
    host: str = "127.0.0.1"
    port: int = 0
    threads: int | None = None
    context: int = 4096
    slots: int = 1
    flash_attn: str | None = None  # llama-server's -fa on, off or auto; None: off on CPU-only engines


def load() -> ModuleType:
    """The prebuilt engine, or one sentence naming the extra that installs it."""
    try:
        import xllamacpp
    except ImportError:
        raise ReqcheckError(
            f"Serving needs llama.cpp's prebuilt server from the {PACKAGE} package, which is not installed; "
            f"install it with {INSTALL}."
        ) from None
    return xllamacpp


def version() -> str | None:
    """The installed engine's version, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(PACKAGE)
    except PackageNotFoundError:
        return None


def check_port_free(host: str, port: int) -> None:
    """One sentence when another program already listens on the port (the engine only says it failed)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        # as llama.cpp's server does: a port whose last connections are closing (TIME_WAIT) is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ReqcheckError(
                f"Port {port} on {host} is taken ({exc.strerror or exc}); pass another --port, or stop the "
                "program that listens there."
            ) from None


@contextmanager
def running(settings: ServerSettings) -> Iterator[str]:
    """Serve until the block ends; yields the server's URL. The model is loaded when the URL is yielded."""
    engine = load()
    check_port_free(settings.host, settings.port)
    params = engine.CommonParams()
    params.model.path = str(settings.base)
    params.lora_adapters = [engine.CommonAdapterLoraInfo(str(a), 0.0) for a in settings.adapters]
    params.lora_init_without_apply = True
    params.cache_ram_mib = 0  # the RAM prompt cache is keyed by tokens alone, whichever adapter made the KV
    params.hostnames = [settings.host]
    params.port = settings.port
    params.n_parallel = settings.slots
    params.n_ctx = settings.context * settings.slots
    params.verbosity = 0
    params.flash_attn_type = _attention(engine, settings.flash_attn)
    if settings.threads:
        params.cpuparams.n_threads = settings.threads
        params.cpuparams_batch.n_threads = settings.threads
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = engine.Server(params)
    except RuntimeError:
        raise ReqcheckError(
            f"llama.cpp's server could not start with {settings.base.name} and {len(settings.adapters)} "
            "adapter file(s); check that the files are GGUF files of one base model, or rerun with a stock "
            "llama-server (--llama-server PATH) to read its log."
        ) from None
    finally:
        _restore(handlers)
    try:
        yield server.listening_address
    finally:
        del server  # llama.cpp's destructor ends its loop and joins its threads


def _attention(engine: ModuleType, chosen: str | None) -> object:
    """`chosen` (on, off, auto), else flash attention off where the engine has only CPU devices and llama.cpp's
    choice elsewhere: on CPU its flash attention made a check on ~1,100 context tokens 1.5x slower than its
    plain path (docs/benchmarks.md, "Served checks"), and llama.cpp's `auto` picks it there."""
    kinds = engine.llama_flash_attn_type
    if chosen is not None:
        return {
            "on": kinds.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            "off": kinds.LLAMA_FLASH_ATTN_TYPE_DISABLED,
            "auto": kinds.LLAMA_FLASH_ATTN_TYPE_AUTO,
        }[chosen]
    cpu = engine.ggml_backend_dev_type.GGML_BACKEND_DEVICE_TYPE_CPU
    if all(device.get("type") == cpu for device in engine.get_device_info()):
        return kinds.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return kinds.LLAMA_FLASH_ATTN_TYPE_AUTO


def _restore(handlers: dict[int, object]) -> None:
    """Put Python's signal handlers back over the ones llama.cpp installed (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for number, handler in handlers.items():
        signal.signal(number, handler if handler is not None else signal.SIG_DFL)  # type: ignore[arg-type]


def _arguments(argv: Sequence[str] | None) -> ServerSettings:
    parser = argparse.ArgumentParser(prog="python -m reqcheck.serving.engine", description=__doc__)
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("--lora", type=Path, action="append", default=[])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("-t", "--threads", type=int, default=None)
    parser.add_argument("-c", "--ctx-size", type=int, default=4096)
    parser.add_argument("-np", "--parallel", type=int, default=1)
    parser.add_argument("-fa", "--flash-attn", choices=["on", "off", "auto"], default=None)
    args = parser.parse_args(argv)
    return ServerSettings(
        args.model,
        args.lora,
        args.host,
        args.port,
        args.threads,
        args.ctx_size // args.parallel,
        args.parallel,
        args.flash_attn,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, as llama-server does."""
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    with running(_arguments(argv)):
        stop.wait()


if __name__ == "__main__":
    main()

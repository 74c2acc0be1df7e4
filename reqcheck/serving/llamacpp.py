"""llama.cpp's own tools, taken from the llama-cpp-python sdist that vendors them: the GGUF converters
and `llama-server`.

reqcheck writes no GGUF code of its own: `convert_lora_to_gguf.py`, `convert_hf_to_gguf.py` and gguf-py's
`gguf_new_metadata.py` run as llama.cpp ships them. The source tree comes from `REQCHECK_LLAMA_CPP` (a
llama.cpp checkout), else from the sdist, downloaded once with pip into the reqcheck cache, keyed by
version. A stock server is `REQCHECK_LLAMA_SERVER`, else `llama-server` on the PATH, else (only where a
user or a benchmark asks for it: `server_binary`) a CPU build from that source, made once with cmake and
cached beside it. Serving itself needs none of these: `serving.engine` runs llama.cpp's prebuilt server.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reqcheck.atomic import atomic_directory
from reqcheck.errors import ReqcheckError
from reqcheck.models.loading import cache_dir

PACKAGE = "llama-cpp-python"
LLAMA_CPP_PYTHON = "0.3.36"
SERVER_TARGET = "llama-server"
_DONE = ".reqcheck-complete"


def _home() -> Path:
    return cache_dir() / f"llama-cpp-{LLAMA_CPP_PYTHON}"


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """One process at a time fetches or builds (pytest-xdist workers share the cache)."""
    _home().mkdir(parents=True, exist_ok=True)
    with (_home() / f".{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def source_dir() -> Path:
    """llama.cpp's source tree, with its converters and server sources."""
    own = os.environ.get("REQCHECK_LLAMA_CPP")
    if own:
        tree = Path(own).expanduser()
        if not (tree / "convert_lora_to_gguf.py").is_file():
            raise ReqcheckError(
                f"REQCHECK_LLAMA_CPP={own} holds no convert_lora_to_gguf.py; point it at a llama.cpp checkout."
            )
        return tree
    unpacked = _home() / "source"
    with _locked("source"):
        if not (unpacked / _DONE).exists():
            _fetch_sdist(unpacked)
    return unpacked / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"


def _fetch_sdist(target: Path) -> None:
    with tempfile.TemporaryDirectory() as download, atomic_directory(target, replace_existing=True) as tmp:
        # only this package as source: its build tools come as wheels (":all:" rebuilt each from source)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", PACKAGE]
        command += [f"{PACKAGE}=={LLAMA_CPP_PYTHON}", "--dest", download]
        done = subprocess.run(command, capture_output=True, text=True)
        sdists = list(Path(download).glob("*.tar.gz"))
        if done.returncode or not sdists:
            raise ReqcheckError(
                f"pip could not download the llama-cpp-python=={LLAMA_CPP_PYTHON} sdist that holds llama.cpp's "
                f"converters ({_last_line(done.stderr)}); check the package index, or set REQCHECK_LLAMA_CPP "
                "to a llama.cpp checkout."
            )
        with tarfile.open(sdists[0]) as archive:
            archive.extractall(tmp, filter="data")
        (tmp / _DONE).write_text(LLAMA_CPP_PYTHON)


def run_script(script: Path, arguments: list[str]) -> None:
    """Run one of llama.cpp's Python tools with its own gguf-py first on the path."""
    env = dict(os.environ)
    vendored = [str(source_dir() / "gguf-py"), str(source_dir())]
    env["PYTHONPATH"] = os.pathsep.join([*vendored, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True, env=env)
    if done.returncode:
        raise ReqcheckError(
            f"llama.cpp's {script.name} failed ({_last_line(done.stderr or done.stdout)}); fix what it names, "
            "or set REQCHECK_LLAMA_CPP to a newer llama.cpp checkout if it does not support this model."
        )


def stock_server() -> Path | None:
    """A stock llama-server the user has: REQCHECK_LLAMA_SERVER, else the PATH; None when neither has one."""
    own = os.environ.get("REQCHECK_LLAMA_SERVER")
    if own:
        path = Path(own).expanduser()
        if not os.access(path, os.X_OK):
            raise ReqcheckError(
                f"REQCHECK_LLAMA_SERVER={own} is not an executable; point it at llama-server."
            )
        return path
    found = shutil.which(SERVER_TARGET)
    return Path(found) if found else None


def server_binary() -> Path:
    """A stock llama-server to run: the user's (`stock_server`), else a cached CPU build (minutes, once)."""
    return stock_server() or build_server()


def build_server() -> Path:
    """Build llama-server for this CPU's instruction set family (AVX2, no -march=native) once, cached."""
    build = _home() / "build"
    binary = build / "bin" / SERVER_TARGET
    with _locked("build"):
        if (build / _DONE).exists() and binary.exists():
            return binary
        for tool in ("cmake", "c++"):
            if not shutil.which(tool):
                raise ReqcheckError(
                    f"Building llama-server needs {tool}, which is not installed; install it, or set "
                    "REQCHECK_LLAMA_SERVER to a llama-server binary."
                )
        configure = ["cmake", "-S", str(source_dir()), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
        configure += ["-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=OFF"]
        configure += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        jobs = str(os.cpu_count() or 2)
        for step in (configure, ["cmake", "--build", str(build), "--target", SERVER_TARGET, "-j", jobs]):
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode:
                raise ReqcheckError(
                    f"Building llama-server failed at `{' '.join(step[:2])}` ({_last_line(done.stderr)}); "
                    "set REQCHECK_LLAMA_SERVER to a llama-server binary instead."
                )
        (build / _DONE).write_text(LLAMA_CPP_PYTHON)
    return binary


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"

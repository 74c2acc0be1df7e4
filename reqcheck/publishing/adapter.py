"""The adapter directory as publishing reads it: its type, base model and manifest, read once and checked
before anything is packaged, and the io.yaml written from its manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reqcheck.choices import AdapterType
from reqcheck.errors import ReqcheckError
from reqcheck.formats.io_yaml import IoYaml
from reqcheck.formats.manifest import (
    ADAPTER_FILES,
    MANIFEST_NAME,
    PEFT_FILES,
    Manifest,
    adapter_config,
    check_files_inside,
    check_weights,
    named_base_model,
    portable_name,
    short_model_name,
)


@dataclass
class AdapterFacts:
    """What packaging needs to know about an adapter directory, read once."""

    path: Path
    adapter_type: AdapterType
    base_model: str
    manifest: Manifest | None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def base_short(self) -> str:
        """The base-model folder name Mellea and granite-common look up: the last part of the model id."""
        return short_model_name(self.base_model)

    @property
    def portable_base(self) -> str:
        return portable_name(self.base_model)

    def packaged_files(self) -> dict[str, bytes]:
        """The files that travel in another form than the adapter holds them, with their packaged bytes.

        adapter_config.json names the portable base model when it names another (a local path);
        reqcheck.json is the manifest's public form, which holds no path of the training machine.
        """
        rewritten = {}
        if self.config.get("base_model_name_or_path") != self.portable_base:
            config = {**self.config, "base_model_name_or_path": self.portable_base}
            rewritten["adapter_config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        if self.manifest is not None:
            public = self.manifest.public().to_json().encode()
            if public != (self.path / MANIFEST_NAME).read_bytes():
                rewritten[MANIFEST_NAME] = public
        return rewritten

    @property
    def files(self) -> list[str]:
        """The adapter files that travel: PEFT's two files and reqcheck.json when present."""
        return [name for name in ADAPTER_FILES if (self.path / name).is_file()]


def read_adapter(weight_path: Path) -> AdapterFacts:
    """Check `weight_path` holds a PEFT adapter and read its type and base model (reqcheck.json wins)."""
    if not weight_path.is_dir():
        raise ReqcheckError(
            f"{weight_path} is not a directory; pass the adapter directory reqcheck train wrote."
        )
    missing = [name for name in PEFT_FILES if not (weight_path / name).is_file()]
    if missing:
        raise ReqcheckError(
            f"{weight_path} has no {' or '.join(missing)}; pass a directory written by reqcheck train "
            "(or PEFT's save_pretrained with safetensors)."
        )
    check_files_inside(weight_path)
    config = adapter_config(weight_path)
    check_weights(weight_path)
    manifest = Manifest.read(weight_path) if (weight_path / MANIFEST_NAME).is_file() else None
    base = named_base_model(weight_path)
    if not base:
        raise ReqcheckError(
            f"{weight_path} names no base model (reqcheck.json base_model.name or adapter_config.json "
            "base_model_name_or_path); retrain the adapter with reqcheck train."
        )
    kind = AdapterType.alora if config.get("alora_invocation_tokens") else AdapterType.lora
    return AdapterFacts(weight_path, kind, str(base), manifest, config)


def generate_io_yaml(facts: AdapterFacts) -> str:
    """The io.yaml granite-common needs to read the adapter's output, written from its manifest."""
    if facts.manifest is None:
        raise ReqcheckError(
            f"{facts.path} has no {MANIFEST_NAME} to read its labels from; pass --io-yaml with a "
            "likelihood transformation listing them."
        )
    return IoYaml.for_manifest(facts.manifest).to_text()

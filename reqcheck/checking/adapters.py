"""Find an adapter on disk or on the Hub and describe how to use it (names follow Mellea's API).

Accepted forms of `model_id`: a directory written by `reqcheck train`; a directory in the intrinsic
layout `<intrinsic>/<base_model>/<alora|lora>/`; a Hub repo id in either layout; and an adapter trained
by Mellea's `m alora train` (no reqcheck.json: Mellea's prompt format, labels from io.yaml or `labels=`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reqcheck.choices import AdapterType
from reqcheck.errors import ReqcheckError
from reqcheck.formats.io_yaml import io_yaml_labels
from reqcheck.formats.manifest import (
    MANIFEST_NAME,
    BaseModelRef,
    Manifest,
    adapter_config,
    check_weights,
    default_positive_labels,
    is_hub_id,
    named_base_model,
    short_model_name,
)
from reqcheck.formats.prompting import (
    DEFAULT_INVOCATION,
    MELLEA_RENDERER,
    PromptSpec,
    invocation_ids,
    tokenize,
)


@dataclass
class CustomIntrinsicAdapter:
    """An adapter to register with `LocalHFBackend.add_adapter`.

    `intrinsic_name` defaults to the last part of `model_id`; `base_model_name` (the short name, as in
    the intrinsic layout) defaults to the backend's model. `labels`, `positive_labels` and
    `invocation_prompt` are needed only for adapters trained outside reqcheck without an io.yaml.
    Hub repos are downloaded with huggingface_hub (`revision`, `cache_dir`; offline, its cache is used).
    """

    model_id: str
    base_model_name: str | None = None
    intrinsic_name: str | None = None
    labels: list[str] | None = None
    positive_labels: list[str] | None = None
    invocation_prompt: str | None = None
    revision: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model_id, os.PathLike):
            self.model_id = os.fspath(self.model_id)
        if not isinstance(self.model_id, str) or not self.model_id.strip():
            raise ReqcheckError(
                "CustomIntrinsicAdapter needs model_id: an adapter directory or a Hub repo id (org/name)."
            )
        if not Path(self.model_id).expanduser().exists() and not is_hub_id(self.model_id):
            raise ReqcheckError(
                f"Adapter {self.model_id} is neither an existing directory nor a Hub repo id (org/name); "
                "pass the directory reqcheck train wrote, or a repo id."
            )

    @property
    def name(self) -> str:
        return self.intrinsic_name or Path(self.model_id.rstrip("/")).name


@dataclass
class ResolvedAdapter:
    """An adapter's files and the manifest that says how to render prompts and read labels."""

    name: str
    path: Path
    manifest: Manifest
    source: str

    @property
    def is_alora(self) -> bool:
        return self.manifest.adapter_type == AdapterType.alora


def _download(repo_id: str, revision: str | None, cache_dir: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        endpoint = os.environ.get("HF_ENDPOINT")  # read now: huggingface_hub reads it once, at import
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint))
    except Exception as exc:
        raise ReqcheckError(
            f"Adapter {repo_id} is not in the local Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}: {exc}); check the repo id, your network and HF_TOKEN."
        ) from exc


def _find_adapter_dir(root: Path, intrinsic: str | None, base_short: str) -> Path:
    """The directory holding adapter_config.json: `root` itself, or inside the intrinsic layout."""
    if (root / "adapter_config.json").exists():
        return root
    bases = [root] + ([root / intrinsic] if intrinsic else []) + [p for p in root.iterdir() if p.is_dir()]
    for parent in bases:
        for base_dir in (p for p in parent.iterdir() if p.is_dir() and p.name.lower() == base_short.lower()):
            for kind in (t.value for t in AdapterType):
                if (base_dir / kind / "adapter_config.json").exists():
                    return base_dir / kind
    found = sorted(str(p.parent.relative_to(root)) for p in root.rglob("adapter_config.json"))
    if not found:
        raise ReqcheckError(
            f"{root} holds no adapter (no adapter_config.json in it); pass the directory reqcheck train "
            "wrote, or a folder in the intrinsic layout."
        )
    raise ReqcheckError(
        f"{root} has no adapter for base model {base_short} (it holds {', '.join(found)}); use the base "
        "model those were trained on, or an adapter trained on this one."
    )


def _mellea_manifest(adapter: CustomIntrinsicAdapter, path: Path, tokenizer: Any) -> Manifest:
    """A manifest for an adapter trained by Mellea: its prompt format, labels from io.yaml or arguments.

    Its labels are scored by their own tokens, without the end-of-text token that reqcheck's adapters
    learn after a label: Mellea trains with TRL's SFTTrainer on `prompt + label` without special
    tokens, so its adapters never learnt where a label ends, and scoring that token would mix the base
    model's guess into the score. This difference from reqcheck's own adapters is deliberate.
    """
    config = adapter_config(path)
    ids = config.get("alora_invocation_tokens")
    invocation = adapter.invocation_prompt or (tokenizer.decode(ids) if ids else DEFAULT_INVOCATION)
    from_yaml = io_yaml_labels(path)
    labels = adapter.labels or (from_yaml[0] if from_yaml else None)
    if not labels:
        raise ReqcheckError(
            f"{adapter.model_id} has no reqcheck.json and no io.yaml with label categories; pass "
            "labels=[...] to CustomIntrinsicAdapter."
        )
    base = named_base_model(path) or ""
    positives = (
        adapter.positive_labels or (from_yaml[1] if from_yaml else None) or default_positive_labels(labels)
    )
    return Manifest(
        base_model=BaseModelRef(spec=base, name=base),
        adapter_type=(AdapterType.alora if ids else AdapterType.lora).value,
        prompt=PromptSpec(invocation=invocation, renderer=MELLEA_RENDERER),
        invocation_ids=list(ids) if ids else invocation_ids(tokenizer, invocation),
        labels=dict.fromkeys(labels, 0),
        label_token_ids={label: tokenize(tokenizer, label) for label in labels},
        positive_labels=positives,
    )


def _check_files(path: Path, model_id: str) -> None:
    if (path / "adapter_model.safetensors").exists():
        check_weights(path)
        return
    if (path / "adapter_model.bin").exists():
        raise ReqcheckError(
            f"{model_id} holds pickled weights (adapter_model.bin); reqcheck loads safetensors only, so "
            "re-save the adapter with safe_serialization=True."
        )
    raise ReqcheckError(
        f"{model_id} has adapter_config.json but no adapter_model.safetensors; retrain or re-download it."
    )


def locate_adapter(adapter: CustomIntrinsicAdapter, base_short: str) -> Path:
    """The local directory holding the adapter's files (downloaded first for a Hub repo id)."""
    if adapter.base_model_name and short_model_name(adapter.base_model_name).lower() != base_short.lower():
        raise ReqcheckError(
            f"Adapter {adapter.name} is for base model {adapter.base_model_name} but the backend runs "
            f"{base_short}; load the backend with that model."
        )
    local = Path(adapter.model_id).expanduser()
    if local.is_dir():
        root = local
    elif not local.exists() and is_hub_id(adapter.model_id):
        root = _download(adapter.model_id, adapter.revision, adapter.cache_dir)
    else:
        raise ReqcheckError(
            f"Adapter {adapter.model_id} is neither a directory nor a Hub repo id (org/name); fix model_id."
        )
    path = _find_adapter_dir(root, adapter.intrinsic_name, base_short)
    _check_files(path, adapter.model_id)
    return path


def resolve_adapter(adapter: CustomIntrinsicAdapter, base_short: str, tokenizer: Any) -> ResolvedAdapter:
    """Locate the adapter's files and build the manifest the backend needs, checking it fits `tokenizer`."""
    path = locate_adapter(adapter, base_short)
    if (path / MANIFEST_NAME).exists():
        manifest, source = Manifest.read(path), "reqcheck"
        trained_on = manifest.base_model.short_name
        if trained_on.lower() != base_short.lower():
            raise ReqcheckError(
                f"Adapter {adapter.name} was trained on {trained_on} but the backend runs {base_short}; "
                f"load the backend with {trained_on} or retrain the adapter."
            )
        expected = {label: manifest.output.output_ids(tokenizer, label) for label in manifest.labels}
        if invocation_ids(tokenizer, manifest.prompt.invocation) != manifest.invocation_ids or any(
            manifest.label_token_ids[label] != ids for label, ids in expected.items()
        ):
            raise ReqcheckError(
                f"Adapter {adapter.name} was trained with a different tokenizer than {base_short}'s; load "
                "the backend with the adapter's base model."
            )
    else:
        manifest, source = _mellea_manifest(adapter, path, tokenizer), "mellea"
        trained_on = manifest.base_model.short_name
        if trained_on and trained_on.lower() != base_short.lower():
            raise ReqcheckError(
                f"Adapter {adapter.name} was trained on {trained_on} but the backend runs {base_short}; "
                "load the backend with that model."
            )
    if adapter.positive_labels:
        manifest.positive_labels = list(adapter.positive_labels)
    return ResolvedAdapter(adapter.name, path, manifest, source)

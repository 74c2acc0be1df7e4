"""The adapter directory: its `reqcheck.json` (contract), PEFT's config and weights as reqcheck reads them,
and the content hash that gate reports refer to."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reqcheck.errors import ReqcheckError
from reqcheck.output import OutputSpec
from reqcheck.prompting import PromptSpec

if TYPE_CHECKING:
    from reqcheck.scoring import LabelSet

MANIFEST_NAME = "reqcheck.json"
# 2 adds `output` (the output contract); a manifest without it is version 1 and uses label-v1.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_FILES = (*PEFT_FILES, MANIFEST_NAME)
POSITIVE_LABEL_WORDS = (
    "yes",
    "pass",
    "passed",
    "true",
    "ok",
    "compliant",
    "good",
    "valid",
    "acceptable",
    "polite",
    "safe",
    "ham",
    "positive",
    "met",
    "satisfied",
)


def default_positive_labels(labels: list[str]) -> list[str]:
    """Labels that read as 'the requirement holds' (yes/pass/true/...), used when none are given."""
    return [label for label in labels if label.lower() in POSITIVE_LABEL_WORDS]


@dataclass
class Manifest:
    """Everything needed to use an adapter exactly as it was trained, and to audit where it came from."""

    base_model: dict[str, Any]
    adapter_type: str
    prompt: PromptSpec
    invocation_ids: list[int]
    labels: dict[str, int]
    label_token_ids: dict[str, list[int]]
    positive_labels: list[str]
    requirement: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    split_seed: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    output: OutputSpec = field(default_factory=OutputSpec)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["prompt"] = self.prompt.to_dict()
        data["output"] = self.output.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ReqcheckError(
                f"reqcheck.json has format version {version}, this reqcheck reads "
                f"{' and '.join(map(str, READABLE_VERSIONS))}; upgrade reqcheck or retrain the adapter."
            )
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["prompt"] = PromptSpec.from_dict(data["prompt"])
        fields["output"] = OutputSpec.from_dict(data.get("output"))
        return cls(**fields)

    def label_set(self, tokenizer: Any) -> LabelSet:
        """The adapter's labels as scoring reads them (a `LabelSet`), from the ids it was trained with."""
        names = list(self.labels)
        return self.output.label_set(tokenizer, names, [self.label_token_ids[n] for n in names])

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_NAME).write_text(
            json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        )

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ReqcheckError(
                f"{directory} has no {MANIFEST_NAME}; pass a directory written by reqcheck train."
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ValueError: bad JSON or UTF-8
            raise ReqcheckError(f"{path} is damaged ({exc!r:.200}); retrain the adapter.") from exc


def library_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    from reqcheck import __version__

    return {
        "reqcheck": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


def content_hash(directory: str | Path, replaced: dict[str, bytes] | None = None) -> str:
    """sha256 over the adapter's files (weights, PEFT config, manifest): what a gate report vouches for.

    `replaced` gives other contents for some files: the hash of the adapter as it will be packaged.
    """
    directory = Path(directory)
    replaced = replaced or {}
    digest = hashlib.sha256()
    present = [name for name in ADAPTER_FILES if (directory / name).is_file()]
    if not all((directory / name).is_file() for name in PEFT_FILES):
        raise ReqcheckError(
            f"{directory} has no {' and '.join(PEFT_FILES)}; pass a trained adapter directory."
        )
    for name in present:
        digest.update(name.encode() + b"\0")
        if name in replaced:
            digest.update(replaced[name])
            continue
        with (directory / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def is_reqcheck_adapter(directory: Path) -> bool:
    """True when every file in `directory` is one reqcheck train writes, and its manifest is there."""
    names = {p.name for p in directory.iterdir()}
    return MANIFEST_NAME in names and names <= {*ADAPTER_FILES, "README.md"}


def adapter_config(directory: Path) -> dict[str, Any]:
    """PEFT's adapter_config.json of an adapter directory, or one sentence saying it is not usable."""
    path = directory / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReqcheckError(f"{path} is not valid JSON ({exc}); retrain or re-download the adapter.") from exc
    if not isinstance(config, dict):
        raise ReqcheckError(f"{path} is not a PEFT adapter config; retrain the adapter.")
    return config


def check_weights(path: Path) -> None:
    """Refuse a truncated or corrupt `adapter_model.safetensors` before PEFT reads it (reads the header only)."""
    from safetensors import SafetensorError, safe_open

    weights = path / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except SafetensorError as exc:
        raise ReqcheckError(
            f"{weights} is damaged ({exc}); it was probably cut short while copying or downloading, so "
            "copy, download or train the adapter again."
        ) from exc

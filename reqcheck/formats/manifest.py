"""The adapter directory: its `reqcheck.json` (contract), PEFT's config and weights as reqcheck reads them,
and the content hash that gate reports refer to."""

from __future__ import annotations

import hashlib
import json
import re
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from reqcheck.errors import ReqcheckError
from reqcheck.formats.output import LabelSet, OutputSpec
from reqcheck.formats.prompting import PromptSpec
from reqcheck.formats.typed import Mismatch, build

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

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(text: str) -> bool:
    """True for what reads as a Hub repo id (`org/name`)."""
    return bool(_HUB_ID.match(text))


def short_model_name(name: str) -> str:
    """`org/Model-Name` → `Model-Name`: the folder name used in the intrinsic layout."""
    return name.rstrip("/").split("/")[-1]


def portable_name(name: str) -> str:
    """A base model as another machine can name it: its Hub id, else its short name, never a path."""
    return name if is_hub_id(name) and not Path(name).exists() else short_model_name(name)


def _looks_local(spec: str) -> bool:
    """True for a --basemodel that named a path (it exists here, or reads as one)."""
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()


def default_positive_labels(labels: list[str]) -> list[str]:
    """Labels that read as 'the requirement holds' (yes/pass/true/...), used when none are given."""
    return [label for label in labels if label.lower() in POSITIVE_LABEL_WORDS]


@dataclass(frozen=True)
class BaseModelRef:
    """The base model an adapter was trained on.

    `spec` is what resolves the same model again from any directory (an alias, a Hub id, or the absolute
    path of a local directory or .gguf file); `name` is how the Hub, Mellea and the intrinsic layout name
    it; `revision` identifies its weights. `path` is where this machine keeps it: the local manifest keeps
    it, the public one (`Manifest.public`) does not.
    """

    spec: str
    name: str
    revision: str | None = None
    path: str | None = None

    @property
    def short_name(self) -> str:
        return short_model_name(self.name)

    @property
    def portable(self) -> str:
        return portable_name(self.name)


@dataclass(frozen=True)
class DataRecord:
    """The training data: its fingerprint (sha256 of the normalised lines), split sizes and where it was.

    `path` is the file on the training machine (local manifest only); `file` its name, which travels.
    """

    fingerprint: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    truncated: int = 0
    file: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class LrSweep:
    """`--learning-rate auto`: each rate tried (its first epoch's validation loss and accuracy), and the rate
    chosen."""

    candidates: list[dict[str, float]]
    chosen: float


@dataclass(frozen=True)
class TrainingMetrics:
    """How training went: the best epoch's validation numbers, every epoch, and the learning-rate sweep."""

    best_epoch: int | None = None
    best_val_loss: float | None = None
    val_accuracy: float | None = None
    val_recall: dict[str, float] | None = None
    majority_baseline: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    lr_sweep: LrSweep | None = None


# fields of reqcheck.json read as their type hints say (the others have readers of their own)
PLAIN_FIELDS = ("adapter_type", "invocation_ids", "labels", "label_token_ids", "positive_labels", "requirement",
                "split_seed", "hyperparameters", "versions", "format_version")  # fmt: skip


def _record(kind: type, data: Any, what: str) -> Any:
    """A typed sub-record of reqcheck.json from its JSON object; unknown keys are left out."""
    if not isinstance(data, dict):
        raise TypeError(f"{what} is not an object")
    return kind(**{k: v for k, v in data.items() if k in kind.__dataclass_fields__})


@dataclass
class Manifest:
    """Everything needed to use an adapter exactly as it was trained, and to audit where it came from.

    `labels` maps each label to its count in the training data, in the order scoring reads them.
    """

    base_model: BaseModelRef
    adapter_type: str
    prompt: PromptSpec
    invocation_ids: list[int]
    labels: dict[str, int]
    label_token_ids: dict[str, list[int]]
    positive_labels: list[str]
    requirement: str | None = None
    data: DataRecord = field(default_factory=DataRecord)
    split_seed: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: TrainingMetrics = field(default_factory=TrainingMetrics)
    versions: dict[str, str] = field(default_factory=dict)
    output: OutputSpec = field(default_factory=OutputSpec)
    format_version: int = FORMAT_VERSION

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)

    def public(self) -> Manifest:
        """The manifest as it travels (package, upload): no path of the machine that trained the adapter.

        The base model is named by `portable` when it was given as a path, the data by fingerprint and
        file name.
        """
        base, data = self.base_model, self.data
        file = data.file or (Path(data.path).name if data.path else None)
        return replace(
            self,
            base_model=replace(base, spec=base.portable if _looks_local(base.spec) else base.spec, path=None),
            data=replace(data, file=file, path=None),
        )

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
        hints = typing.get_type_hints(cls)
        try:  # the plain fields and the base model, checked against their types; the rest below
            fields = {k: build(hints[k], v, k) for k, v in data.items() if k in PLAIN_FIELDS}
            fields["base_model"] = build(BaseModelRef, data["base_model"], "base_model")
        except Mismatch as exc:
            raise TypeError(str(exc)) from None
        fields["data"] = _record(DataRecord, data.get("data") or {}, "data")
        metrics = _record(TrainingMetrics, data.get("metrics") or {}, "metrics")
        if metrics.lr_sweep is not None:
            metrics = replace(metrics, lr_sweep=_record(LrSweep, metrics.lr_sweep, "metrics.lr_sweep"))
        fields["metrics"] = metrics
        fields["prompt"] = PromptSpec.from_dict(data["prompt"])
        fields["output"] = OutputSpec.from_dict(data.get("output"))
        return cls(**fields)

    def label_set(self, tokenizer: Any) -> LabelSet:
        """The adapter's labels as scoring reads them (a `LabelSet`), from the ids it was trained with."""
        names = list(self.labels)
        return self.output.label_set(tokenizer, names, [self.label_token_ids[n] for n in names])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_NAME).write_text(self.to_json(), encoding="utf-8")

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
    if not _is_peft_config(config):
        raise ReqcheckError(
            f"{path} is not a PEFT adapter config (it needs a peft_type and a rank r); pass an adapter "
            "directory written by reqcheck train or PEFT's save_pretrained."
        )
    return config


def named_base_model(directory: Path, local: bool = False) -> str | None:
    """The base model an adapter directory names, or None: its reqcheck.json's, else PEFT's.

    From reqcheck.json: with `local`, the `spec` that resolves the model on the machine that trained it
    (a path or alias); else the portable `name`. From adapter_config.json: `base_model_name_or_path`.
    """
    if (directory / MANIFEST_NAME).is_file():
        base = Manifest.read(directory).base_model
        if named := base.spec if local else base.name:
            return named
    try:
        config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    named = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return named if isinstance(named, str) and named else None


def _is_peft_config(config: Any) -> bool:
    """What PEFT itself needs to load a LoRA config: a peft_type name and a positive integer rank `r`."""
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        return False
    rank = config.get("r")
    return isinstance(rank, int) and not isinstance(rank, bool) and rank > 0


def check_files_inside(directory: Path) -> None:
    """Refuse an adapter file that resolves outside its directory (a link to a docker config.json, say).

    Packaging copies what the files resolve to, so a link would publish another file. Files that resolve
    into the Hugging Face cache stay allowed: a downloaded snapshot's files are links into its blobs.
    """
    home = directory.resolve()
    allowed = (home, *_hub_cache_roots(home))
    for name in ADAPTER_FILES:
        path = directory / name
        if not path.is_file():
            continue
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in allowed):
            raise ReqcheckError(
                f"{path} resolves to {resolved}, outside the adapter directory; copy the adapter's own file "
                "there instead of linking to another."
            )


def _hub_cache_roots(home: Path) -> list[Path]:
    """The Hugging Face cache, and the cache repo holding `home` when it is a snapshot (any cache_dir)."""
    from huggingface_hub import constants

    roots = [Path(constants.HF_HUB_CACHE).resolve()]
    snapshots = next((p for p in home.parents if p.name == "snapshots"), None)
    if snapshots is not None and snapshots.parent.name.startswith("models--"):
        roots.append(snapshots.parent / "blobs")
    return roots


def check_weights(path: Path) -> None:
    """Refuse a truncated or corrupt `adapter_model.safetensors` before PEFT reads it (reads the header only)."""
    from safetensors import SafetensorError, safe_open

    weights = path / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="numpy"):
            pass
    except SafetensorError as exc:
        raise ReqcheckError(
            f"{weights} is damaged ({exc}); it was probably cut short while copying or downloading, so "
            "copy, download or train the adapter again."
        ) from exc

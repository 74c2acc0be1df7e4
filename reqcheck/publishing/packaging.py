"""Packaging an adapter, decided and checked before any file is written: what it is, where its files go,
its io.yaml (written, read and validated here), its model card, and the gate report that vouches for it.

The intrinsic layout `<intrinsic>/<base_model>/<alora|lora>/` is what Mellea and granite-common read;
`CustomIntrinsicAdapter` loads it too (its labels from the io.yaml, via `io_yaml_labels`). `reqcheck
package` writes a `Package` to a directory; `reqcheck upload` stages the same files for `hub.push`.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reqcheck.config import AdapterType
from reqcheck.errors import ReqcheckError
from reqcheck.evaluation import read_report, report_entries
from reqcheck.manifest import (
    ADAPTER_FILES,
    MANIFEST_NAME,
    PEFT_FILES,
    Manifest,
    adapter_config,
    check_weights,
    content_hash,
)
from reqcheck.models import is_hub_id, short_model_name
from reqcheck.output import RESULT_FIELD, max_tokens, response_schema, transformations

IO_YAML = "io.yaml"
IO_YAML_KEYS = ("model", "response_format", "transformations", "parameters", "instruction")
IO_YAML_REQUIRED = ("model", "response_format", "transformations")
ADAPTER_TYPES = tuple(kind.value for kind in AdapterType)  # the layout's last folder
CARD_NAME = "README.md"
# The schema of what the transformations below produce: {"requirement_check": {"score": <float in [0, 1]>}}.
RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        RESULT_FIELD: {
            "type": "object",
            "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}},
            "required": ["score"],
        }
    },
    "required": [RESULT_FIELD],
}


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
        """The base model as another machine can name it: its Hub id, else its short name, never a path."""
        hub = is_hub_id(self.base_model) and not Path(self.base_model).exists()
        return self.base_model if hub else self.base_short

    def packaged_config(self) -> dict[str, bytes]:
        """adapter_config.json rewritten to name the portable base model, when it names another (a local path)."""
        if self.config.get("base_model_name_or_path") == self.portable_base:
            return {}
        config = {**self.config, "base_model_name_or_path": self.portable_base}
        return {"adapter_config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}

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
    config = adapter_config(weight_path)
    check_weights(weight_path)
    manifest = Manifest.read(weight_path) if (weight_path / MANIFEST_NAME).is_file() else None
    base = (manifest.base_model.get("name") if manifest else None) or config.get("base_model_name_or_path")
    if not base:
        raise ReqcheckError(
            f"{weight_path} names no base model (reqcheck.json base_model.name or adapter_config.json "
            "base_model_name_or_path); retrain the adapter with reqcheck train."
        )
    kind = AdapterType.alora if config.get("alora_invocation_tokens") else AdapterType.lora
    return AdapterFacts(weight_path, kind, str(base), manifest, config)


def check_repo_id(name: str) -> str:
    """`--name` must be `org/repo` by huggingface_hub's own rules, checked before anything is written."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    problem = None if name.count("/") == 1 else "it is not of the form org/repo"
    if problem is None:
        try:
            validate_repo_id(name)
        except HFValidationError as exc:
            problem = str(exc).split(":")[0].rstrip(".")
    if problem:
        raise ReqcheckError(
            f"--name {name[:100]!r} is not a Hub repo id ({problem}); pass org/repo made of letters, digits, "
            "'-', '_' and '.', e.g. my-org/polite-check."
        )
    return name


_FOLDER_NAME = re.compile(r"[A-Za-z0-9_](?:[\w.-]{0,94}\w)?")


def adapter_subdir(intrinsic_name: str, facts: AdapterFacts) -> str:
    """`<intrinsic_name>/<base_model_short_name>/<alora|lora>`: where Mellea and granite-common look.

    Both folder names are checked so that no `..` or separator can move the files out of the package.
    """
    if not _FOLDER_NAME.fullmatch(intrinsic_name) or ".." in intrinsic_name:
        raise ReqcheckError(
            f"Intrinsic name {intrinsic_name[:100]!r} is not a folder name; pass --intrinsic-name (or a --name "
            "repo part) of letters, digits, '-', '_' and '.', not starting or ending with '-' or '.'."
        )
    base = facts.base_short
    if base in ("", ".", "..") or any(sep in base for sep in ("/", "\\", "\0")):
        raise ReqcheckError(
            f"{facts.path} names base model {facts.base_model!r}, which is not a folder name; retrain the "
            "adapter with reqcheck train."
        )
    return f"{intrinsic_name}/{base}/{facts.adapter_type}"


def generate_io_yaml(facts: AdapterFacts) -> str:
    """The io.yaml granite-common needs to read the adapter's output (json-v1: see `_json_io_yaml`).

    For a label-v1 adapter (bare label): `likelihood` maps each label to 1.0 (positive) or 0.0 and weights
    by the label probabilities, giving the probability mass on the positive labels; the two `nest` steps
    wrap it as `{"requirement_check": {"score": <float in [0, 1]>}}`, what `response_format` describes.
    """
    manifest = facts.manifest
    if manifest is None:
        raise ReqcheckError(
            f"{facts.path} has no {MANIFEST_NAME} to read its labels from; pass --io-yaml with a "
            "likelihood transformation listing them."
        )
    if manifest.output.is_json:
        return _json_io_yaml(manifest)
    longest_label = max((len(ids) for ids in manifest.label_token_ids.values()), default=1)
    config = {
        "model": None,
        "response_format": json.dumps(RESPONSE_SCHEMA, indent=2),
        "transformations": [
            {
                "type": "likelihood",
                "input_path": [],
                "categories_to_values": {
                    label: 1.0 if label in manifest.positive_labels else 0.0 for label in manifest.labels
                },
            },
            {"type": "nest", "input_path": [], "field_name": "score"},
            {"type": "nest", "input_path": [], "field_name": RESULT_FIELD},
        ],
        "parameters": {"max_completion_tokens": longest_label + 1},
        "instruction": manifest.prompt.invocation,
    }
    header = "# Written by reqcheck from reqcheck.json."
    if manifest.requirement:
        header += f"\n# Requirement checked: {' '.join(manifest.requirement.split())}"
    return f"{header}\n{yaml.dump(config, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True)}"


def _json_io_yaml(manifest: Manifest) -> str:
    """The io.yaml granite-common needs for a json-v1 adapter (see `reqcheck.output`).

    `response_format` is the schema of the raw output, `instruction` the one the adapter was trained
    with, and greedy decoding (`temperature: 0.0`) emits the most probable label.
    """
    labels, spec = list(manifest.labels), manifest.output
    config = {
        "model": None,
        "response_format": json.dumps(response_schema(spec, labels), indent=2),
        "transformations": transformations(spec, labels, manifest.positive_labels),
        "parameters": {
            "max_completion_tokens": max_tokens(spec, manifest.label_token_ids),
            "temperature": 0.0,
        },
        "instruction": manifest.prompt.instruction,
    }
    header = f"# Written by reqcheck from reqcheck.json (output contract {spec.format})."
    if manifest.requirement:
        header += f"\n# Requirement checked: {' '.join(manifest.requirement.split())}"
    return f"{header}\n{yaml.dump(config, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True)}"


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the response_format schema) as `|` blocks, as Mellea's docs show them."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def validate_io_yaml(text: str, source: str) -> dict[str, Any]:
    """Refuse an io.yaml Mellea or granite-common would choke on, naming the first problem found."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ReqcheckError(
            f"{source} is not valid YAML ({_yaml_problem(exc)}); fix the file and retry."
        ) from exc
    if not isinstance(config, dict):
        raise ReqcheckError(f"{source} is not a YAML mapping; write keys such as model, response_format.")
    unknown = sorted(set(config) - set(IO_YAML_KEYS))
    if unknown:
        raise ReqcheckError(
            f"{source} has unknown key(s) {', '.join(map(str, unknown))}; use only {', '.join(IO_YAML_KEYS)}."
        )
    missing = [key for key in IO_YAML_REQUIRED if key not in config]
    if missing:
        raise ReqcheckError(f"{source} lacks {', '.join(missing)}; add it (null is allowed for model).")
    _check_response_format(config["response_format"], source)
    _check_transformations(config["transformations"], source)
    if config.get("parameters") is not None and not isinstance(config["parameters"], dict):
        raise ReqcheckError(f"{source}: parameters must be a mapping, e.g. max_completion_tokens: 8.")
    if config.get("instruction") is not None and not isinstance(config["instruction"], str):
        raise ReqcheckError(
            f"{source}: instruction must be a string (the instruction the adapter was trained with)."
        )
    return config


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message squeezed onto one line: what went wrong and where."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + str(getattr(exc, "problem", None) or exc).splitlines()[0]


def _check_response_format(value: Any, source: str) -> None:
    if not isinstance(value, str):
        raise ReqcheckError(f"{source}: response_format must be a JSON schema written as a string (use `|`).")
    try:
        schema = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ReqcheckError(f"{source}: response_format is not valid JSON ({exc}); fix the schema.") from exc
    if not isinstance(schema, dict) or not (
        {"type", "properties", "$ref", "anyOf", "oneOf", "enum"} & set(schema)
    ):
        raise ReqcheckError(
            f"{source}: response_format is not a JSON schema object; give one with a type, e.g. "
            '{"type": "object", ...}.'
        )


def _check_transformations(value: Any, source: str) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise ReqcheckError(f"{source}: transformations must be a list of steps or null.")
    for index, step in enumerate(value, start=1):
        if not isinstance(step, dict) or not isinstance(step.get("type"), str):
            raise ReqcheckError(
                f"{source}: transformation {index} is not a mapping with a type; add `type:`."
            )
        values = step.get("categories_to_values")
        if step["type"] == "likelihood" and not (
            isinstance(values, dict)
            and values
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values())
        ):
            raise ReqcheckError(
                f"{source}: likelihood transformation {index} needs categories_to_values mapping each "
                "label to a number."
            )


def check_fits(config: dict[str, Any], facts: AdapterFacts, source: str) -> None:
    """Refuse an io.yaml that cannot describe or read this adapter's output, naming the field at fault.

    Applies to json-v1 adapters, whose raw output is known: `{"<field>": "<label>"}`.
    """
    manifest = facts.manifest
    if manifest is None or not manifest.output.is_json:
        return
    field_name, labels = manifest.output.field or "", list(manifest.labels)
    _schema_fits(json.loads(config["response_format"]), field_name, labels, source)
    result: Any = {field_name: _LABEL}
    for index, step in enumerate(config["transformations"] or [], start=1):
        result = _apply_step(result, step, index, labels, source)
    if config.get("instruction") != manifest.prompt.instruction:
        raise ReqcheckError(
            f"{source}: instruction differs from the one the adapter was trained with; set it to "
            f"{manifest.prompt.instruction!r}."
        )
    needed = max(len(ids) for ids in manifest.label_token_ids.values())
    limit = (config.get("parameters") or {}).get("max_completion_tokens")
    if isinstance(limit, int) and limit < needed:
        raise ReqcheckError(
            f"{source}: parameters.max_completion_tokens {limit} cannot hold the adapter's longest output "
            f"({needed} tokens); raise it."
        )


_LABEL, _NUMBER = "<label>", "<number>"


def _schema_fits(schema: dict[str, Any], field_name: str, labels: list[str], source: str) -> None:
    what = f'the adapter emits {{"{field_name}": <label>}}'
    properties = schema.get("properties")
    if schema.get("type", "object") != "object" or not isinstance(properties, dict):
        raise ReqcheckError(f"{source}: response_format must describe an object with properties; {what}.")
    if field_name not in properties:
        raise ReqcheckError(f"{source}: response_format has no property {field_name!r}; {what}.")
    prop = properties[field_name]
    if not isinstance(prop, dict) or prop.get("type", "string") != "string":
        raise ReqcheckError(f"{source}: response_format property {field_name!r} must be a string; {what}.")
    enum = prop.get("enum")
    if enum is not None:
        outside = [label for label in labels if label not in enum]
        unknown = [value for value in enum if value not in labels]
        if outside or unknown:
            raise ReqcheckError(
                f"{source}: response_format enum of {field_name!r} must list exactly the adapter's labels "
                f"{labels}" + (f"; it lacks {outside}" if outside else f"; {unknown} are not labels") + "."
            )
    extra = [name for name in schema.get("required") or [] if name != field_name]
    if extra:
        raise ReqcheckError(
            f"{source}: response_format requires {extra}, which the adapter never emits; {what}."
        )


def _apply_step(result: Any, step: dict[str, Any], index: int, labels: list[str], source: str) -> Any:
    """What one granite-common transformation makes of the output's shape; refuse steps that cannot apply."""
    kind, path = step["type"], step.get("input_path")
    where = f"{source}: transformation {index} ({kind})"
    if kind not in ("likelihood", "nest"):
        raise ReqcheckError(
            f"{where} does not apply to a checker's one-field output; use likelihood or nest."
        )
    if not isinstance(path, list) or not all(isinstance(key, str) for key in path):
        raise ReqcheckError(f"{where}: input_path must be a list of field names, e.g. [score].")
    value = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise ReqcheckError(f"{where}: input_path {path} does not exist in the output {_shape(result)}.")
        value = value[key]
    if kind == "nest":
        if not isinstance(step.get("field_name"), str):
            raise ReqcheckError(f"{where} needs field_name, the name to wrap the value in.")
        return _replace(result, path, {step["field_name"]: value})
    if value != _LABEL:
        raise ReqcheckError(f"{where}: input_path {path} holds {_shape(value)}, not the label.")
    categories = [str(key) for key in step["categories_to_values"]]
    if sorted(categories) != sorted(labels):
        raise ReqcheckError(
            f"{where}: categories_to_values must list exactly the adapter's labels {labels}, not {categories}."
        )
    return _replace(result, path, _NUMBER)


def _replace(value: Any, path: list[str], new: Any) -> Any:
    if not path:
        return new
    return {**value, path[0]: _replace(value[path[0]], path[1:], new)}


def _shape(value: Any) -> str:
    return json.dumps(value).replace(f'"{_LABEL}"', "<label>").replace(f'"{_NUMBER}"', "<number>")


def io_yaml_labels(path: Path) -> tuple[list[str], list[str]] | None:
    """Labels and positive labels from an io.yaml likelihood transformation, if there is one."""
    for candidate in (path / IO_YAML, path.parent / IO_YAML):
        if candidate.exists():
            try:
                config = yaml.safe_load(candidate.read_text(encoding="utf-8"))
                steps = config.get("transformations") if isinstance(config, dict) else None
                for step in steps if isinstance(steps, list) else []:
                    values = step.get("categories_to_values") if isinstance(step, dict) else None
                    if values and isinstance(values, dict):
                        labels = [str(k) for k in values]
                        return labels, [str(k) for k, v in values.items() if float(v) >= 0.5]
            except (yaml.YAMLError, UnicodeDecodeError, TypeError, ValueError) as exc:
                raise ReqcheckError(
                    f"{candidate} cannot be read for the adapter's labels ({type(exc).__name__}); fix it or "
                    "pass labels=[...] to CustomIntrinsicAdapter."
                ) from exc
    return None


def stage(facts: AdapterFacts, dest: Path, card: str, subdir: str | None, io_yaml: str | None) -> None:
    """Write the repo's files into `dest`: the adapter (at the root or under `subdir`) and the card.

    adapter_config.json names the base model portably (see `AdapterFacts.packaged_config`).
    """
    target = dest / subdir if subdir else dest
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ReqcheckError(f"The folder {subdir} would leave {dest}; pass another --intrinsic-name.")
    target.mkdir(parents=True, exist_ok=True)
    rewritten = facts.packaged_config()
    for name in facts.files:
        if name in rewritten:
            (target / name).write_bytes(rewritten[name])
        else:
            shutil.copyfile(facts.path / name, target / name)
    if io_yaml is not None:
        (target / IO_YAML).write_text(io_yaml, encoding="utf-8")
    (dest / CARD_NAME).write_text(card, encoding="utf-8")


def file_tree(root: Path) -> list[str]:
    """Relative POSIX paths of every file under `root`, sorted: what a commit will hold."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def is_package_dir(path: Path) -> bool:
    """True when `path` looks like what `reqcheck package` writes, so rewriting it loses nothing else."""
    files = file_tree(path)
    allowed = {*ADAPTER_FILES, IO_YAML}
    if CARD_NAME not in files or "library_name: peft" not in (path / CARD_NAME).read_text(errors="replace"):
        return False
    return all(
        name == CARD_NAME or (name.count("/") == 3 and name.split("/")[2] in ADAPTER_TYPES) for name in files
    ) and all(name.rsplit("/", 1)[-1] in allowed for name in files if name != CARD_NAME)


def gate_entry(report_path: Path, adapter_hash: str, weight_path: Path) -> dict[str, Any]:
    """The report's entry for these exact weights, if it passed every gate; else refuse, saying what to run."""
    rerun = f"run `pytest --adapter={weight_path} --reqcheck-report {report_path}`"
    entries = report_entries(read_report(report_path), report_path)
    entry = next((e for e in entries if e.get("content_hash") == adapter_hash), None)
    if entry is None:
        return _refuse_mismatch(report_path, adapter_hash, entries, rerun, weight_path)
    gates = entry.get("gates") or []
    if not gates:
        raise ReqcheckError(
            f"{report_path} scored {weight_path} without any gate; {rerun} with a gate such as "
            "--reqcheck-min-accuracy 0.9."
        )
    failed = [g for g in gates if not g.get("passed")]
    if failed or entry.get("passed") is not True:
        detail = ", ".join(
            f"{g.get('name')} ({g.get('mode')}: {g.get('value')} vs {g.get('threshold')})" for g in failed
        )
        raise ReqcheckError(
            f"{weight_path} failed its gate in {report_path}{f' ({detail})' if detail else ''}; improve the "
            f"adapter and {rerun}, or pass --no-gate to upload it anyway."
        )
    return entry


def _refuse_mismatch(
    report_path: Path, adapter_hash: str, entries: list[dict], rerun: str, weight_path: Path
) -> Any:
    """Say whether these weights changed since they were gated, or the report gated another adapter."""
    vouched = ", ".join(str(e.get("content_hash"))[:19] for e in entries) or "no adapter"
    if any(_same_path(e.get("path"), weight_path) for e in entries):
        raise ReqcheckError(
            f"{report_path} vouches for {weight_path} as {vouched}, but its files now hash to "
            f"{adapter_hash[:19]}: they changed since the report was written, so {rerun}."
        )
    paths = ", ".join(str(e.get("path")) for e in entries) or "no adapter"
    raise ReqcheckError(
        f"{report_path} gated another adapter ({paths}), not {weight_path}; gate this one: {rerun}."
    )


def _same_path(recorded: object, weight_path: Path) -> bool:
    if not isinstance(recorded, str) or not recorded:
        return False
    try:
        return Path(recorded).resolve() == weight_path.resolve()
    except (OSError, ValueError):
        return False


@dataclass
class Package:
    """Everything one upload (or `reqcheck package`) writes, decided before any file is written."""

    facts: AdapterFacts
    repo_id: str
    subdir: str | None
    io_yaml: str | None
    card: str
    gate: dict[str, Any] | None
    packaged_hash: str

    def write(self, dest: Path) -> None:
        """Stage the files in `dest`, then check the staged weights are the ones the gate vouched for."""
        stage(self.facts, dest, self.card, self.subdir, self.io_yaml)
        staged = content_hash(dest / self.subdir if self.subdir else dest)
        if staged != self.packaged_hash:
            raise ReqcheckError(
                f"{self.facts.path} changed while it was being packaged; wait for whatever writes it and retry."
            )


def build_package(
    weight_path: Path,
    repo_id: str,
    *,
    intrinsic: bool,
    io_yaml: Path | None = None,
    intrinsic_name: str | None = None,
    gate_report: Path | None = None,
) -> Package:
    """Validate everything an upload needs (adapter, name, io.yaml, gate) and render io.yaml and the card."""
    facts = read_adapter(weight_path)
    check_repo_id(repo_id)
    if io_yaml is not None and not intrinsic:
        raise ReqcheckError("--io-yaml only applies to the intrinsic layout; add --intrinsic.")
    adapter_hash = content_hash(weight_path)
    gate = gate_entry(gate_report, adapter_hash, weight_path) if gate_report else None
    name = intrinsic_name or repo_id.split("/")[-1]
    subdir = adapter_subdir(name, facts) if intrinsic else None
    io_text = _io_yaml_text(facts, io_yaml) if intrinsic else None
    card = model_card(facts, CardContext(repo_id, subdir, name, gate))
    packaged_hash = content_hash(weight_path, facts.packaged_config())
    return Package(facts, repo_id, subdir, io_text, card, gate, packaged_hash)


def _io_yaml_text(facts: AdapterFacts, path: Path | None) -> str:
    """The user's io.yaml after validation, or one written from the manifest."""
    if path is None:
        text = generate_io_yaml(facts)
        check_fits(validate_io_yaml(text, "the generated io.yaml"), facts, "the generated io.yaml")
        return text
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as exc:
        raise ReqcheckError(
            f"Cannot read --io-yaml {path} ({type(exc).__name__}); pass an io.yaml file."
        ) from exc
    check_fits(validate_io_yaml(text, str(path)), facts, str(path))
    return text


@dataclass
class CardContext:
    """What the model card says beyond the adapter itself: where it lives and how it was gated."""

    repo_id: str
    subdir: str | None
    intrinsic_name: str
    gate_entry: dict[str, Any] | None


def model_card(facts: AdapterFacts, context: CardContext) -> str:
    """The repo's README.md: metadata for the Hub, what the adapter checks, its gate, how to use it."""
    sections = [
        _front_matter(facts, context),
        _summary(facts, context),
        _labels(facts.manifest),
        _gate_section(context.gate_entry),
        _usage(facts, context),
        DATA_WARNING,
    ]
    return "\n".join(section for section in sections if section)


DATA_WARNING = """## Training data

Adapters can memorise their training data, and anyone who downloads this adapter can probe it. Do not
train on data you could not publish, and do not make the repo public if the data holds personal data or
secrets.
"""


def _front_matter(facts: AdapterFacts, context: CardContext) -> str:
    meta: dict[str, Any] = {}
    if is_hub_id(facts.base_model) and not Path(facts.base_model).exists():
        meta["base_model"] = facts.base_model
    meta["library_name"] = "peft"
    meta["tags"] = ["reqcheck", "requirement-check", str(facts.adapter_type)]
    if context.subdir:
        meta["tags"].append("intrinsic")
    if context.gate_entry is None:
        meta["tags"].append("ungated")
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n"


def _summary(facts: AdapterFacts, context: CardContext) -> str:
    manifest = facts.manifest
    kind = "an activated LoRA (aLoRA)" if facts.adapter_type == AdapterType.alora else "a LoRA"
    lines = [f"# {context.repo_id.split('/')[-1]}", ""]
    if context.gate_entry is None:
        lines += [
            "> **Warning: uploaded without a passing gate.** No gate report vouched for these weights, so",
            "> their accuracy is unknown. Run `pytest --adapter ADAPTER --reqcheck-report report.json` before",
            "> relying on it.",
            "",
        ]
    lines += [
        f"{kind.capitalize()} requirement-check adapter for `{facts.base_model}`, trained with reqcheck.",
        "",
    ]
    if manifest and manifest.requirement:
        lines += [f"**Requirement:** {manifest.requirement}", ""]
    where = f"`{context.subdir}/` (intrinsic layout)" if context.subdir else "the repo root"
    lines += ["| | |", "| --- | --- |", f"| Base model | `{facts.base_model}` |"]
    lines += [f"| Adapter type | {facts.adapter_type} |", f"| Adapter files | {where} |"]
    if manifest:
        lines.append(f"| Invocation | `{manifest.prompt.invocation}` |")
    return "\n".join(lines) + "\n"


def _labels(manifest: Manifest | None) -> str:
    if manifest is None:
        return ""
    rows = [
        f"| {label} | {'yes' if label in manifest.positive_labels else 'no'} | {count} |"
        for label, count in manifest.labels.items()
    ]
    head = ["## Labels", "", "| label | counts as passing | training examples |", "| --- | --- | --- |"]
    return "\n".join(head + rows) + "\n"


def _gate_section(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    lines = ["## Quality gate", "", "Measured by the reqcheck pytest plugin on held-out data:", ""]
    lines += [
        "| mode | n | accuracy | macro-F1 | latency p50 / p95 (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, metrics in (entry.get("modes") or {}).items():
        latency = metrics.get("latency_ms") if isinstance(metrics.get("latency_ms"), dict) else {}
        lines.append(
            f"| {mode} | {metrics.get('n', '')} | {_fmt(metrics.get('accuracy'))}"
            f"{_interval(metrics.get('accuracy_interval'), entry.get('confidence'))} | "
            f"{_fmt(metrics.get('macro_f1'))} | {_fmt(latency.get('p50'), 0)} / {_fmt(latency.get('p95'), 0)} |"
        )
    lines += ["", "| gate | mode | threshold | value | passed |", "| --- | --- | --- | --- | --- |"]
    for gate in entry.get("gates") or []:
        lines.append(
            f"| {gate.get('name')} | {gate.get('mode')} | {_fmt(gate.get('threshold'))} | "
            f"{_fmt(gate.get('value'))}{_interval(gate.get('interval'), entry.get('confidence'))} | "
            f"{'yes' if gate.get('passed') else 'no'} |"
        )
    lines += ["", f"Adapter content hash: `{entry.get('content_hash')}`"]
    return "\n".join(lines) + "\n"


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "–"


def _interval(interval: Any, confidence: Any) -> str:
    """` (95%: 0.913–0.993)` after a rate, when the report (format 2) holds its interval."""
    if not (isinstance(interval, list) and len(interval) == 2 and isinstance(confidence, int | float)):
        return ""
    return f" ({confidence:.0%}: {_fmt(interval[0])}–{_fmt(interval[1])})"


def _usage(facts: AdapterFacts, context: CardContext) -> str:
    requirement = (facts.manifest.requirement if facts.manifest else None) or "The reply is polite."
    return f"""## Use with reqcheck

```python
from reqcheck import CustomIntrinsicAdapter, LocalHFBackend, req

backend = LocalHFBackend("{facts.base_model}")
backend.add_adapter(CustomIntrinsicAdapter(model_id="{context.repo_id}", intrinsic_name="{context.intrinsic_name}"))
result = backend.check(req({requirement!r}), "Text to check.")
print(result.passed, result.score)  # score: probability that the requirement holds
```
{_mellea_usage(facts, context, requirement)}"""


def _mellea_usage(facts: AdapterFacts, context: CardContext, requirement: str) -> str:
    if not context.subdir:
        return "\nMellea reads adapters in the intrinsic layout: upload with `reqcheck upload --intrinsic` for it.\n"
    return f"""
## Use with Mellea

```python
from mellea.backends.adapters.adapter import CustomIntrinsicAdapter
from mellea.stdlib.requirements import ALoraRequirement

backend.add_adapter(CustomIntrinsicAdapter(model_id="{context.repo_id}", intrinsic_name="{context.intrinsic_name}",
                                           base_model_name="{facts.base_short}"))
requirement = ALoraRequirement({requirement!r}, intrinsic_name="{context.intrinsic_name}")
```

{_intrinsic_notes(facts)}
"""


def _intrinsic_notes(facts: AdapterFacts) -> str:
    """What the io.yaml makes of the output, and what a Mellea user must set."""
    manifest = facts.manifest
    if manifest is None or not manifest.output.is_json:
        return (
            "This adapter emits a bare label, which granite-common and Mellea cannot parse as JSON; retrain it "
            "with reqcheck's default `--renderer intrinsic-v1` to run it as an intrinsic there."
        )
    spec = manifest.output
    result = (
        f'`{{"{RESULT_FIELD}": {{"score": <float in [0, 1]>}}}}` (granite-common\'s `likelihood` rule)'
        if manifest.positive_labels
        else f"the most probable label, `{{{json.dumps(spec.field)}: <label>}}`"
    )
    alora = (
        " Mellea 0.8's own LocalHFBackend loads adapters without aLoRA offsets, so an aLoRA runs there as the "
        "plain base model: use a LoRA (`reqcheck train --adapter lora`) with it, or serve the aLoRA with vLLM or "
        "reqcheck's backend."
        if facts.adapter_type == AdapterType.alora
        else ""
    )
    prompt = manifest.prompt
    framing = (
        f" It was trained on the checked text as a `{prompt.item_role}` turn"
        + (f" after the system message {json.dumps(prompt.system_prompt)}" if prompt.system_prompt else "")
        + ": send the conversation to granite-common the same way."
        if prompt.item_role != "assistant" or prompt.system_prompt is not None
        else ""
    )
    return (
        f'The adapter emits `{{{json.dumps(spec.field)}: "<label>"}}`; its io.yaml turns that into {result}. '
        f"Load the base model under an id whose last part is `{facts.base_short}` (the folder Mellea and "
        f'granite-common look in), e.g. `LocalHFBackend(model_id="{facts.portable_base}")`.{framing}{alora}'
    )

"""io.yaml (contract): how granite-common and Mellea call an adapter as an intrinsic and read its output.

Its fields mean what granite-common makes of them: `response_format` is the JSON Schema of the raw
output, `instruction` a user turn appended to the conversation, `parameters` go into the request and
`transformations` turn the raw output into the result. `IoYaml` is the one reader and writer: it
parses and validates a file, writes one from a manifest, and checks that one fits an adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import as_label
from reqcheck.formats.manifest import Manifest
from reqcheck.formats.output import RESULT_FIELD, max_tokens, response_schema, transformations

IO_YAML = "io.yaml"
KEYS = ("model", "response_format", "transformations", "parameters", "instruction")
REQUIRED = ("model", "response_format", "transformations")
# What a label-v1 adapter's transformations produce: {"requirement_check": {"score": <float in [0, 1]>}}.
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


@dataclass(frozen=True)
class IoYaml:
    """An io.yaml's fields, as granite-common reads them, and the comment lines written above them."""

    response_format: str
    transformations: list[dict[str, Any]] | None
    model: str | None = None
    parameters: dict[str, Any] | None = None
    instruction: str | None = None
    header: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "response_format": self.response_format,
            "transformations": self.transformations,
            "parameters": self.parameters,
            "instruction": self.instruction,
        }

    def to_text(self) -> str:
        body = yaml.dump(self.to_dict(), Dumper=_BlockDumper, sort_keys=False, allow_unicode=True)
        return f"{self.header}\n{body}" if self.header else body

    @classmethod
    def parse(cls, text: str, source: str) -> IoYaml:
        """An io.yaml Mellea and granite-common can read, or one sentence naming the first problem found."""
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ReqcheckError(
                f"{source} is not valid YAML ({_yaml_problem(exc)}); fix the file and retry."
            ) from exc
        if not isinstance(config, dict):
            raise ReqcheckError(f"{source} is not a YAML mapping; write keys such as model, response_format.")
        unknown = sorted(set(config) - set(KEYS), key=str)
        if unknown:
            raise ReqcheckError(
                f"{source} has unknown key(s) {', '.join(map(str, unknown))}; use only {', '.join(KEYS)}."
            )
        missing = [key for key in REQUIRED if key not in config]
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
        return cls(**config)

    @classmethod
    def read(cls, path: Path) -> tuple[IoYaml, str]:
        """A user's io.yaml file, parsed, and its text (uploaded verbatim)."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReqcheckError(
                f"Cannot read --io-yaml {path} ({type(exc).__name__}); pass an io.yaml file."
            ) from exc
        return cls.parse(text, str(path)), text

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> IoYaml:
        """The io.yaml granite-common needs to read a reqcheck adapter's output.

        json-v1: `response_format` is the schema of the raw output, `instruction` the one the adapter was
        trained with, and greedy decoding (`temperature: 0.0`) emits the most probable label. label-v1
        (bare label): `likelihood` maps each label to 1.0 (positive) or 0.0 and weights by the label
        probabilities; the two `nest` steps wrap the mass as `{"requirement_check": {"score": p}}`.
        """
        labels, spec = list(manifest.labels), manifest.output
        header = "# Written by reqcheck from reqcheck.json" + (
            f" (output contract {spec.format})." if spec.is_json else "."
        )
        if manifest.requirement:
            header += f"\n# Requirement checked: {' '.join(manifest.requirement.split())}"
        if spec.is_json:
            return cls(
                response_format=json.dumps(response_schema(spec, labels), indent=2),
                transformations=transformations(spec, labels, manifest.positive_labels),
                parameters={
                    "max_completion_tokens": max_tokens(spec, manifest.label_token_ids),
                    "temperature": 0.0,
                },
                instruction=manifest.prompt.instruction,
                header=header,
            )
        values = {label: 1.0 if label in manifest.positive_labels else 0.0 for label in labels}
        return cls(
            response_format=json.dumps(RESPONSE_SCHEMA, indent=2),
            transformations=[
                {"type": "likelihood", "input_path": [], "categories_to_values": values},
                {"type": "nest", "input_path": [], "field_name": "score"},
                {"type": "nest", "input_path": [], "field_name": RESULT_FIELD},
            ],
            parameters={"max_completion_tokens": max_tokens(spec, manifest.label_token_ids)},
            instruction=manifest.prompt.invocation,
            header=header,
        )

    def check_fits(self, manifest: Manifest, source: str) -> None:
        """Refuse an io.yaml that cannot describe or read this adapter's output, naming the field at fault.

        Applies to json-v1 adapters, whose raw output is known: `{"<field>": "<label>"}`.
        """
        if not manifest.output.is_json:
            return
        field_name, labels = manifest.output.field or "", list(manifest.labels)
        _schema_fits(json.loads(self.response_format), field_name, labels, source)
        result: Any = {field_name: _LABEL}
        for index, step in enumerate(self.transformations or [], start=1):
            result = _apply_step(result, step, index, labels, source)
        if self.instruction != manifest.prompt.instruction:
            raise ReqcheckError(
                f"{source}: instruction differs from the one the adapter was trained with; set it to "
                f"{manifest.prompt.instruction!r}."
            )
        needed = max(len(ids) for ids in manifest.label_token_ids.values())
        limit = (self.parameters or {}).get("max_completion_tokens")
        if isinstance(limit, int) and limit < needed:
            raise ReqcheckError(
                f"{source}: parameters.max_completion_tokens {limit} cannot hold the adapter's longest output "
                f"({needed} tokens); raise it."
            )


def io_yaml_labels(path: Path) -> tuple[list[str], list[str]] | None:
    """Labels and positive labels from the likelihood transformation of the io.yaml beside an adapter.

    Read leniently (only that step), so that io.yaml files written by other tools serve too.
    """
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


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the response_format schema) as `|` blocks, as Mellea's docs show them."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


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
        _same_form(
            [str(value) for value in enum], labels, f"{source}: response_format enum of {field_name!r}"
        )
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
    _same_form(categories, labels, f"{where}: categories_to_values")
    if sorted(categories) != sorted(labels):
        raise ReqcheckError(
            f"{where}: categories_to_values must list exactly the adapter's labels {labels}, not {categories}."
        )
    return _replace(result, path, _NUMBER)


def _same_form(given: list[str], labels: list[str], where: str) -> None:
    """Refuse labels that read as the adapter's but are encoded in another Unicode form (`sí` as NFD).

    granite-common matches the model's output text to io.yaml's labels as written, so a label spelled
    otherwise would never be found, though it looks the same.
    """
    if sorted(given) != sorted(labels) and sorted(map(as_label, given)) == sorted(map(as_label, labels)):
        raise ReqcheckError(
            f"{where} spells the adapter's labels in another Unicode normalisation form ({ascii(sorted(given))}, "
            f"not {ascii(sorted(labels))}); write them as the adapter does (NFC for adapters reqcheck trains)."
        )


def _replace(value: Any, path: list[str], new: Any) -> Any:
    if not path:
        return new
    return {**value, path[0]: _replace(value[path[0]], path[1:], new)}


def _shape(value: Any) -> str:
    return json.dumps(value).replace(f'"{_LABEL}"', "<label>").replace(f'"{_NUMBER}"', "<number>")

"""The output contract: what an adapter emits after its prompt, how reqcheck scores it, what io.yaml says.

`label-v1` (adapters trained before the contract existed; no `output` in reqcheck.json): the bare label,
then the end-of-text token. `json-v1`: the label as the JSON granite-common and Mellea read, then the
end-of-text token: `{"score": "yes"}` for a requirement check (the shape of Mellea's requirement-check
intrinsic) or `{"label": "disk_full"}` for a classifier without a passing label.

Under `json-v1` the JSON up to the value's opening quote (the lead) is the same for every label. Training
teaches it, so that generation without a grammar emits it too; scoring puts it on the prompt side and
reads the distribution over the labels' first tokens where the value starts, exactly where
granite-common's `likelihood` rule reads its top logprobs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from reqcheck.errors import ReqcheckError
from reqcheck.formats.prompting import (
    GENERATION_SPAN,
    INTRINSIC_RENDERER,
    PromptSpec,
    default_instruction,
    default_invocation,
    intrinsic_invocation,
    label_ids,
    tokenize,
)

LABEL_V1 = "label-v1"
JSON_V1 = "json-v1"
FORMATS = (LABEL_V1, JSON_V1)
SCORE_FIELD = "score"
LABEL_FIELD = "label"
RESULT_FIELD = "requirement_check"
# Room for a grammar-constrained decoder that picks other JSON whitespace than the adapter learned.
SPARE_TOKENS = 4


@dataclass(frozen=True)
class LabelSet:
    """Labels and their token ids (each ending with the end-of-text token).

    `lead` counts the tokens every label's output starts with (a JSON prefix): scoring treats them as
    prompt. With `first_token`, the first token after the lead decides, as granite-common's `likelihood`
    rule reads it, however many tokens a label has.
    """

    names: list[str]
    token_ids: list[list[int]]
    lead: int = 0
    first_token: bool = False

    @property
    def first_ids(self) -> tuple[int, ...]:
        """Each label's first token after the lead: where the labels part, and where scoring reads them."""
        return tuple(ids[self.lead] for ids in self.token_ids)

    @property
    def single_token(self) -> bool:
        """True when the first token tells the labels apart and nothing but a shared end token follows it."""
        firsts = self.first_ids
        distinct = len(set(firsts)) == len(firsts)
        if self.first_token:
            return distinct
        bare = all(len(ids) == 1 for ids in self.token_ids)
        ended = all(len(ids) == 2 for ids in self.token_ids) and len({ids[-1] for ids in self.token_ids}) == 1
        return distinct and (bare or ended)

    def after_lead(self) -> tuple[list[int], LabelSet]:
        """The shared lead tokens, and the labels from the token after them."""
        rest = [ids[self.lead :] for ids in self.token_ids]
        return self.token_ids[0][: self.lead], LabelSet(self.names, rest, 0, self.first_token)


@dataclass(frozen=True)
class OutputSpec:
    """Which contract an adapter's output follows, and (json-v1) the JSON field that holds its label."""

    format: str = LABEL_V1
    field: str | None = None

    @classmethod
    def for_labels(cls, format: str, positive_labels: list[str]) -> OutputSpec:
        """json-v1 names the field `score` for a requirement check (has a passing label), else `label`."""
        if format == LABEL_V1:
            return cls()
        return cls(JSON_V1, SCORE_FIELD if positive_labels else LABEL_FIELD)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> OutputSpec:
        if data is None:
            return cls()
        spec = cls(data.get("format"), data.get("field")) if isinstance(data, dict) else None
        if spec is None or spec.format not in FORMATS or (spec.format == JSON_V1 and not spec.field):
            raise ReqcheckError(
                f"reqcheck.json has an output contract this reqcheck does not know ({data}); upgrade reqcheck."
            )
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_json(self) -> bool:
        return self.format == JSON_V1

    def lead(self) -> str:
        """The JSON text before the label (json-v1)."""
        return f'{{"{self.field}": "'

    def output_ids(self, tokenizer: Any, label: str) -> list[int]:
        """Token ids the adapter emits for `label`, ending with the end-of-text token.

        JSON pieces are tokenised apart, so the value always starts on a token boundary: granite-common
        finds the label's logprobs by the character offset where the value starts.
        """
        if not self.is_json:
            return label_ids(tokenizer, label)
        *value, eos = label_ids(tokenizer, label)
        return [*tokenize(tokenizer, self.lead()), *value, *tokenize(tokenizer, '"}'), eos]

    def label_set(
        self, tokenizer: Any, names: list[str], token_ids: list[list[int]] | None = None
    ) -> LabelSet:
        """The labels as scoring reads them; `token_ids` (from a manifest) default to the tokenizer's."""
        ids = token_ids if token_ids is not None else [self.output_ids(tokenizer, n) for n in names]
        if not self.is_json:
            return LabelSet(names, ids)
        return LabelSet(names, ids, lead=len(tokenize(tokenizer, self.lead())), first_token=True)


def contract(
    tokenizer: Any,
    renderer: str,
    invocation: str | None,
    positives: list[str],
    framing: PromptSpec,
    span: str = GENERATION_SPAN,
) -> tuple[PromptSpec, OutputSpec]:
    """How a new adapter is prompted and what it emits: intrinsic-v1 pairs granite-common's prompt with JSON.

    `framing` carries the item role, system prompt and whether the requirement is rendered. Under
    intrinsic-v1 the invocation defaults to the generation prompt (`span` "generation") or the header of
    the instruction's turn (`span` "instruction", so the adapter reads the instruction), and the
    instruction becomes the io.yaml `instruction`; the other renderers emit the bare label.
    """
    if renderer != INTRINSIC_RENDERER:
        spec = replace(framing, invocation=invocation or default_invocation(tokenizer), renderer=renderer)
        return spec, OutputSpec.for_labels(LABEL_V1, positives)
    spec = replace(
        framing,
        invocation=invocation or intrinsic_invocation(tokenizer, span),
        renderer=renderer,
        instruction=default_instruction(framing.requirement_in_prompt, classifier=not positives),
    )
    return spec, OutputSpec.for_labels(JSON_V1, positives)


def check_labels(spec: OutputSpec, tokenizer: Any, labels: LabelSet) -> None:
    """Refuse json-v1 labels that granite-common's `likelihood` rule could not tell apart.

    It reads each label's probability from the first token of the value, and credits a top-logprob token
    to the first label (in io.yaml order) that starts with the token's text.
    """
    if not spec.is_json:
        return
    for name in labels.names:
        if json.dumps(name, ensure_ascii=False) != f'"{name}"':
            raise ReqcheckError(
                f"Label {name!r} cannot be a JSON value as written; use labels without quotes, backslashes or "
                "control characters."
            )
    for index, name in enumerate(labels.names):
        first = tokenizer.decode([labels.token_ids[index][labels.lead]])
        owner = next((other for other in labels.names if other.startswith(first)), None)
        if owner != name:
            raise ReqcheckError(
                f"Label {name!r} starts with the token {first!r}, which granite-common credits to label "
                f"{owner!r}; rename one of them so that each label's first token is its own."
            )


def response_schema(spec: OutputSpec, labels: list[str]) -> dict[str, Any]:
    """JSON Schema of the raw output (granite-common sends it as the structured-output constraint)."""
    return {
        "type": "object",
        "properties": {spec.field: {"type": "string", "enum": list(labels)}},
        "required": [spec.field],
        "additionalProperties": False,
    }


def transformations(spec: OutputSpec, labels: list[str], positives: list[str]) -> list[dict[str, Any]] | None:
    """granite-common's steps from the raw output to the result.

    A requirement check: `likelihood` turns the label into the probability mass on the passing labels,
    `nest` wraps it, giving `{"requirement_check": {"score": p}}`. A classifier keeps the raw
    `{"label": ...}`: its label is the greedy choice, which is reqcheck's most probable label.
    """
    if not positives:
        return None
    values = {label: 1.0 if label in positives else 0.0 for label in labels}
    return [
        {"type": "likelihood", "input_path": [spec.field], "categories_to_values": values},
        {"type": "nest", "input_path": [], "field_name": RESULT_FIELD},
    ]


def max_tokens(spec: OutputSpec, label_token_ids: dict[str, list[int]]) -> int:
    """Completion tokens the longest label needs (with the end token), plus room for other JSON whitespace."""
    longest = max((len(ids) for ids in label_token_ids.values()), default=1)
    return longest + SPARE_TOKENS if spec.is_json else longest + 1

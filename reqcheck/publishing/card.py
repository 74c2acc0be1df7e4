"""The model card (the repo's README.md): Hub metadata, what the adapter checks, its gate, how to use it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from reqcheck.choices import AdapterType
from reqcheck.formats.gate_report import AdapterEntry, Latency
from reqcheck.formats.manifest import (
    Manifest,
    is_hub_id,
)
from reqcheck.formats.output import RESULT_FIELD
from reqcheck.gating.numbers import number
from reqcheck.gating.report_text import md
from reqcheck.publishing.adapter import AdapterFacts


@dataclass
class CardContext:
    """What the model card says beyond the adapter itself: where it lives and how it was gated."""

    repo_id: str
    subdir: str | None
    intrinsic_name: str
    gate_entry: AdapterEntry | None


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
    if is_hub_id(facts.portable_base):
        meta["base_model"] = facts.portable_base
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
        f"{kind.capitalize()} requirement-check adapter for `{facts.portable_base}`, trained with reqcheck.",
        "",
    ]
    if manifest and manifest.requirement:
        lines += [f"**Requirement:** {md(manifest.requirement)}", ""]
    where = f"`{context.subdir}/` (intrinsic layout)" if context.subdir else "the repo root"
    lines += ["| | |", "| --- | --- |", f"| Base model | {_code(facts.portable_base)} |"]
    lines += [f"| Adapter type | {facts.adapter_type} |", f"| Adapter files | {where} |"]
    if manifest:
        lines.append(f"| Invocation | {_code(manifest.prompt.invocation)} |")
    return "\n".join(lines) + "\n"


def _labels(manifest: Manifest | None) -> str:
    if manifest is None:
        return ""
    rows = [
        f"| {md(label)} | {'yes' if label in manifest.positive_labels else 'no'} | {count} |"
        for label, count in manifest.labels.items()
    ]
    head = ["## Labels", "", "| label | counts as passing | training examples |", "| --- | --- | --- |"]
    return "\n".join(head + rows) + "\n"


def _gate_section(entry: AdapterEntry | None) -> str:
    if entry is None:
        return ""
    lines = ["## Quality gate", "", "Measured by the reqcheck pytest plugin on held-out data:", ""]
    lines += [
        "| mode | n | accuracy | macro-F1 | latency p50 / p95 (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, metrics in entry.modes.items():
        latency = metrics.latency_ms or Latency()
        lines.append(
            f"| {md(mode)} | {_fmt(metrics.n, 0)} | {_fmt(metrics.accuracy)}"
            f"{_interval(metrics.accuracy_interval, entry.confidence)} | "
            f"{_fmt(metrics.macro_f1)} | {_fmt(latency.p50, 0)} / {_fmt(latency.p95, 0)} |"
        )
    lines += ["", "| gate | mode | threshold | value | passed |", "| --- | --- | --- | --- | --- |"]
    for gate in entry.gates:
        lines.append(
            f"| {gate.name} | {md(gate.mode)} | {_fmt(gate.threshold)} | "
            f"{_fmt(gate.value)}{_interval(gate.interval, entry.confidence)} | {'yes' if gate.passed else 'no'} |"
        )
    lines += ["", f"Adapter content hash: `{entry.content_hash}`"]
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    """`text` as one inline code span in a table cell: on one line, `|` escaped, fenced past its backticks."""
    flat = " ".join(text.split()).replace("|", "\\|")
    fence = "`" * (max(map(len, re.findall("`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _fmt(value: Any, digits: int = 3) -> str:
    return number(value, digits, missing="–")


def _interval(interval: list[float] | None, confidence: float) -> str:
    """` (95%: 0.913–0.993)` after a rate, when the report (format 2) holds its interval."""
    if not interval:
        return ""
    return f" ({confidence:.0%}: {_fmt(interval[0])}–{_fmt(interval[1])})"


def _usage(facts: AdapterFacts, context: CardContext) -> str:
    requirement = (facts.manifest.requirement if facts.manifest else None) or "The reply is polite."
    return f"""## Use with reqcheck

```python
from reqcheck import CustomIntrinsicAdapter, LocalHFBackend, req

backend = LocalHFBackend("{facts.portable_base}")
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

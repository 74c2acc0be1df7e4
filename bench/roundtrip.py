"""What the intrinsic round-trip benchmarks share: the caller's conversation and the agreement report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from reqcheck.formats.prompting import PromptSpec


def arguments(doc: str) -> argparse.Namespace:
    """ADAPTER --test FILE [--basemodel NAME], as both round trips take them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--basemodel", default="smollm2-135m-instruct")
    return parser.parse_args()


def caller_messages(spec: PromptSpec, item: str) -> list[dict[str, str]]:
    """The conversation a granite-common or Mellea caller sends: the trained system turn, then the item."""
    system = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt is not None else []
    return [*system, {"role": spec.item_role, "content": item}]


def row(label: str, ours: Any, value: str, result: dict, sent: list[int], rendered: list[int]) -> tuple:
    """One agreement row: (label, reqcheck's result, the other tool's raw value, its score, same prompt ids).

    `result` is the other tool's processed output; its score is missing when it found no label.
    """
    theirs = result["requirement_check"]["score"] if "requirement_check" in result else None
    return label, ours, value, theirs, sent == rendered


def agreement(rows: list[tuple], other: str) -> dict[str, Any]:
    """Accuracy both ways, same labels and prompts, largest score gap, from (label, ours, raw, theirs, same_ids)."""
    n = len(rows)
    scored = [abs(ours.score - theirs) for _, ours, _, theirs, _ in rows if theirs is not None]
    return {
        "n": n,
        "reqcheck_accuracy": sum(ours.label == label for label, ours, *_ in rows) / n,
        f"{other}_accuracy": sum(raw == label for label, _, raw, *_ in rows) / n,
        "same_label": sum(ours.label == raw for _, ours, raw, *_ in rows),
        "same_prompt_ids": sum(same for *_, same in rows),
        "max_score_difference": max(scored) if scored else None,
    }

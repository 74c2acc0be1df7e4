"""Labelled JSONL: read and validate it, split it, fingerprint it.

The format is Mellea's `m alora train` contract: one object per line with `item` and `label`
(non-empty strings), optional `requirement` (string) and `id`. Blank lines are skipped. Every bad
line is collected before anything fails, so a user fixes their file in one pass.
"""

from __future__ import annotations

import hashlib
import json
import random
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reqcheck.errors import ReqcheckError

MAX_REPORTED_LINES = 50


@dataclass(frozen=True)
class Example:
    """One labelled line: the text to check, its label, and where it came from."""

    item: str
    label: str
    requirement: str | None = None
    id: str | None = None
    source: str = ""
    line: int = 0

    def normalised(self) -> str:
        return json.dumps(
            {"item": self.item, "label": self.label, "requirement": self.requirement},
            sort_keys=True,
            ensure_ascii=False,
        )


def _check_object(obj: object) -> str | None:
    """Return why a parsed line is not a valid example, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for key in ("item", "label"):
        if key not in obj:
            return f"missing required key '{key}'"
        value = obj[key]
        if not isinstance(value, str):
            return f"'{key}' must be a string, got {type(value).__name__}"
        if not value.strip():
            return f"'{key}' is empty"
    requirement = obj.get("requirement")
    if requirement is not None and (not isinstance(requirement, str) or not requirement.strip()):
        return "'requirement' must be a non-empty string when present"
    ident = obj.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int))):
        return "'id' must be a string or an integer when present"
    for key in ("item", "label", "requirement", "id"):
        value = obj.get(key)
        if isinstance(value, str) and not is_utf8(value):
            return f"'{key}' holds an unpaired surrogate escape such as \\ud800, which is not text"
    return None


def is_utf8(text: str) -> bool:
    """False for text holding a surrogate: an unpaired JSON escape, or a name byte that is not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse(raw: str) -> tuple[Any, str | None]:
    """The JSON value of one line, or why it is not one (json raises more than JSONDecodeError)."""
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg})"
    except RecursionError:
        return None, "not valid JSON (nested too deeply)"
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return None, f"not valid JSON ({str(exc).split(';')[0]})"


def _read_text(path: Path) -> tuple[str | None, str | None]:
    """The file's text (a UTF-8 byte-order mark is dropped), or a `file[:line]: reason` problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return None, f"{path}:{line}: is not UTF-8 text (byte {data[exc.start]:#04x}); save the file as UTF-8"


def parse_lines(path: Path) -> tuple[list[Example], list[str]]:
    """Parse a JSONL file into examples and a list of `file:line: reason` problems."""
    text, problem = _read_text(path)
    if text is None:
        return [], [str(problem)]
    return parse_text(text, path)


def parse_text(text: str, path: Path) -> tuple[list[Example], list[str]]:
    """Parse the JSONL text of the file `path` (read once by the caller) into examples and problems."""
    examples: list[Example] = []
    problems: list[str] = []
    # JSON Lines ends lines with \n only: U+2028, U+2029 and U+0085 are valid inside JSON strings
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        obj, reason = _parse(raw)
        if reason is None:
            reason = _check_object(obj)
        if reason:
            problems.append(f"{path}:{number}: {reason}")
            continue
        ident = obj.get("id")
        examples.append(
            Example(
                item=obj["item"],
                label=as_label(obj["label"]),
                requirement=obj.get("requirement"),
                id=None if ident is None else str(ident),
                source=str(path),
                line=number,
            )
        )
    return examples, problems


def load_examples(path: str | Path) -> list[Example]:
    """Read a labelled JSONL file, or raise one ReqcheckError that lists every bad line."""
    path = Path(path)
    if not path.exists():
        raise ReqcheckError(f"Data file {path} does not exist; pass the path of a JSONL file.")
    if not path.is_file():
        raise ReqcheckError(f"Data path {path} is not a file; pass the path of a JSONL file.")
    examples, problems = parse_lines(path)
    if problems:
        shown = problems[:MAX_REPORTED_LINES]
        more = len(problems) - len(shown)
        detail = "\n".join("  " + p for p in shown) + (f"\n  ... and {more} more" if more else "")
        raise ReqcheckError(
            f"{path} has {len(problems)} bad line(s); each line needs a JSON object with non-empty "
            f"string 'item' and 'label':\n{detail}"
        )
    if not examples:
        raise ReqcheckError(f"{path} holds no examples; add JSONL lines with 'item' and 'label'.")
    return examples


def as_label(text: str) -> str:
    """A label as the user reads it: without surrounding spaces, in Unicode NFC.

    `sí` typed as one code point or as `i` plus a combining accent looks the same and is one label, so
    every place labels come in (training data, fixtures, labels matched against an adapter's or a
    baseline report's) compares them through this one function.
    """
    return unicodedata.normalize("NFC", text.strip())


def spelled_as(label: str, labels: Iterable[str]) -> str | None:
    """The one of `labels` that reads as `label` (an adapter trained before labels were normalised may
    spell it otherwise), or None."""
    return next((known for known in labels if as_label(known) == as_label(label)), None)


def label_counts(examples: list[Example]) -> dict[str, int]:
    return dict(sorted(Counter(e.label for e in examples).items()))


def check_label_spellings(examples: list[Example]) -> None:
    """Refuse labels that differ only in case or Unicode form (`yes`/`Yes`, `café` NFC/NFD).

    A user means one label by them, but they are different tokens, so they would train as two labels.
    """
    seen: dict[str, Example] = {}
    for example in examples:
        other = seen.setdefault(unicodedata.normalize("NFKC", example.label).casefold(), example)
        if other.label == example.label:
            continue
        same_form = unicodedata.normalize("NFKC", other.label) == unicodedata.normalize("NFKC", example.label)
        show, how = (ascii, "Unicode normalisation") if same_form else (repr, "case")
        raise ReqcheckError(
            f"{example.source}: labels {show(other.label)} (line {other.line}) and {show(example.label)} "
            f"(line {example.line}) differ only in {how}, so they would train as two labels; write each "
            "label one way."
        )


def fingerprint(examples: list[Example]) -> str:
    """sha256 of the normalised lines: the same data gives the same hash whatever its formatting."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.normalised().encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def stratified_split(
    examples: list[Example], val_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split per label so train and validation keep the label mix; the same seed gives the same split.

    Every label with at least two examples gets at least one validation example; a label with a single
    example stays in training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ReqcheckError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
    if val_fraction == 0.0:
        return list(examples), []
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for example in examples:
        by_label.setdefault(example.label, []).append(example)
    train: list[Example] = []
    val: list[Example] = []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, round(len(group) * val_fraction))) if len(group) > 1 else 0
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    rng.shuffle(train)
    return train, val

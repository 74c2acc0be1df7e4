"""The personal-data scan: what a public upload's training data seems to hold (never the values).

Finds e-mail addresses, phone numbers, API keys, tokens and private keys by line, so `reqcheck upload
--public` can say what it found and ask before publishing an adapter trained on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reqcheck.formats.data import fingerprint, parse_text
from reqcheck.formats.manifest import DataRecord

_MAX_LINES_SHOWN = 10


@dataclass
class Finding:
    """One kind of personal data or secret found in a file: how often and on which lines (never the values)."""

    kind: str
    lines: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.lines)

    def describe(self) -> str:
        shown = ", ".join(map(str, self.lines[:_MAX_LINES_SHOWN]))
        more = f" and {self.count - _MAX_LINES_SHOWN} more" if self.count > _MAX_LINES_SHOWN else ""
        return f"{self.kind}: {self.count} on line(s) {shown}{more}"


_PHONE_DIGITS = (9, 15)
_PATTERNS: dict[str, re.Pattern[str]] = {
    "e-mail address": re.compile(r"[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    "phone number": re.compile(r"(?<![\w.])\+?\(?\d[\d ().-]{7,}\d(?![\w.])"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "OpenAI-style API key": re.compile(r"\bsk-(?:[A-Za-z0-9_-]{20,})"),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "long hex secret": re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    "long base64 secret": re.compile(r"(?<![\w+/])[A-Za-z0-9+/_-]{40,}={0,2}"),
}


def _is_phone(match: str) -> bool:
    """Nine to fifteen digits, and not a date or timestamp (2024-01-15 10:30)."""
    digits = sum(ch.isdigit() for ch in match)
    is_date = re.match(r"\d{4}-\d{2}-\d{2}", match.lstrip("+(")) is not None
    return _PHONE_DIGITS[0] <= digits <= _PHONE_DIGITS[1] and not is_date


def _is_base64_secret(match: str) -> bool:
    """Long runs of letters alone are words or URLs slugs; secrets mix cases and digits."""
    return (
        any(c.isdigit() for c in match)
        and any(c.islower() for c in match)
        and any(c.isupper() for c in match)
    )


_FILTERS: dict[str, Callable[[str], bool]] = {
    "phone number": _is_phone,
    "long base64 secret": _is_base64_secret,
}


def scan_text(lines: list[str]) -> list[Finding]:
    """Find e-mail addresses, phone numbers, API keys, tokens and private keys, by line number."""
    findings = {kind: Finding(kind) for kind in _PATTERNS}
    for number, line in enumerate(lines, start=1):
        for kind, pattern in _PATTERNS.items():
            keep = _FILTERS.get(kind, bool)
            if any(keep(m.group(0)) for m in pattern.finditer(line)):
                findings[kind].lines.append(number)
    return [f for f in findings.values() if f.lines]


@dataclass
class DataScan:
    """The scan of an adapter's training data: what it found, or why it could not vouch for the data.

    `unscanned` ends the sentence "The training data ..., so it could not be scanned".
    """

    findings: list[Finding]
    unscanned: str | None = None


def scan_training_data(record: DataRecord | None, adapter: Path) -> DataScan:
    """Scan the file the adapter was trained on, if it still holds what the adapter learnt.

    The file is read once; its examples must give the fingerprint reqcheck.json recorded at training,
    else the file was cleaned or replaced since and a clean scan would vouch for data the adapter never saw.
    """
    if record is None or not record.path:
        return DataScan([], f"of {adapter} is not named in a reqcheck.json")
    path = Path(record.path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return DataScan([], f"{path}, named in reqcheck.json, cannot be read on this machine")
    if not record.fingerprint:
        return DataScan(
            [], f"{path} cannot be matched to the adapter (reqcheck.json records no fingerprint of it)"
        )
    examples, problems = parse_text(text, path)
    if problems or fingerprint(examples) != record.fingerprint:
        return DataScan(
            [],
            f"{path} has changed since the adapter was trained (it no longer matches the fingerprint in "
            "reqcheck.json)",
        )
    # JSONL line numbers: U+2028 inside a string does not end a line
    return DataScan(scan_text(text.split("\n")))

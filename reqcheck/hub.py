"""Upload an adapter to the Hugging Face Hub: gate check, personal-data scan, token, one atomic commit.

The CLI (`reqcheck upload`) does the asking; this module does the checking and the pushing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reqcheck.errors import ReqcheckError
from reqcheck.evaluation import read_report, report_entries
from reqcheck.intrinsic import (
    AdapterFacts,
    CardContext,
    adapter_subdir,
    check_fits,
    check_repo_id,
    file_tree,
    generate_io_yaml,
    model_card,
    read_adapter,
    stage,
    validate_io_yaml,
)
from reqcheck.manifest import content_hash

_MAX_LINES_SHOWN = 10


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
    adapter_hash: str
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
    return Package(facts, repo_id, subdir, io_text, card, adapter_hash, gate, packaged_hash)


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


def scan_file(path: Path) -> list[Finding] | None:
    """`scan_text` over a file (the training data a public upload might leak); None when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return scan_text(text.split("\n"))  # JSONL line numbers: U+2028 inside a string does not end a line


def hub_token() -> str:
    """The token huggingface_hub would use (HF_TOKEN, then the stored login); never printed."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ReqcheckError("No Hugging Face token found; run `hf auth login` or set HF_TOKEN.")
    return token


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub.constants froze it at import time)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _network_errors() -> tuple[type[BaseException], ...]:
    """HfHubHTTPError and its bases: the HTTP library's HTTPError (connection errors too) and OSError."""
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, *HfHubHTTPError.__bases__)


@dataclass
class Target:
    """Where an upload goes."""

    repo_id: str
    revision: str
    private: bool
    commit_message: str


def push(folder: Path, target: Target, token: str) -> str:
    """Create the repo (and branch) if needed, then add every file under `folder` in ONE commit.

    A commit is atomic on the Hub, so a failure leaves the repo as it was. Returns the commit URL.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    operations = [CommitOperationAdd(path, str(folder / path)) for path in file_tree(folder)]
    try:
        api.create_repo(target.repo_id, private=target.private, exist_ok=True)
        if target.revision != "main":
            api.create_branch(target.repo_id, branch=target.revision, exist_ok=True)
        info = api.create_commit(
            target.repo_id, operations, commit_message=target.commit_message, revision=target.revision
        )
    except _network_errors() as exc:
        raise ReqcheckError(
            f"Could not reach the Hub at {endpoint} ({_describe(exc)}); nothing was uploaded, so check your "
            "network, HF_ENDPOINT and that the token may write to the repo, then retry."
        ) from exc
    return info.commit_url


def _describe(exc: BaseException) -> str:
    """The error's first line without anything token-like in it."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"hf_[A-Za-z0-9]+", "hf_***", first)[:200]

"""What the publishing tests share: a gate report in the contract format, a tree's digests, the
upload command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reqcheck.formats.manifest import content_hash
from tests.helpers import run_cli

POSITIVE = "the reply please is late"


ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "reqcheck.json"}


def write_report(path: Path, adapter_dir: Path, *, passed: bool = True, gates: bool = True, **entry) -> Path:
    """A gate report in the plugin's contract format."""
    metrics = {"n": 40, "accuracy": 0.95, "macro_f1": 0.94, "latency_ms": {"p50": 9.0, "p95": 12.0}}
    gate = {"name": "min_accuracy", "mode": "adapter", "threshold": 0.9, "value": 0.95, "passed": passed}
    report_entry = {
        "name": "please",
        "path": str(adapter_dir),
        "content_hash": content_hash(adapter_dir),
        "labels": ["no", "yes"],
        "positive_labels": ["yes"],
        "modes": {"adapter": metrics, "judge": {**metrics, "accuracy": 0.61, "macro_f1": 0.55}},
        "gates": [gate] if gates else [],
        "passed": passed,
        **entry,
    }
    report = {"report_format": 1, "reqcheck_version": "0.1.0", "passed": passed, "adapters": [report_entry]}
    path.write_text(json.dumps(report))
    return path


def tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def upload(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    return run_cli(["upload", *args], capsys, monkeypatch)

"""Packaging an adapter, decided and checked before any file is written: what it is, where its files go,
its io.yaml (written, read and validated here), its model card, and the gate report that vouches for it.

The intrinsic layout `<intrinsic>/<base_model>/<alora|lora>/` is what Mellea and granite-common read;
`CustomIntrinsicAdapter` loads it too (its labels from the io.yaml, via `io_yaml_labels`). `reqcheck
package` writes a `Package` to a directory; `reqcheck upload` stages the same files for `hub.push`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reqcheck.choices import AdapterType
from reqcheck.errors import ReqcheckError
from reqcheck.formats.gate_report import AdapterEntry, GateReport
from reqcheck.formats.io_yaml import IO_YAML, IoYaml
from reqcheck.formats.manifest import (
    ADAPTER_FILES,
    content_hash,
)
from reqcheck.gating.gates import KINDS
from reqcheck.publishing.adapter import AdapterFacts, generate_io_yaml, read_adapter
from reqcheck.publishing.card import CardContext, model_card

ADAPTER_TYPES = tuple(kind.value for kind in AdapterType)  # the layout's last folder
CARD_NAME = "README.md"


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


def stage(facts: AdapterFacts, dest: Path, card: str, subdir: str | None, io_yaml: str | None) -> None:
    """Write the repo's files into `dest`: the adapter (at the root or under `subdir`) and the card.

    adapter_config.json names the base model portably and reqcheck.json holds no local path (see
    `AdapterFacts.packaged_files`).
    """
    target = dest / subdir if subdir else dest
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ReqcheckError(f"The folder {subdir} would leave {dest}; pass another --intrinsic-name.")
    target.mkdir(parents=True, exist_ok=True)
    rewritten = facts.packaged_files()
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


def gate_entry(
    report_path: Path, adapter_hash: str, weight_path: Path, allow_partial: bool = False
) -> AdapterEntry:
    """The report's entry for these exact weights, if it passed every gate; else refuse, saying what to run.

    A partial run (narrowed with -k, -x or node ids) gated only some cases: refused unless `allow_partial`.
    """
    rerun = f"run `pytest --adapter={weight_path} --reqcheck-report {report_path}`"
    entries = GateReport.read(report_path).adapters
    entry = next((e for e in entries if e.content_hash == adapter_hash), None)
    if entry is None:
        return _refuse_mismatch(report_path, adapter_hash, entries, rerun, weight_path)
    if entry.partial and not allow_partial:
        raise ReqcheckError(
            f"{report_path} gated {weight_path} on a partial run ({entry.ran} of {entry.collected} collected "
            f"cases ran); {rerun} without -k or -x, or pass --allow-partial-gate to accept it."
        )
    gates = entry.gates
    if not gates:
        raise ReqcheckError(
            f"{report_path} scored {weight_path} without any gate; {rerun} with a gate such as "
            "--reqcheck-min-accuracy 0.9."
        )
    unknown = sorted({g.name for g in gates} - KINDS.keys())
    if unknown:
        raise ReqcheckError(
            f"{report_path} holds gates this reqcheck does not know ({', '.join(repr(n[:40]) for n in unknown[:3])}); "
            f"{rerun} with this reqcheck."
        )
    failed = [g for g in gates if not g.passed]
    if failed or entry.passed is not True:
        detail = ", ".join(f"{g.name} ({g.mode}: {g.value} vs {g.threshold})" for g in failed)
        raise ReqcheckError(
            f"{weight_path} failed its gate in {report_path}{f' ({detail})' if detail else ''}; improve the "
            f"adapter and {rerun}, or pass --no-gate to upload it anyway."
        )
    return entry


def _refuse_mismatch(
    report_path: Path, adapter_hash: str, entries: list[AdapterEntry], rerun: str, weight_path: Path
) -> Any:
    """Say whether these weights changed since they were gated, or the report gated another adapter."""
    vouched = ", ".join(str(e.content_hash)[:19] for e in entries) or "no adapter"
    if any(_same_path(e.path, weight_path) for e in entries):
        raise ReqcheckError(
            f"{report_path} vouches for {weight_path} as {vouched}, but its files now hash to "
            f"{adapter_hash[:19]}: they changed since the report was written, so {rerun}."
        )
    paths = ", ".join(str(e.path) for e in entries) or "no adapter"
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
    gate: AdapterEntry | None
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
    allow_partial_gate: bool = False,
) -> Package:
    """Validate everything an upload needs (adapter, name, io.yaml, gate) and render io.yaml and the card."""
    facts = read_adapter(weight_path)
    check_repo_id(repo_id)
    if io_yaml is not None and not intrinsic:
        raise ReqcheckError("--io-yaml only applies to the intrinsic layout; add --intrinsic.")
    adapter_hash = content_hash(weight_path)
    gate = gate_entry(gate_report, adapter_hash, weight_path, allow_partial_gate) if gate_report else None
    name = intrinsic_name or repo_id.split("/")[-1]
    subdir = adapter_subdir(name, facts) if intrinsic else None
    io_text = _io_yaml_text(facts, io_yaml) if intrinsic else None
    card = model_card(facts, CardContext(repo_id, subdir, name, gate))
    packaged_hash = content_hash(weight_path, facts.packaged_files())
    return Package(facts, repo_id, subdir, io_text, card, gate, packaged_hash)


def _io_yaml_text(facts: AdapterFacts, path: Path | None) -> str:
    """The user's io.yaml after validation, or one written from the manifest."""
    if path is None:
        text, source = generate_io_yaml(facts), "the generated io.yaml"
        config = IoYaml.parse(text, source)
    else:
        (config, text), source = IoYaml.read(path), str(path)
    if facts.manifest is not None:
        config.check_fits(facts.manifest, source)
    return text

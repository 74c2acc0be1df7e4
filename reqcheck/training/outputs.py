"""What a run writes: the resume checkpoint after every epoch, and at the end the adapter (PEFT's files
and reqcheck.json) in one rename; and the check, before anything trains, that --outfile may be written.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import torch

from reqcheck.atomic import atomic_directory
from reqcheck.errors import ReqcheckError
from reqcheck.formats import data as data_mod
from reqcheck.formats.manifest import DataRecord, Manifest, TrainingMetrics, is_reqcheck_adapter
from reqcheck.training.checkpoint import RunState, partial_dir
from reqcheck.training.run import Run, checkpoint


def replaceable(out: Path) -> bool:
    """True when --outfile is absent, empty, or an adapter reqcheck wrote: replacing it loses nothing."""
    return not out.exists() or (out.is_dir() and (not any(out.iterdir()) or is_reqcheck_adapter(out)))


def check_outfile(given: Path) -> Path:
    """--outfile as an absolute path; refuse one that is not ours to replace, or cannot be written, up front.

    The path is resolved through symlinks, so a linked --outfile is written where the link points (the
    link stays), and the resume checkpoint of a run does not depend on the directory it ran from. The
    current directory (`.`, `./` or an empty path) and the directories above it are refused: writing the
    adapter would replace the directory the user works in.
    """
    out = given.resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ReqcheckError(
            f"--outfile {given} is the current directory or one above it, which the adapter would replace; "
            "name a new directory, such as --outfile ./adapter."
        )
    if not replaceable(out):
        raise ReqcheckError(
            f"--outfile {out} exists and is not a reqcheck adapter; choose a new path or remove it yourself."
        )
    parent = next(p for p in (out.parent, *out.parent.parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ReqcheckError(
            f"--outfile {out} cannot be written: {parent} is not a directory you may write to; choose "
            "another path."
        )
    return out


def save_checkpoint(run: Run, state: RunState) -> None:
    """Everything `--resume` needs after this epoch, beside --outfile (`partial_dir`); every process calls
    this (each adds its random state), rank 0 writes it."""
    saved = checkpoint(run, state)
    if run.group.main:
        saved.save(partial_dir(run.config.outfile))


def build_manifest(run: Run, state: RunState) -> Manifest:
    """The adapter's reqcheck.json: how to use it exactly as trained, and where it came from."""
    config, prep = run.config, run.prep
    best = next(m for m in state.history if m["epoch"] == state.best_epoch)
    val_counts = data_mod.label_counts(prep.val_examples)
    majority = max(val_counts.values()) / len(prep.val_examples) if prep.val_examples else None
    return Manifest(
        base_model=prep.ref,
        adapter_type=config.adapter.value,
        prompt=prep.spec,
        invocation_ids=prep.invocation_ids,
        labels=data_mod.label_counts(prep.examples),
        label_token_ids=dict(zip(prep.labels.names, prep.labels.token_ids, strict=True)),
        positive_labels=prep.positive_labels,
        requirement=config.requirement,
        data=DataRecord(
            fingerprint=prep.fingerprint,
            n_train=len(prep.train_examples),
            n_val=len(prep.val_examples),
            truncated=prep.truncated,
            file=Path(config.datafile).name,
            path=str(Path(config.datafile).resolve()),
        ),
        split_seed=config.seed,
        hyperparameters={
            **config.hyperparameters(),
            "learning_rate": state.sweep.chosen if state.sweep else config.learning_rate,
            "prefix_cache": run.cache_mode,
            "processes": run.group.world,
        },
        metrics=TrainingMetrics(
            best_epoch=state.best_epoch,
            best_val_loss=best.get("val_loss"),
            val_accuracy=best.get("val_accuracy"),
            val_recall=best.get("val_recall"),
            majority_baseline=majority,
            history=state.history,
            lr_sweep=state.sweep,
        ),
        versions=library_versions(),
        output=prep.output,
    )


def write_adapter(run: Run, manifest: Manifest) -> None:
    """PEFT's files plus reqcheck.json in one rename; the resume checkpoint goes once they are in place.

    --outfile is checked again first: files the user put there during training are never replaced.
    adapter_config.json names the base model as the manifest does (its Hub id or given name), never by
    this machine's path; set after PEFT saved it, as PEFT looks a name that is not a local path up on
    the Hub while saving.
    """
    outfile = Path(run.config.outfile)
    if not replaceable(outfile):
        raise ReqcheckError(
            f"--outfile {outfile} now holds files reqcheck did not write, so it was left alone; move them "
            "away and rerun the same command with --resume to write the trained adapter."
        )
    with atomic_directory(outfile, replace_existing=True) as tmp:
        run.model.save_pretrained(tmp)
        _name_base_model(tmp, manifest.base_model.name)
        manifest.write(tmp)
    shutil.rmtree(partial_dir(outfile), ignore_errors=True)


def _name_base_model(directory: Path, name: str) -> None:
    """adapter_config.json names the base model as the Hub and Mellea do, never by this machine's path.

    Set after PEFT saved it: PEFT looks a name that is not a local path up on the Hub while saving.
    """
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**config, "base_model_name_or_path": name}, indent=2, sort_keys=True) + "\n")


def library_versions() -> dict[str, str]:
    """The versions an adapter was trained with, for its manifest."""
    import peft
    import transformers

    from reqcheck import __version__

    return {
        "reqcheck": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }

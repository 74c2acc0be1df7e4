"""The resume checkpoint: where an interrupted run stands, written after every epoch and read by `--resume`.

`Checkpoint` is its one reader and writer. It lives beside the output in a folder no tool mistakes for
an adapter (`partial_dir`), is replaced in one rename, and is read with `weights_only=True`, so a file
planted there cannot run code.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import LrSweep

STATE_FILE = "state.pt"


@dataclass
class RunState:
    """Where a run stands after each epoch: what a resumed run needs besides the weights and optimizer."""

    epoch: int = 0
    best: dict[str, torch.Tensor] | None = None
    best_val_loss: float = math.inf
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    sweep: LrSweep | None = None

    def record(self, metrics: dict[str, float], weights: dict[str, torch.Tensor]) -> None:
        """Add an epoch's metrics; keep its weights when its validation loss is the best so far.

        Without a validation set the latest epoch counts as the best.
        """
        self.history.append(metrics)
        score = metrics.get("val_loss", -metrics["epoch"])
        if score < self.best_val_loss or self.best is None:
            self.best_val_loss = score
            self.best = {k: v.detach().clone() for k, v in weights.items()}
            self.best_epoch = metrics["epoch"]
        self.epoch = metrics["epoch"]

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers, lists and dicts: what `torch.load(weights_only=True)` reads back."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["sweep"] = asdict(self.sweep) if self.sweep else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        sweep = data["sweep"]
        return cls(**{**data, "sweep": LrSweep(**sweep) if sweep else None})


@dataclass
class Checkpoint:
    """An interrupted run: its identity, adapter weights, optimizer, schedule, state and random state.

    `identity` maps each input that shapes what is trained, named as the user knows it (`--epochs`, the
    data), to its digest; `random` holds every process's random state (`randomness`), by rank.
    """

    identity: dict[str, str]
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    state: RunState
    random: list[dict[str, Any]]

    def save(self, directory: Path) -> None:
        """Write the checkpoint, replaced in one rename so a crash leaves the previous one whole."""
        directory.mkdir(parents=True, exist_ok=True)
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["state"] = self.state.to_dict()
        torch.save(data, directory / f"{STATE_FILE}.tmp")
        (directory / f"{STATE_FILE}.tmp").replace(directory / STATE_FILE)

    @classmethod
    def read(cls, directory: Path, identity: dict[str, str], device: str) -> Checkpoint | None:
        """The checkpoint of an interrupted run of this command, or None when there is none."""
        saved = directory / STATE_FILE
        if not saved.exists():
            return None
        unusable = f"The resume checkpoint {saved} is damaged or was not written by reqcheck"
        try:
            loaded = torch.load(saved, map_location=device, weights_only=True)
        except Exception as exc:  # damage shows as RuntimeError, KeyError, EOFError, UnicodeDecodeError, ...
            raise ReqcheckError(
                f"{unusable} ({type(exc).__name__}); rerun without --resume to start over."
            ) from exc
        if not (
            isinstance(loaded, dict)
            and loaded.keys() >= {f.name for f in fields(cls)}
            and isinstance(loaded["state"], dict)
            and loaded["state"].keys() == {f.name for f in fields(RunState)}
            and isinstance(loaded["identity"], dict)
        ):
            raise ReqcheckError(f"{unusable}; rerun without --resume to start over.")
        changed = next((name for name in identity if loaded["identity"].get(name) != identity[name]), None)
        if changed is not None:
            raise ReqcheckError(
                f"--resume refused: {changed} differs from the interrupted run's in {directory}; rerun with the "
                f"same {changed}, or without --resume to start over."
            )
        try:
            state = RunState.from_dict(loaded["state"])
        except TypeError as exc:
            raise ReqcheckError(f"{unusable}; rerun without --resume to start over.") from exc
        return cls(**{**{f.name: loaded[f.name] for f in fields(cls)}, "state": state})


def partial_dir(outfile: Path) -> Path:
    """Where an unfinished run keeps its resume checkpoint (never mistaken for an adapter)."""
    outfile = Path(outfile)
    return outfile.parent / f".{outfile.name}.reqcheck-partial"


@contextmanager
def output_lock(outfile: Path) -> Iterator[None]:
    """Hold --outfile for one run: a second run into it fails at once with one sentence naming this one.

    Two runs into one --outfile would share its resume checkpoint, and the first to finish would delete
    it. The lock is an OS file lock on a file beside the output holding this process's id; the kernel
    releases it when the process ends, even under kill -9. The file is removed while still locked, so a
    run that opened it just before checks that it locked the file still in place, and otherwise retries.
    """
    path = Path(outfile).parent / f".{Path(outfile).name}.reqcheck-lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "whose id is not written yet"
            handle.close()
            raise ReqcheckError(
                f"--outfile {outfile} is being written by another reqcheck train (process {holder}); wait "
                "for it to finish or choose another --outfile."
            ) from None
        if path.exists() and os.path.samestat(path.stat(), os.fstat(handle.fileno())):
            break
        handle.close()
    try:
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()

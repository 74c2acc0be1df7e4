"""Write outputs so that a crash never leaves a half-written file or directory that looks whole."""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from reqcheck.errors import ReqcheckError

STAGING_PREFIX = ".reqcheck-staging-"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, then rename it over `path`; its mode follows the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(
    target: str | Path, replace_existing: bool = False, concurrent_ok: bool = False
) -> Iterator[Path]:
    """Yield a temp directory beside `target`; on success it becomes `target` in one rename.

    On any error (KeyboardInterrupt and a failed final rename included) the temp directory is removed
    and `target` is untouched. `replace_existing` swaps out an existing `target` (the caller has checked
    it owns it); an existing empty directory is always replaced. When another process fills `target`
    first (every torchrun rank converts the bundled model), the rename fails with EEXIST/ENOTEMPTY: as
    pytest does for its cache directory, `concurrent_ok` keeps the other process's directory and drops
    ours; without it that is an error.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_directory(target.parent, f".{target.name}.", ".tmp")
    try:
        yield tmp
        _move_into_place(tmp, target, replace_existing, concurrent_ok)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already renamed away on success


@contextmanager
def atomic_files(folder: str | Path) -> Iterator[Path]:
    """Yield a staging folder inside `folder`; on success each file in it replaces its namesake in `folder`.

    Unlike `atomic_directory`, files the caller does not write are kept, and a symlinked `folder` is
    followed, not replaced. Each file appears whole or not at all; on any error (KeyboardInterrupt
    included) the staging folder is removed, and so is `folder` if this call created it. One writer at a
    time: a second is refused while the first holds the folder's lock, and removes the staging folders
    that a killed writer left.
    """
    folder = Path(folder).resolve()
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReqcheckError(
                f"{folder} is being written by another process; rerun when it has finished, or choose "
                "another folder."
            ) from None
        for stale in folder.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        stage = _new_directory(folder, STAGING_PREFIX, "")
        try:
            yield stage
            for file in sorted(stage.iterdir()):
                os.replace(file, folder / file.name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            if created and not any(folder.iterdir()):
                folder.rmdir()
    finally:
        os.close(lock)


def _new_file(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new file opened for writing, with the mode the umask gives (mkstemp's is always 0600)."""
    while True:
        path = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        with suppress(FileExistsError):
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return os.open(path, flags, 0o666), path


def _new_directory(parent: Path, prefix: str, suffix: str) -> Path:
    """A new directory, with the mode the umask gives (mkdtemp's is always 0700)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        with suppress(FileExistsError):
            path.mkdir()
            return path


def _move_into_place(tmp: Path, target: Path, replace_existing: bool, concurrent_ok: bool) -> None:
    if target.is_dir():
        with suppress(OSError):  # not empty (any more): handled below
            target.rmdir()
    if target.exists() and replace_existing:
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, old / "previous")
        try:
            os.replace(tmp, target)
        except OSError:
            os.replace(old / "previous", target)
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        if concurrent_ok:
            return
        raise ReqcheckError(
            f"{target} appeared while reqcheck was writing it; another process writes the same path, so "
            "rerun when it has finished or choose another path."
        ) from exc


def refuse_clashing_outputs(
    outputs: list[tuple[str, str | Path]], inputs: list[tuple[str, str | Path]]
) -> None:
    """Refuse an output path that is an input or another output: writing it would destroy that file.

    `outputs` and `inputs` pair what a path is (`--html`, `the report`) with the path; paths are
    compared after resolving symlinks, so two spellings of one file clash too.
    """
    taken: dict[Path, str] = {Path(path).resolve(): f"{what} {path}" for what, path in inputs}
    for what, path in outputs:
        resolved = Path(path).resolve()
        if resolved in taken:
            raise ReqcheckError(
                f"{what} {path} is also {taken[resolved]}; writing it would overwrite that file, so pass "
                "another path."
            )
        taken[resolved] = f"{what} {path}"

"""atomic_directory when another process writes the same target (every torchrun rank converts the model)."""

import os
from pathlib import Path

import pytest

from reqcheck.atomic import atomic_directory
from reqcheck.errors import ReqcheckError


def test_a_directory_finished_first_by_another_process_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target, concurrent_ok=True) as tmp:
        (tmp / "weights").write_text("ours")
        target.mkdir()  # the other process renames its finished directory into place first
        (target / "weights").write_text("theirs")
    assert (target / "weights").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_directory_that_appears_meanwhile_is_an_error_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with (
        pytest.raises(ReqcheckError, match="appeared while reqcheck was writing it"),
        atomic_directory(target) as tmp,
    ):
        (tmp / "file").write_text("ours")
        target.mkdir()
        (target / "notes.txt").write_text("someone else's")
    assert (target / "notes.txt").read_text() == "someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replacing_keeps_the_previous_directory_when_the_swap_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old").write_text("previous")
    real_replace = os.replace

    def failing_second_rename(src, dst):
        if Path(src).name.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_second_rename)
    with (
        pytest.raises(OSError, match="No space left"),
        atomic_directory(target, replace_existing=True) as tmp,
    ):
        (tmp / "new").write_text("next")
    assert [p.name for p in target.iterdir()] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]

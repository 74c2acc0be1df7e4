"""Atomic outputs: a finished rename or nothing, whatever stops the writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from reqcheck.atomic import atomic_directory, atomic_write_text


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_finished_directory_appears_in_one_piece(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()
    assert _names(tmp_path) == ["out"]
    assert (tmp_path / "out" / "a.txt").read_text() == "a"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_directory_leaves_nothing(tmp_path: Path, error: type[BaseException]) -> None:
    with pytest.raises(error), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        raise error
    assert _names(tmp_path) == []


def test_an_interrupted_replacement_keeps_the_previous_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "out", replace_existing=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError
    assert _names(tmp_path) == ["out"] and _names(tmp_path / "out") == ["old.txt"]


def test_replace_existing_swaps_the_whole_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with atomic_directory(tmp_path / "out", replace_existing=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(tmp_path) == ["out"] and _names(tmp_path / "out") == ["new.txt"]


def test_an_empty_directory_is_replaced_without_asking(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(tmp_path / "out") == ["new.txt"]


def test_the_parent_directories_are_created(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "a" / "b" / "out") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "a" / "b" / "out" / "x").exists()


def test_atomic_write_text_replaces_a_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second" and _names(tmp_path) == ["report.json"]

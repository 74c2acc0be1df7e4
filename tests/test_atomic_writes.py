"""Atomic outputs: a finished rename or nothing, whatever stops the writer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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


def test_two_reports_written_at_once_to_one_path_end_as_one_whole_report(tmp_path: Path) -> None:
    """Two runs writing their gate report (JSON) and page (HTML) to the same paths: every read sees one
    whole file, and the last one standing is one writer's, whole."""
    from reqcheck.formats.gate_report import GateReport
    from reqcheck.gating.report_html import write_html
    from tests.gating.test_report_scale import large_report

    reports = [large_report(3, 5, seed=1), large_report(6, 8, seed=2)]
    json_path, html_path = tmp_path / "report.json", tmp_path / "report.html"
    seen: list[str] = []

    def write(report: GateReport) -> None:
        for _ in range(5):
            report.write(json_path)
            write_html(report, html_path)
            seen.append(html_path.read_text(encoding="utf-8"))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, reports))
    assert GateReport.read(json_path).to_json() in {r.to_json() for r in reports}
    final = html_path.read_text(encoding="utf-8")
    assert all(page.startswith("<!doctype html>") and page.endswith("</html>\n") for page in [*seen, final])
    assert _names(tmp_path) == ["report.html", "report.json"]
    assert final.count("<section>") == 1

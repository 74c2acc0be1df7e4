"""`reqcheck train` when things go wrong: planted or damaged checkpoints. One sentence and exit code 2
for every user error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reqcheck.training import partial_dir
from tests.helpers import ALL_LINEAR, run_cli

FAST_FLAGS = ["--epochs", "4", "--learning-rate", "5e-3", "--batch-size", "8", "--grad-accum", "1"]
FAST_FLAGS += ["--device", "cpu", "--target-modules", ",".join(ALL_LINEAR)]


def _train_cli(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(data), "--basemodel", str(model), "--outfile", str(out), *FAST_FLAGS, *extra]


def _assert_one_clear_error(code: int, err: str, expected: str) -> None:
    """Exit code 2 and a last line `error: ...` naming the problem, without a traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, err


class _Planted:
    """Unpickling this runs `open(path, "w")`: what a planted state.pt could do with any function."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_planted_checkpoint_does_not_run_code(
    tiny_model_dir: Path, marker_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out, ran = tmp_path / "adapter", tmp_path / "code-ran"
    partial_dir(out).mkdir()
    torch.save({"run_key": _Planted(ran)}, partial_dir(out) / "state.pt")
    code, err = run_cli(_train_cli(marker_data, tiny_model_dir, out, "--resume"), capsys, monkeypatch)
    assert not ran.exists()
    _assert_one_clear_error(code, err, "is damaged or was not written by reqcheck")
    assert "rerun without --resume" in err


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"], ids=["empty", "text", "truncated"]
)
def test_a_damaged_checkpoint_is_one_sentence(
    content: bytes, tiny_model_dir: Path, marker_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "adapter"
    partial_dir(out).mkdir()
    (partial_dir(out) / "state.pt").write_bytes(content)
    code, err = run_cli(_train_cli(marker_data, tiny_model_dir, out, "--resume"), capsys, monkeypatch)
    _assert_one_clear_error(code, err, "is damaged or was not written by reqcheck")


def test_a_checkpoint_of_plain_values_but_another_shape_is_one_sentence(
    tiny_model_dir: Path, marker_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "adapter"
    partial_dir(out).mkdir()
    torch.save({"weights": torch.zeros(2)}, partial_dir(out) / "state.pt")
    code, err = run_cli(_train_cli(marker_data, tiny_model_dir, out, "--resume"), capsys, monkeypatch)
    _assert_one_clear_error(code, err, "is damaged or was not written by reqcheck")

"""`reqcheck train` when things go wrong: planted or damaged checkpoints, values and paths that cannot
work, a kill -9 at any point, and user files where the adapter goes. One sentence and exit code 2 for
every user error, before the model loads; nothing the user owns is deleted."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reqcheck.errors import ReqcheckError
from reqcheck.training.checkpoint import partial_dir
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import train
from reqcheck.training.prepare import prepare
from reqcheck.training.validation import warn_validation_cost
from tests.helpers import ALL_LINEAR, FAST, KILLER, PLEASE, run_cli
from tests.tiny import FILLER, write_jsonl

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
    torch.save({"identity": _Planted(ran)}, partial_dir(out) / "state.pt")
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


def _model_without(tiny_model_dir: Path, where: Path, *names: str) -> Path:
    shutil.copytree(tiny_model_dir, where)
    for name in names:
        (where / name).unlink()
    return where


LATE_FAILURES = {
    "nan learning rate": (["--learning-rate", "nan"], "--learning-rate must be a finite number, not nan."),
    "infinite learning rate": (
        ["--learning-rate", "inf"],
        "--learning-rate must be a finite number, not inf.",
    ),
    "dropout of 1": (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0."),
    "alora span under chat-v1": (
        ["--renderer", "chat-v1", "--alora-span", "instruction"],
        "--alora-span instruction needs --renderer intrinsic-v1",
    ),
    "outfile under a file": ([], "is not a directory you may write to"),
    "config.json not JSON": ([], "config.json cannot be read"),
    "config.json of no known model": ([], "config.json cannot be read"),
    "no tokenizer": ([], "holds no tokenizer that transformers can load"),
}


@pytest.mark.parametrize("case", LATE_FAILURES, ids=list(LATE_FAILURES))
def test_what_would_fail_after_the_model_loaded_fails_first(
    case: str, tiny_model_dir: Path, marker_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    extra, expected = LATE_FAILURES[case]
    model, out = tiny_model_dir, tmp_path / "adapter"
    if case == "outfile under a file":
        (tmp_path / "notes.txt").write_text("mine")
        out = tmp_path / "notes.txt" / "adapter"
    elif case.startswith("config.json"):
        model = _model_without(tiny_model_dir, tmp_path / "model")
        text = "{not json" if case == "config.json not JSON" else json.dumps({"model_type": "no-such-model"})
        (model / "config.json").write_text(text)
    elif case == "no tokenizer":
        model = _model_without(tiny_model_dir, tmp_path / "model", "tokenizer.json", "tokenizer_config.json")
    monkeypatch.setattr("reqcheck.training.prepare.load_model", _must_not_load)
    code, err = run_cli(_train_cli(marker_data, model, out, *extra), capsys, monkeypatch)
    _assert_one_clear_error(code, err, expected)
    assert not out.exists() and not partial_dir(out).exists()


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the problem was found")


NOT_UTF8 = os.fsdecode(b"-\xff")  # a name byte that is not UTF-8, as Python holds it (a surrogate escape)
UNRECORDABLE = {
    "data file name": "the data file's path",
    "folder above the data file": "the data file's path",
    "base model folder": "the base model's path",
    "requirement": "--requirement",
    "promptfile's invocation": "the promptfile's invocation_prompt",
}


@pytest.mark.parametrize("case", UNRECORDABLE, ids=list(UNRECORDABLE))
def test_text_the_manifest_cannot_record_is_refused_before_the_model_loads(
    case: str, tiny_model_dir: Path, marker_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Fault: a data file with a non-UTF-8 name trained every epoch, then writing reqcheck.json raised
    UnicodeEncodeError (and so did --resume): no adapter, hours lost on a real model."""
    data, model, extra = marker_data, tiny_model_dir, []
    if case == "data file name":
        data = tmp_path / f"data{NOT_UTF8}.jsonl"
    elif case == "folder above the data file":
        data = tmp_path / f"folder{NOT_UTF8}" / "data.jsonl"
    elif case == "base model folder":
        model = tmp_path / f"model{NOT_UTF8}"
        shutil.copytree(tiny_model_dir, model)
    elif case == "requirement":
        extra = ["--requirement", f"The reply says please{NOT_UTF8}"]
    else:
        (tmp_path / "prompt.json").write_text('{"invocation_prompt": "<|start_of_role|>assistant\\ud800"}')
        extra = ["--promptfile", str(tmp_path / "prompt.json"), "--renderer", "chat-v1"]
    if data != marker_data:
        data.parent.mkdir(exist_ok=True)
        shutil.copy(marker_data, data)
    monkeypatch.setattr("reqcheck.training.prepare.load_model", _must_not_load)
    code, err = run_cli(_train_cli(data, model, tmp_path / "adapter", *extra), capsys, monkeypatch)
    _assert_one_clear_error(code, err, UNRECORDABLE[case])
    assert "is not UTF-8 text, so the adapter's manifest cannot record it" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_a_read_only_outfile_parent_fails_before_training(
    tiny_model_dir: Path, marker_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, err = run_cli(_train_cli(marker_data, tiny_model_dir, parent / "adapter"), capsys, monkeypatch)
    finally:
        parent.chmod(0o755)
    _assert_one_clear_error(code, err, "is not a directory you may write to")


STEPS = 4 * 24  # 4 epochs of 192 training examples in batches of 8


@pytest.mark.slow
@pytest.mark.parametrize("where", ["a random step", "writing the adapter"])
def test_kill_9_leaves_no_finished_looking_adapter_and_resume_completes_it(
    where: str, tiny_adapters, tiny_model_dir: Path, marker_data: Path, tmp_path: Path
) -> None:
    if where == "a random step":
        where = f"step {random.randint(1, STEPS)}"
    out = tmp_path / "adapter"
    args = _train_cli(marker_data, tiny_model_dir, out, "--requirement", PLEASE)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, where, *args], capture_output=True, text=True, timeout=600
    )
    assert killed.returncode == -9, f"killed at {where}: {killed.stderr[-2000:]}"
    assert not out.exists(), f"killed at {where}"
    assert list(tmp_path.rglob("reqcheck.json")) == [], f"killed at {where}"

    config = TrainConfig(marker_data, str(tiny_model_dir), out, requirement=PLEASE, resume=True, **FAST)
    resumed = train(config, report=lambda _: None).manifest.metrics
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4], f"killed at {where}"
    uninterrupted = tiny_adapters["alora"].manifest.metrics
    assert resumed.val_accuracy >= min(0.9, uninterrupted.val_accuracy), f"killed at {where}"
    assert (out / "reqcheck.json").exists() and not partial_dir(out).exists()


def test_an_outfile_holding_an_adapter_and_user_files_is_refused_untouched(
    tiny_adapters, marker_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    shutil.copytree(tiny_adapters["alora"].outfile, out)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ReqcheckError, match="is not a reqcheck adapter"):
        train(TrainConfig(marker_data, str(tiny_model_dir), out, **FAST), report=lambda _: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_user_files_put_into_the_outfile_during_training_are_kept(
    marker_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"

    def user_writes_a_file(line: str) -> None:
        if line.startswith("epoch 1/") and not out.exists():
            out.mkdir()
            (out / "notes.txt").write_text("mine")

    config = TrainConfig(marker_data, str(tiny_model_dir), out, **{**FAST, "epochs": 1})
    with pytest.raises(ReqcheckError, match="--resume"):
        train(config, report=user_writes_a_file)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"

    (out / "notes.txt").rename(tmp_path / "notes.txt")
    config.resume = True
    lines: list[str] = []
    train(config, report=lines.append)
    assert any(line.startswith("resuming after epoch 1") for line in lines)
    assert (out / "reqcheck.json").exists() and not partial_dir(out).exists()


def test_a_second_run_into_the_same_outfile_fails_at_once_naming_the_first(
    marker_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    config = TrainConfig(marker_data, str(tiny_model_dir), out, **{**FAST, "epochs": 1})
    second: list[BaseException] = []

    def start_a_second_run(line: str) -> None:
        if line.startswith("epoch 1/") and not second:
            with pytest.raises(ReqcheckError) as refused:
                train(dataclasses.replace(config), report=lambda _: None)
            second.append(refused.value)

    train(config, report=start_a_second_run)
    assert f"process {os.getpid()}" in str(second[0]) and len(str(second[0]).splitlines()) == 1
    assert (out / "reqcheck.json").exists() and not partial_dir(out).exists()


@pytest.mark.parametrize("given", [".", "./", ""], ids=["dot", "dot-slash", "empty"])
def test_an_outfile_naming_the_current_directory_is_refused_before_training(
    given: str, tiny_model_dir: Path, marker_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr("reqcheck.training.prepare.load_model", _must_not_load)
    code, err = run_cli(_train_cli(marker_data, tiny_model_dir, given), capsys, monkeypatch)
    _assert_one_clear_error(code, err, "is the current directory")
    assert list(tmp_path.iterdir()) == [work] and list(work.iterdir()) == []


@pytest.mark.slow
def test_an_outfile_that_is_a_symlink_is_written_through(
    marker_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    train(TrainConfig(marker_data, str(tiny_model_dir), link, **{**FAST, "epochs": 1}), report=lambda _: None)
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real / "reqcheck.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def _unusable_cache(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if where == "REQCHECK_CACHE is a file":
        (tmp_path / "cache").write_text("not a directory")
        monkeypatch.setenv("REQCHECK_CACHE", str(tmp_path / "cache"))
        return
    monkeypatch.delenv("REQCHECK_CACHE", raising=False)
    home = tmp_path / "home"
    if where == "HOME is a file":
        home.write_text("not a directory")
    else:
        home.mkdir(mode=0o555)
    monkeypatch.setenv("HOME", str(home))


CACHE_PROBLEMS = ["REQCHECK_CACHE is a file", "HOME is a file"]
if os.geteuid() != 0:  # root may write into a read-only directory
    CACHE_PROBLEMS.append("HOME is read-only")


@pytest.mark.parametrize("where", CACHE_PROBLEMS)
def test_an_unusable_cache_directory_is_found_before_the_model_is_converted(
    where: str, marker_data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import transformers

    _unusable_cache(where, tmp_path, monkeypatch)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    for kind in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM, transformers.AutoConfig):
        monkeypatch.setattr(kind, "from_pretrained", _must_not_load)
    code, err = run_cli(_train_cli(marker_data, gguf, tmp_path / "adapter"), capsys, monkeypatch)
    _assert_one_clear_error(code, err, "set REQCHECK_CACHE to a directory you may write to")


@pytest.mark.slow
def test_many_labels_warn_up_front_and_validation_shows_progress(
    tiny_model_dir: Path, marker_data: Path, tmp_path: Path, monkeypatch
) -> None:
    rng = random.Random(3)
    labels = FILLER[:20]
    rows = [
        {"item": " ".join(rng.choices(FILLER, k=5) + [label]), "label": label}
        for label in labels
        for _ in range(4)
    ]
    data = write_jsonl(tmp_path / "many.jsonl", rows)
    monkeypatch.setattr("reqcheck.training.progress.PROGRESS_EVERY", 0.0, raising=False)
    lines: list[str] = []
    config = TrainConfig(data, str(tiny_model_dir), tmp_path / "adapter", **{**FAST, "epochs": 1})
    train(config, report=lines.append)
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/"))
    warning = [i for i, line in enumerate(lines) if "scores each of the 20 labels" in line]
    assert warning and warning[0] < first_epoch, lines
    assert any(line.startswith("validation: batch ") for line in lines[first_epoch:]), lines

    two_labels: list[str] = []
    prep = prepare(TrainConfig(marker_data, str(tiny_model_dir), tmp_path / "two", **FAST), print, "cpu")
    for cached in (True, False):
        warn_validation_cost(prep, cached, two_labels.append)
    assert two_labels == []

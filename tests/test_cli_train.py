"""`reqcheck train` on bad input: one sentence, exit code 2, no traceback, nothing written."""

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import ALL_LINEAR, run_cli
from tests.tiny import marker_task, write_jsonl

ABSENT_DEVICE = "cuda" if not torch.cuda.is_available() else "mps"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "good.jsonl", marker_task(40, seed=5))
    (tmp_path / "bad-prompt.json").write_text(json.dumps({"prompt": "x"}))
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    return tmp_path


CASES = {
    "missing file": (["missing.jsonl"], "does not exist"),
    "not jsonl": (["notjson.jsonl"], "not valid JSON"),
    "no label": (["nolabel.jsonl"], "missing required key 'label'"),
    "empty item": (["emptyitem.jsonl"], "'item' is empty"),
    "non-string label": (["intlabel.jsonl"], "'label' must be a string"),
    "single label": (["onelabel.jsonl"], "only one label"),
    "too few for a split": (["tiny.jsonl"], "too few for a validation split"),
    "promptfile without invocation": (
        ["good.jsonl", "--promptfile", "bad-prompt.json"],
        "no non-empty 'invocation_prompt'",
    ),
    "promptfile that is a folder": (
        ["good.jsonl", "--promptfile", "occupied"],
        "Promptfile occupied cannot be read",
    ),
    "promptfile under a file": (
        ["good.jsonl", "--promptfile", "good.jsonl/p.json"],
        "Promptfile good.jsonl/p.json cannot be read",
    ),
    "unknown adapter": (["good.jsonl", "--adapter", "qlora"], "'qlora' is not one of"),
    "unknown device": (["good.jsonl", "--device", "tpu"], "'tpu' is not one of"),
    "absent device": (["good.jsonl", "--device", ABSENT_DEVICE], "not available here"),
    "occupied outfile": (["good.jsonl", "--outfile", "occupied"], "is not a reqcheck adapter"),
    "seed beyond torch's range": (
        ["good.jsonl", "--seed", "99999999999999999999"],
        "--seed must be in [-9223372036854775808, 9223372036854775808), got 99999999999999999999.",
    ),
    "unknown positive label": (["good.jsonl", "--positive-label", "maybe"], "not a label in the data"),
    "labels differing in case": (["casefold.jsonl"], "'yes' (line 1) and 'Yes' (line 2) differ only in case"),
    "labels differing in compatibility form": (
        ["nfkc.jsonl"],
        "'\\ufb01ne' (line 1) and 'fine' (line 2) differ only in Unicode normalisation",
    ),
}


def _lines(labels: list[str]) -> str:
    return "".join(
        json.dumps({"item": f"reply {i}", "label": label}) + "\n" for i, label in enumerate(labels)
    )


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_clear_error(
    case: str, workdir: Path, tiny_model_dir: Path, capsys, monkeypatch
) -> None:
    files = {
        "notjson.jsonl": "this is not json\n",
        "nolabel.jsonl": '{"item": "a"}\n{"item": "b"}\n',
        "emptyitem.jsonl": '{"item": "  ", "label": "yes"}\n',
        "intlabel.jsonl": '{"item": "a", "label": 1}\n',
        "onelabel.jsonl": '{"item": "a", "label": "yes"}\n{"item": "b", "label": "yes"}\n',
        "tiny.jsonl": '{"item": "a", "label": "yes"}\n{"item": "b", "label": "no"}\n',
        "casefold.jsonl": _lines(["yes", "Yes", "no"] * 4),
        "nfkc.jsonl": _lines(["\ufb01ne", "fine", "no"] * 4),
    }
    for name, text in files.items():
        (workdir / name).write_text(text)
    args, expected = CASES[case]
    monkeypatch.chdir(workdir)
    outfile = [] if "--outfile" in args else ["--outfile", "adapter"]
    code, err = run_cli(["train", *args, "--basemodel", str(tiny_model_dir), *outfile], capsys, monkeypatch)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert not (workdir / "adapter").exists()
    assert (workdir / "occupied" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".")) == []


def test_every_bad_line_is_listed(workdir: Path, tiny_model_dir: Path, capsys, monkeypatch) -> None:
    (workdir / "many.jsonl").write_text('{"item": "a"}\n[1]\n{"item": "c", "label": ""}\n')
    code, err = run_cli(
        [
            "train",
            str(workdir / "many.jsonl"),
            "--basemodel",
            str(tiny_model_dir),
            "--outfile",
            str(workdir / "adapter"),
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2
    assert [f"many.jsonl:{n}:" in err for n in (1, 2, 3)] == [True, True, True]


def test_debug_shows_the_traceback(workdir: Path, tiny_model_dir: Path, capsys, monkeypatch) -> None:
    from reqcheck.errors import ReqcheckError

    with pytest.raises(ReqcheckError):
        run_cli(
            [
                "--debug",
                "train",
                str(workdir / "missing.jsonl"),
                "--basemodel",
                str(tiny_model_dir),
                "--outfile",
                str(workdir / "adapter"),
            ],
            capsys,
            monkeypatch,
        )


@pytest.mark.slow
def test_train_command_end_to_end(workdir: Path, tiny_model_dir: Path, capsys, monkeypatch) -> None:
    write_jsonl(workdir / "train.jsonl", marker_task(200, seed=2))
    args = [
        "train",
        str(workdir / "train.jsonl"),
        "--basemodel",
        str(tiny_model_dir),
        "--outfile",
        str(workdir / "adapter"),
        "--epochs",
        "3",
        "--learning-rate",
        "5e-3",
        "--batch-size",
        "8",
        "--grad-accum",
        "1",
        "--target-modules",
        ",".join(ALL_LINEAR),
        "--requirement",
        "Says please.",
    ]
    code, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "epoch 1/3" in err and "eta" in err
    assert "val accuracy" in err and "majority-class baseline 0.500" in err
    assert f"saved alora adapter to {workdir / 'adapter'}" in err
    assert "tokens/s" in err and "examples truncated: 0" in err
    assert json.loads((workdir / "adapter" / "reqcheck.json").read_text())["requirement"] == "Says please."


def test_an_adapter_that_learned_nothing_is_called_out(
    workdir: Path, tiny_model_dir: Path, capsys, monkeypatch
) -> None:
    rows = marker_task(100, seed=2)
    for index, row in enumerate(rows):
        row["label"] = "yes" if index % 10 == 0 else "no"  # labels unrelated to the items, 90% "no"
    write_jsonl(workdir / "train.jsonl", rows)
    args = [
        "train",
        str(workdir / "train.jsonl"),
        "--basemodel",
        str(tiny_model_dir),
        "--outfile",
        str(workdir / "adapter"),
        "--epochs",
        "1",
    ]
    code, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert "does not beat the majority-class baseline" in err and "--learning-rate" in err

"""How the command line ends when the user stops it."""

import pytest

import reqcheck.publishing.packaging
import reqcheck.training.loop
from tests.helpers import run_cli


def interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("command", "patched"),
    [
        (["train", "data.jsonl", "--basemodel", "m", "--outfile", "out"], (reqcheck.training.loop, "train")),
        (
            ["upload", "adapter", "--name", "acme/x", "--no-gate"],
            (reqcheck.publishing.packaging, "build_package"),
        ),
        (
            ["package", "adapter", "--name", "acme/x", "--out", "pkg"],
            (reqcheck.publishing.packaging, "build_package"),
        ),
    ],
)
def test_ctrl_c_suggests_resume_only_for_train(command, patched, capsys, monkeypatch) -> None:
    """Fault 8: the Ctrl-C message told every command to rerun with --resume, which only train has."""
    monkeypatch.setattr(*patched, interrupt)
    code, err = run_cli(command, capsys, monkeypatch)
    assert code == 130
    assert ("--resume" in err) is (command[0] == "train")
    assert "interrupted" in err and "Traceback" not in err

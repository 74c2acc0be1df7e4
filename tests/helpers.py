"""What the test modules share: training settings for the tiny model, and running the CLI in-process."""

from __future__ import annotations

import sys

import pytest

from reqcheck.cli import main

# The tiny random model needs its MLPs adapted at the invocation to learn reliably; real models do with q/k/v.
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FAST = {
    "epochs": 4,
    "learning_rate": 5e-3,
    "batch_size": 8,
    "grad_accum": 1,
    "device": "cpu",
    "target_modules": ALL_LINEAR,
}
PLEASE = "The reply says please."


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """Run `reqcheck ARGS` in-process; return (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["reqcheck", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


# `python -c KILLER WHERE reqcheck-args...` runs `reqcheck ARGS` and kills itself with SIGKILL at WHERE:
# "step N" (the Nth optimizer step, a learning-rate sweep's included) or "writing the adapter".
KILLER = """
import os, signal, sys

import torch

import reqcheck.formats.manifest

where = sys.argv[1]
steps = 0
step = torch.optim.AdamW.step


def counted(self, *args, **kwargs):
    global steps
    steps += 1
    if where == f"step {steps}":
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)


def write(self, directory):
    os.kill(os.getpid(), signal.SIGKILL)


torch.optim.AdamW.step = counted
if where == "writing the adapter":
    reqcheck.formats.manifest.Manifest.write = write
from reqcheck.cli import main

sys.argv = ["reqcheck", *sys.argv[2:]]
main()
"""

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

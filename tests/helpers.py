"""Small helpers shared by the test modules."""

from __future__ import annotations

import sys

import pytest

from reqcheck.cli import main


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

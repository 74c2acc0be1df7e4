"""A large fixture file is still one test run: 20,000 lines collect, run through the adapter and end in a whole
report, in bounded memory (a hostile campaign measured 88 s and 0.8 GB on the tiny model; this keeps it so)."""

from __future__ import annotations

import pytest

from reqcheck.formats.gate_report import GateReport
from tests.tiny import marker_task, write_jsonl

pytest_plugins = ["pytester"]

LINES = 20_000
PEAK_MB = 2048  # 640 MB measured here, 0.8 GB by the campaign: catches a leak per case

# the pytest process under test writes its own peak resident memory when it ends
PEAK_CONFTEST = """
def pytest_unconfigure(config):
    status = open("/proc/self/status").read().split("\\n")
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    (config.rootpath / "peak-kb").write_text(peak)
"""


@pytest.mark.slow
def test_a_20000_line_fixture_runs_and_reports_in_bounded_memory(
    pytester: pytest.Pytester, tiny_adapters
) -> None:
    write_jsonl(pytester.path / "cases.reqcheck.jsonl", marker_task(LINES, seed=7))
    pytester.makeconftest(PEAK_CONFTEST)
    adapter = tiny_adapters["alora"].outfile
    result = pytester.runpytest_subprocess(
        f"--adapter={adapter}", "--reqcheck-validation", "on", "--reqcheck-report", "r.json", "-q"
    )
    assert result.ret == 0, result.stdout.str()[-2000:]
    [entry] = GateReport.read(pytester.path / "r.json").adapters
    assert entry.modes["adapter"].n == LINES
    peak_mb = int((pytester.path / "peak-kb").read_text()) / 1024
    assert peak_mb < PEAK_MB, f"the run's peak resident memory was {peak_mb:.0f} MB"

"""Speed of `pytest --adapter` on 200 fixture cases (SmolLM2-135M, JSON out).

Side by side in one run, each in its own pytest process with the adapter and judge modes both on:
the cases evaluated in batches (the default), one at a time (`--reqcheck-batch-size 1`), and a
second batched run served from the pytest cache. `wall_s` is the whole pytest process (start-up and
model loading included); `model_s` is the time spent in model calls, from the gate report, and
`<mode>_cases_per_s` each mode's throughput; `<mode>_batched_speedup` compares the two runs per mode.

    python bench/plugin_speed.py --adapter checkpoints/polite [--cases 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reqcheck.formats.gate_report import GateReport

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    ROOT / "examples" / "support-polite" / "test.reqcheck.jsonl",
    ROOT / "examples" / "support-polite" / "train.jsonl",
]
REQUIREMENT = "The support reply is polite and professional."


def write_cases(directory: Path, count: int) -> None:
    lines = [
        json.loads(line) for source in SOURCES for line in source.read_text().splitlines() if line.strip()
    ]
    cases = [{**line, "requirement": REQUIREMENT} for line in lines[:count]]
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "bench.reqcheck.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))


def timed_pytest(directory: Path, adapter: Path, *args: str) -> dict[str, float]:
    report = directory / "report.json"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:randomly",
        f"--adapter={adapter}",
        f"--reqcheck-report={report}",
        *args,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pytest failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    modes = GateReport.read(report).adapters[0].modes
    model_s = sum(m.n / m.items_per_s for m in modes.values() if m.items_per_s and not m.cached)
    return {
        "wall_s": seconds,
        "model_s": model_s,
        **{f"{mode}_accuracy": m.accuracy for mode, m in modes.items()},
        **{f"{mode}_cases_per_s": m.items_per_s for mode, m in modes.items() if not m.cached},
        "cached": sum(m.cached for m in modes.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=200)
    args = parser.parse_args()
    adapter = args.adapter.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_cases(directory, args.cases)
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "--collect-only", f"--adapter={adapter}"],
            cwd=directory,
            capture_output=True,
            check=True,
        )  # warms the model conversion and the page cache
        one_at_a_time = timed_pytest(directory, adapter, "--cache-clear", "--reqcheck-batch-size=1")
        batched = timed_pytest(directory, adapter, "--cache-clear")
        cached = timed_pytest(directory, adapter)
    print(
        json.dumps(
            {
                "cases": args.cases,
                "modes": ["adapter", "judge"],
                "one_at_a_time": one_at_a_time,
                "batched": batched,
                "second_run_cached": cached,
                "batched_speedup_wall": one_at_a_time["wall_s"] / batched["wall_s"],
                "batched_speedup_model_time": one_at_a_time["model_s"] / batched["model_s"],
                "cached_over_batched": cached["wall_s"] / batched["wall_s"],
                **{
                    f"{mode}_batched_speedup": batched[f"{mode}_cases_per_s"]
                    / one_at_a_time[f"{mode}_cases_per_s"]
                    for mode in ("adapter", "judge")
                },
                "targets_met": {
                    "batched_ge_3x": one_at_a_time["model_s"] / batched["model_s"] >= 3,
                    "adapter_ge_20_cases_per_s": batched["adapter_cases_per_s"] >= 20,
                },
                "load_average": os.getloadavg(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Time and size of the HTML gate report for N synthetic cases (no model; JSON out).

The report is built the way the plugin builds it (`AdapterRun` with adapter and judge predictions,
a baseline to compare with, a training history), then `write_html` renders it in this fresh process,
so the time includes importing matplotlib. `seconds` is wall time, `cpu_seconds` the process's CPU
time (the honest figure on a loaded machine).

    python bench/report_speed.py [--cases 1000] [--labels 2] [--out report.html]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from reqcheck.formats.gate_report import DataFile, Gate, TrainingSummary
from reqcheck.gating.baseline import Baseline
from reqcheck.gating.cases import Prediction
from reqcheck.gating.evaluation import AdapterRun, build_report
from reqcheck.gating.gates import GateSettings

WORDS = (
    "the reply thanks you for waiting we are sorry parcel late refund today please sent order help".split()
)


def synthetic_run(
    cases: int, labels: list[str], accuracy: float, seed: int, baseline: Baseline | None
) -> AdapterRun:
    rng = random.Random(seed)
    texts = random.Random(0)  # the same items in every run, so runs pair up
    positives = labels[-1:] if len(labels) == 2 else []  # like failure-triage: no positive label
    run = AdapterRun(
        "synthetic", "ckpt/synthetic", "sha256:" + "0" * 64, {"name": "tiny"}, "alora", labels, positives,
        settings=GateSettings(gate_on="bound"),
        training=TrainingSummary(4, [
            {"epoch": e, "train_loss": 1.5 / e, "val_loss": 1.2 / e + 0.05 * max(0, e - 4), "val_accuracy": 1 - 0.4 / e}
            for e in range(1, 7)
        ]),
        baseline=baseline,
    )  # fmt: skip
    run.data = [DataFile("synthetic.reqcheck.jsonl", "synthetic", "0" * 64, cases)]
    for i in range(cases):
        expected = labels[i % len(labels)]
        item = " ".join(texts.choice(WORDS) for _ in range(texts.randint(8, 40)))
        for mode, right in (("adapter", accuracy), ("judge", 1 / len(labels))):
            predicted = expected if rng.random() < right else rng.choice([x for x in labels if x != expected])
            top = rng.uniform(1 / len(labels), 1.0)
            rest = (1 - top) / (len(labels) - 1)
            probabilities = {label: top if label == predicted else rest for label in labels}
            run.record(id=f"case{i}", file="synthetic.reqcheck.jsonl", line=i + 1, item=item, expected=expected,
                       mode=mode, prediction=Prediction(probabilities, rng.uniform(0.01, 0.05)))  # fmt: skip
    run.gates = [Gate("min_accuracy", "adapter", 0.85), Gate("min_gain", "adapter-judge", 0.2)]
    if baseline is not None:
        run.gates.append(Gate("max_drop", "adapter", 0.0))
    for label in labels:
        run.gates.append(Gate("min_recall", "adapter", 0.8, label=label))
    for gate in run.gates:
        run.evaluate(gate)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the page here")
    args = parser.parse_args()
    labels = ["no", "yes"] if args.labels == 2 else [f"type_{k}" for k in range(args.labels)]
    with tempfile.TemporaryDirectory() as tmp:
        base_path = Path(tmp) / "base.json"
        build_report([synthetic_run(args.cases, labels, 0.93, 1, None)]).write(base_path)
        report = build_report([synthetic_run(args.cases, labels, 0.9, 2, Baseline.read(base_path))])
        out = args.out or Path(tmp) / "report.html"
        imported = "matplotlib" in sys.modules
        started, cpu_started = time.perf_counter(), time.process_time()
        from reqcheck.gating.report_html import write_html

        write_html(report, out)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        size = out.stat().st_size
    result = {
        "cases": args.cases,
        "labels": len(labels),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),  # what it costs on a machine shared with other work
        "bytes": size,
        "matplotlib_imported_before": imported,
        "targets": {"seconds": 3.0, "bytes": 1_500_000},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

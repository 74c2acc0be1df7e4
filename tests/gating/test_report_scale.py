"""The HTML report scales with labels and epochs: a 200-label, 10,000-epoch report renders legibly, quickly
and small. The curve's ticks and points are thinned; a large label set shows its most frequent confusions
as a table, a middling one a heatmap without per-cell text sized to its labels."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

from reqcheck.formats.gate_report import GateReport, TrainingSummary
from reqcheck.gating.cases import Prediction
from reqcheck.gating.evaluation import AdapterRun, build_report
from reqcheck.gating.plots import figures
from reqcheck.gating.report_html import render_html

MB = 1024 * 1024


def large_report(n_labels: int, epochs: int, per_label: int = 5, seed: int = 0) -> GateReport:
    """A report of `n_labels` labels, `per_label` cases each in both modes, and `epochs` of training history."""
    rng = random.Random(seed)
    labels = [
        f"category_{i:03d}_{rng.choice(['billing', 'shipping', 'account', 'refund'])}"
        for i in range(n_labels)
    ]
    history = [
        {
            "epoch": e,
            "train_loss": 2 / e**0.5 + 0.1,
            "val_loss": 2.2 / e**0.5 + 0.2,
            "val_accuracy": 1 - 1 / e**0.3,
        }
        for e in range(1, epochs + 1)
    ]
    run = AdapterRun("many-labels", "ckpt", "sha256:" + "ab" * 32, {"name": "tiny"}, "lora", labels, [],
                     training=TrainingSummary(epochs // 2, history))  # fmt: skip
    for line in range(n_labels * per_label):
        expected = labels[line % n_labels]
        for mode, right in (("adapter", 0.7), ("judge", 0.3)):
            # the mistakes go to a few labels, as a real checker's do
            said = expected if rng.random() < right else rng.choice(labels[:12])
            rest = (1 - 0.6) / (n_labels - 1)
            probabilities = {label: 0.6 if label == said else rest for label in labels}
            run.record(id=f"case{line}", file="t.reqcheck.jsonl", line=line + 1, item=f"reply number {line}",
                       expected=expected, mode=mode, prediction=Prediction(probabilities, 0.01))  # fmt: skip
    return build_report([run])


def _svg_texts(svg: str) -> int:
    return svg.count("<text")


def test_a_long_training_curve_keeps_a_few_ticks_and_thins_its_points() -> None:
    entry = large_report(3, 10_000, per_label=2).adapters[0]
    [curve] = [svg for caption, svg in figures(entry, 0) if caption.startswith("Training curve")]
    assert _svg_texts(curve) < 40  # tick labels, axis labels, legend, "kept"
    assert len(curve) < 200_000


def test_a_middling_label_set_is_a_heatmap_sized_to_its_labels_without_cell_text() -> None:
    small, middling = (large_report(n, 3).adapters[0] for n in (4, 24))
    [few] = [svg for caption, svg in figures(small, 0) if caption.startswith("Confusion")]
    [many] = [svg for caption, svg in figures(middling, 0) if caption.startswith("Confusion")]
    width = lambda svg: float(re.search(r'<svg[^>]* width="([\d.]+)pt"', svg).group(1))  # noqa: E731
    assert width(many) > 1.5 * width(few)
    assert _svg_texts(few) >= 4 * 4  # every cell's count
    assert _svg_texts(many) < 2 * 2 * 24 + 20  # tick labels, titles: no cell counts


def test_a_large_label_set_lists_its_most_frequent_confusions() -> None:
    report = large_report(200, 3)
    page = render_html(report)
    assert "Most frequent confusions" in page
    assert not any(caption.startswith("Confusion") for caption, _ in figures(report.adapters[0], 0))
    table = page[page.index("Most frequent confusions") :]
    assert table.count("category_") >= 2 * 10  # expected and predicted label of each confusion listed


def test_reqcheck_report_on_200_labels_and_10000_epochs_is_fast_small_and_lean(tmp_path: Path) -> None:
    """The issue's targets: at most 5 s, 300 MB and 2 MB written. The page size is asserted; time and
    memory are measured (this machine is shared, so only a generous memory bound is asserted)."""
    source = tmp_path / "report.json"
    source.write_text(large_report(200, 10_000).to_json(), encoding="utf-8")
    page = tmp_path / "report.html"
    # VmHWM: this process's peak resident memory (ru_maxrss would carry the forking test process's peak)
    measure = (
        "import re, sys\nfrom reqcheck.cli import main\nsys.argv = ['reqcheck', *sys.argv[1:]]\n"
        "try:\n    main()\nfinally:\n"
        "    peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "    print('peak_kb', peak, file=sys.stderr)\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", measure, "report", str(source), "--html", str(page)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    memory_mb = int(re.search(r"peak_kb (\d+)", done.stderr).group(1)) / 1024
    size_mb = page.stat().st_size / MB
    print(f"reqcheck report, 200 labels, 10,000 epochs: {seconds:.1f} s, {memory_mb:.0f} MB, {size_mb:.2f} MB written"
          f" (report.json {source.stat().st_size / MB:.1f} MB)")  # fmt: skip
    assert size_mb <= 2
    # a blow-up guard only (the target is 300 MB; the subprocess timeout guards a hang): time is for benches
    assert memory_mb < 600

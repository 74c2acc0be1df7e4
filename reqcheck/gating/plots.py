"""The gate report's plots, drawn with matplotlib and returned as inline SVG: the only module that imports it.

matplotlib is imported inside these functions, so the page's other parts and the plugin's start-up never
load it. Text from data (labels) is cut to LABEL_CHARS and kept as text in the SVG, escaped by matplotlib.
"""

from __future__ import annotations

import io
import re
from typing import Any

from reqcheck.formats.gate_report import AdapterEntry, CaseRecord
from reqcheck.gating.gates import KINDS
from reqcheck.gating.numbers import number

MODE_COLOURS = {"adapter": "#2f6db5", "judge": "#d08a2e"}
LABEL_CHARS = 24  # tick labels are cut to this many characters


_RC = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, and escaped by matplotlib
    "text.parse_math": False,  # a label holding $ is text, not TeX
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
}


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _figure(width: float, height: float, margins: dict[str, float] | None = None) -> Any:
    """A figure laid out by matplotlib (labels of any length), or with fixed margins (numeric axes: faster)."""
    from matplotlib.figure import Figure

    if margins is None:
        return Figure(figsize=(width, height), layout="constrained")
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(**margins)
    return figure


def _confusion(entry: AdapterEntry) -> Any:
    modes = {mode: m for mode, m in entry.modes.items() if m.confusion is not None}
    if not modes:
        return None
    labels = [_short(label) for label in entry.labels]
    figure = _figure(3.3 * len(modes), 3.2 if len(labels) < 5 else 3.9)
    for axes, (mode, metrics) in zip(
        figure.subplots(1, len(modes), squeeze=False)[0], modes.items(), strict=True
    ):
        matrix = metrics.confusion.matrix
        shares = [[count / max(sum(row), 1) for count in row] for row in matrix]
        # vector cells (pcolormesh), not a raster image: sharp at any zoom, and no data: URI in the page
        axes.pcolormesh(shares, cmap="Blues", vmin=0, vmax=1, edgecolors="white", linewidth=1)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                colour = "white" if shares[i][j] > 0.6 else "#1d232b"
                axes.text(j + 0.5, i + 0.5, str(count), ha="center", va="center", color=colour, fontsize=9)
        rotate = len(labels) > 3
        ticks = [k + 0.5 for k in range(len(labels))]
        axes.set_xticks(ticks, labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        axes.set_yticks(ticks, labels)
        axes.invert_yaxis()
        axes.set_aspect("equal")
        axes.tick_params(length=0)
        axes.set_xlabel("predicted")
        axes.set_ylabel("expected")
        axes.set_title(f"{mode}: accuracy {number(metrics.accuracy, 3, '–')}")
        axes.spines[:].set_visible(False)
    return figure


def _recall(entry: AdapterEntry) -> Any:
    labels = entry.labels
    modes = {mode: m for mode, m in entry.modes.items() if all(label in m.per_label for label in labels)}
    if not modes:
        return None
    figure = _figure(5.6, 1.2 + 0.28 * len(labels) * len(modes))
    axes = figure.subplots()
    step = 0.8 / len(modes)
    for k, (mode, metrics) in enumerate(modes.items()):
        for i, label in enumerate(labels):
            stats = metrics.per_label[label]
            if not stats.support or stats.recall is None or not stats.recall_interval:
                continue
            low, high = stats.recall_interval
            y = i + (k - (len(modes) - 1) / 2) * step
            axes.errorbar(
                stats.recall, y, xerr=[[stats.recall - low], [high - stats.recall]], fmt="o",
                color=MODE_COLOURS.get(mode, "black"), capsize=3, label=mode if i == 0 else None,
            )  # fmt: skip
    for gate in entry.gates:
        kind = KINDS.get(gate.name)
        if kind is not None and kind.per_label and kind.title == "recall":
            axes.axvline(gate.threshold, color="#b3261e", linestyle="--", linewidth=1)
    axes.set_yticks(
        range(len(labels)),
        [f"{_short(label)} ({next(iter(modes.values())).per_label[label].support})" for label in labels],
    )
    axes.invert_yaxis()
    axes.set_xlim(-0.02, 1.02)
    axes.set_xlabel(f"recall, with its {entry.confidence:.0%} interval (cases of the label)")
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(modes), fontsize=8, frameon=False)
    return figure


def _score(case: CaseRecord, mode: str, positives: list[str]) -> float:
    probabilities = case.modes[mode].probabilities
    if positives:
        return sum(probabilities.get(label, 0.0) for label in positives)
    return probabilities.get(case.expected, 0.0)


def _scores(entry: AdapterEntry) -> Any:
    cases = entry.cases
    modes = [m for m in entry.modes if any(m in c.modes for c in cases)]
    if not modes:
        return None
    positives = entry.positive_labels
    figure = _figure(
        3.3 * len(modes), 3.0, {"left": 0.1, "right": 0.97, "bottom": 0.15, "top": 0.9, "wspace": 0.1}
    )
    colours = ["#2f6db5", "#d08a2e", "#3f8f4f", "#8e44ad", "#b3261e", "#5d6d7e", "#16a085", "#7f8c8d"]
    for axes, mode in zip(figure.subplots(1, len(modes), squeeze=False, sharey=True)[0], modes, strict=True):
        for k, label in enumerate(entry.labels):
            scores = [_score(c, mode, positives) for c in cases if mode in c.modes and c.expected == label]
            if scores:
                colour = colours[k % len(colours)]
                name = f"{_short(label)} ({len(scores)})"
                if len(entry.labels) <= 2:
                    axes.hist(
                        scores,
                        bins=20,
                        range=(0, 1),
                        histtype="stepfilled",
                        alpha=0.45,
                        color=colour,
                        label=name,
                    )
                else:  # outlines stay readable where many labels overlap
                    axes.hist(
                        scores,
                        bins=20,
                        range=(0, 1),
                        histtype="step",
                        linewidth=1.4,
                        color=colour,
                        label=name,
                    )
        axes.set_xlim(0, 1)
        axes.set_title(mode)
        axes.set_xlabel(f"p({'+'.join(_short(p) for p in positives)})" if positives else "p(expected label)")
        axes.legend(title="expected", fontsize=8, title_fontsize=8, frameon=False)
    figure.axes[0].set_ylabel("cases")
    return figure


def _reliability(entry: AdapterEntry) -> Any:
    modes = {m: s for m, s in entry.modes.items() if s.calibration and s.calibration.ece is not None}
    if not modes:
        return None
    figure = _figure(4.2, 3.6, {"left": 0.14, "right": 0.97, "bottom": 0.13, "top": 0.84})
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="#9aa5b1", linestyle=":", linewidth=1, label="perfectly calibrated")
    for mode, metrics in modes.items():
        calibration = metrics.calibration
        filled = [b for b in calibration.bins if b.n and b.confidence is not None and b.accuracy is not None]
        axes.plot(
            [b.confidence for b in filled], [b.accuracy for b in filled], marker="o",
            color=MODE_COLOURS.get(mode, "black"), label=f"{mode} (ECE {calibration.ece:.3f})",
        )  # fmt: skip
        for b in filled:
            axes.annotate(str(b.n), (b.confidence, b.accuracy), textcoords="offset points",
                          xytext=(4, -10), fontsize=7, color="#56606b")  # fmt: skip
    axes.set_xlim(0, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("confidence of the predicted label (bin mean)")
    axes.set_ylabel("share right")
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    return figure


def _training(entry: AdapterEntry) -> Any:
    history = [h for h in entry.training.history if isinstance(h.get("epoch"), int | float)]
    if not history:
        return None
    figure = _figure(4.6, 3.4, {"left": 0.13, "right": 0.86, "bottom": 0.14, "top": 0.88})
    axes = figure.subplots()
    epochs = [h["epoch"] for h in history]
    lines = []
    for key, style, name in (("train_loss", "--", "training loss"), ("val_loss", "-", "validation loss")):
        points = [(h["epoch"], h[key]) for h in history if isinstance(h.get(key), int | float)]
        if points:
            lines += axes.plot(*zip(*points, strict=True), style, marker="o", color="#2f6db5", label=name)
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_xticks(epochs)
    accuracy = [
        (h["epoch"], h["val_accuracy"]) for h in history if isinstance(h.get("val_accuracy"), int | float)
    ]
    if accuracy:
        right = axes.twinx()
        right.spines["right"].set_visible(True)
        lines += right.plot(
            *zip(*accuracy, strict=True), marker="s", color="#3f8f4f", label="validation accuracy"
        )
        right.set_ylabel("accuracy")
        right.set_ylim(0, 1.02)
    best = entry.training.best_epoch
    if best:
        axes.axvline(best, color="#9aa5b1", linestyle=":", linewidth=1)
        last = best == epochs[-1]  # label on the left of the line, clear of the right-hand axis
        axes.annotate(
            "kept", (best, 1), xycoords=("data", "axes fraction"), xytext=(-3 if last else 3, -10),
            textcoords="offset points", fontsize=8, color="#56606b", ha="right" if last else "left",
        )  # fmt: skip
    axes.legend(
        handles=lines, fontsize=8, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3
    )
    return figure


_FIGURES = [
    ("Confusion matrices (rows: expected label; shade: share of the row)", _confusion),
    ("Recall per label with its interval (dashed: a per-label gate's threshold, when one is set)", _recall),
    ("Scores by expected label", _scores),
    ("Reliability: accuracy against confidence per bin (numbers: cases in the bin)", _reliability),
    ("Training curve from the adapter's manifest (dotted: the epoch kept)", _training),
]


def _svg(figure: Any, salt: str) -> str:
    """The figure as an inline <svg> element, with ids unique to it in the page."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.hashsalt": salt}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)


def figures(entry: AdapterEntry, index: int) -> list[tuple[str, str]]:
    """(caption, inline <svg>) of each plot the entry has data for; ids unique to adapter `index` in the page."""
    from matplotlib import rc_context

    drawn = []
    with rc_context(_RC):
        for position, (caption, draw) in enumerate(_FIGURES):
            figure = draw(entry)
            if figure is not None:
                drawn.append((caption, _svg(figure, f"reqcheck-{index}-{position}")))
    return drawn

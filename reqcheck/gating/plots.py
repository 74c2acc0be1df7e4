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
# how each plot scales with labels and epochs (a 200-label, 10,000-epoch report stays a few hundred KB):
CELL_TEXT_LABELS = 12  # up to this many labels a confusion cell shows its count; above, shade only
MATRIX_LABELS = 40  # above this many labels no matrix is legible: the page lists the top confusions instead
LABEL_ROWS = 30  # the recall plot shows at most this many labels, those of lowest recall
LEGEND_LABELS = 8  # the score histograms draw one per label up to this many; above, right against wrong
CURVE_POINTS = 300  # the training curve draws at most about this many points per line


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
    """Each mode's matrix, sized to its labels: counts in the cells up to CELL_TEXT_LABELS labels, shade
    only above, and no figure above MATRIX_LABELS (the page lists the most frequent confusions)."""
    modes = {mode: m for mode, m in entry.modes.items() if m.confusion is not None}
    if not modes or len(entry.labels) > MATRIX_LABELS:
        return None
    labels = [_short(label) for label in entry.labels]
    counted = len(labels) <= CELL_TEXT_LABELS
    side = max(3.2, 1.6 + 0.14 * len(labels))  # inches per matrix: room for each label's tick
    figure = _figure(
        3.3 * len(modes) if counted else side * len(modes), 3.2 if len(labels) < 5 else max(3.9, side + 0.5)
    )
    font = 9 if counted else max(5.0, 9 - len(labels) / 8)
    for axes, (mode, metrics) in zip(
        figure.subplots(1, len(modes), squeeze=False)[0], modes.items(), strict=True
    ):
        matrix = metrics.confusion.matrix
        shares = [[count / max(sum(row), 1) for count in row] for row in matrix]
        # vector cells (pcolormesh), not a raster image: sharp at any zoom, and no data: URI in the page
        axes.pcolormesh(
            shares, cmap="Blues", vmin=0, vmax=1, edgecolors="white" if counted else "none", linewidth=1
        )
        for i, row in enumerate(matrix if counted else []):
            for j, count in enumerate(row):
                colour = "white" if shares[i][j] > 0.6 else "#1d232b"
                axes.text(j + 0.5, i + 0.5, str(count), ha="center", va="center", color=colour, fontsize=9)
        rotate = 30 if 3 < len(labels) <= CELL_TEXT_LABELS else 90 if len(labels) > CELL_TEXT_LABELS else 0
        ticks = [k + 0.5 for k in range(len(labels))]
        axes.set_xticks(
            ticks, labels, rotation=rotate, ha="right" if rotate == 30 else "center", fontsize=font
        )
        axes.set_yticks(ticks, labels, fontsize=font)
        axes.invert_yaxis()
        axes.set_aspect("equal")
        axes.tick_params(length=0)
        axes.set_xlabel("predicted")
        axes.set_ylabel("expected")
        axes.set_title(f"{mode}: accuracy {number(metrics.accuracy, 3, '–')}")
        axes.spines[:].set_visible(False)
    return figure


def _recall(entry: AdapterEntry) -> Any:
    """Each label's recall with its interval; past LABEL_ROWS labels, the ones of lowest recall."""
    modes = {
        mode: m for mode, m in entry.modes.items() if all(label in m.per_label for label in entry.labels)
    }
    if not modes:
        return None
    first = next(iter(modes.values()))
    labels = entry.labels
    if len(labels) > LABEL_ROWS:
        labels = sorted(labels, key=lambda label: first.per_label[label].recall or 0.0)[:LABEL_ROWS]
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
        range(len(labels)), [f"{_short(label)} ({first.per_label[label].support})" for label in labels]
    )
    axes.invert_yaxis()
    axes.set_xlim(-0.02, 1.02)
    note = (
        f"\nthe {len(labels)} of {len(entry.labels)} labels of lowest recall"
        if len(labels) < len(entry.labels)
        else ""
    )
    axes.set_xlabel(f"recall, with its {entry.confidence:.0%} interval (cases of the label){note}")
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(modes), fontsize=8, frameon=False)
    return figure


def _score(case: CaseRecord, mode: str, positives: list[str]) -> float:
    probabilities = case.modes[mode].probabilities
    if positives:
        return sum(probabilities.get(label, 0.0) for label in positives)
    return probabilities.get(case.expected, 0.0)


def _score_groups(entry: AdapterEntry, mode: str) -> list[tuple[str, list[float]]]:
    """(legend name, scores) per expected label; past LEGEND_LABELS labels, the cases right and wrong."""
    cases = [c for c in entry.cases if mode in c.modes]
    positives = entry.positive_labels
    if len(entry.labels) > LEGEND_LABELS:
        return [
            (name, scores)
            for name, right in (("right", True), ("wrong", False))
            if (scores := [_score(c, mode, positives) for c in cases if c.right(mode) == right])
        ]
    groups = []
    for label in entry.labels:
        scores = [_score(c, mode, positives) for c in cases if c.expected == label]
        if scores:
            groups.append((f"{_short(label)} ({len(scores)})", scores))
    return groups


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
        groups = _score_groups(entry, mode)
        for k, (name, scores) in enumerate(groups):
            # filled where two groups overlap; outlines stay readable where more do
            style = (
                {"histtype": "stepfilled", "alpha": 0.45}
                if len(groups) <= 2
                else {"histtype": "step", "linewidth": 1.4}
            )
            axes.hist(scores, bins=20, range=(0, 1), color=colours[k % len(colours)], label=name, **style)
        axes.set_xlim(0, 1)
        axes.set_title(mode)
        axes.set_xlabel(f"p({'+'.join(_short(p) for p in positives)})" if positives else "p(expected label)")
        title = "cases" if len(entry.labels) > LEGEND_LABELS else "expected"
        axes.legend(title=title, fontsize=8, title_fontsize=8, frameon=False)
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


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most about CURVE_POINTS of `points`, evenly spaced, the last always kept."""
    stride = -(-len(points) // CURVE_POINTS)
    return points if stride == 1 else points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def _training(entry: AdapterEntry) -> Any:
    """The losses and accuracy per epoch; past 12 epochs, ticks where matplotlib puts them, and past
    CURVE_POINTS epochs a thinned line without markers, so 10,000 epochs draw as 100 do."""
    from matplotlib.ticker import MaxNLocator

    history = [h for h in entry.training.history if isinstance(h.get("epoch"), int | float)]
    if not history:
        return None
    figure = _figure(4.6, 3.4, {"left": 0.13, "right": 0.86, "bottom": 0.14, "top": 0.88})
    axes = figure.subplots()
    epochs = [h["epoch"] for h in history]
    few = len(epochs) <= 40  # a marker on every epoch while they stay apart
    lines = []
    for key, style, name in (("train_loss", "--", "training loss"), ("val_loss", "-", "validation loss")):
        points = _thin([(h["epoch"], h[key]) for h in history if isinstance(h.get(key), int | float)])
        if points:
            lines += axes.plot(
                *zip(*points, strict=True), style, marker="o" if few else None, color="#2f6db5", label=name
            )
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    if len(epochs) <= 12:
        axes.set_xticks(epochs)
    else:
        axes.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    accuracy = _thin(
        [(h["epoch"], h["val_accuracy"]) for h in history if isinstance(h.get("val_accuracy"), int | float)]
    )
    if accuracy:
        right = axes.twinx()
        right.spines["right"].set_visible(True)
        lines += right.plot(
            *zip(*accuracy, strict=True),
            marker="s" if few else None,
            color="#3f8f4f",
            label="validation accuracy",
        )
        right.set_ylabel("accuracy")
        right.set_ylim(0, 1.02)
    _mark_kept(axes, entry.training.best_epoch, epochs[-1])
    axes.legend(
        handles=lines, fontsize=8, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3
    )
    return figure


def _mark_kept(axes: Any, best: int | None, last: float) -> None:
    """A dotted line at the epoch kept, labelled on the side clear of the right-hand axis."""
    if not best:
        return
    axes.axvline(best, color="#9aa5b1", linestyle=":", linewidth=1)
    at_end = best == last
    axes.annotate(
        "kept", (best, 1), xycoords=("data", "axes fraction"), xytext=(-3 if at_end else 3, -10),
        textcoords="offset points", fontsize=8, color="#56606b", ha="right" if at_end else "left",
    )  # fmt: skip


_FIGURES = [
    ("Confusion matrices (rows: expected label; shade: share of the row)", _confusion),
    ("Recall per label with its interval (dashed: a per-label gate's threshold, when one is set)", _recall),
    ("Scores by expected label (past 8 labels: of the cases right and wrong)", _scores),
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

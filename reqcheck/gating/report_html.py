"""The gate report as one self-contained HTML page: plots as inline SVG, no script, nothing fetched.

Rendered from the report (format 2) alone, so `reqcheck report REPORT.json --html PATH` needs no model,
and CI can keep the page as an artifact that opens offline. matplotlib is imported here only, when a
page is written. Every text that comes from data (items, ids, labels, paths) is HTML-escaped.
"""

from __future__ import annotations

import io
import re
from html import escape
from pathlib import Path
from typing import Any

from reqcheck.atomic import atomic_write_text
from reqcheck.errors import ReqcheckError
from reqcheck.formats.gate_report import (
    AdapterEntry,
    BaselineComparison,
    Calibration,
    CaseRecord,
    Change,
    Gate,
    GateReport,
    Latency,
    ModeSummary,
    ServedRecord,
)
from reqcheck.gating import numbers
from reqcheck.gating.gates import KINDS, op
from reqcheck.gating.report_text import on_by_default_line, partial_run, served_line

MODE_COLOURS = {"adapter": "#2f6db5", "judge": "#d08a2e"}
TITLE = "<title>reqcheck gate report: "  # how `is_report_page` knows a page it wrote
LABEL_CHARS = 24  # tick labels are cut to this many characters
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
padding:16px 24px;color:#1d232b;background:#fff}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:19px;margin:28px 0 4px;border-bottom:1px solid #d7dde4;
padding-bottom:4px}h3{font-size:15px;margin:20px 0 6px}
.meta{color:#56606b;margin:2px 0}
.pass{color:#17693a;font-weight:600}.fail{color:#b3261e;font-weight:600}.unset{color:#56606b}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #d7dde4;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f5f8;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.item{max-width:560px;overflow-wrap:anywhere}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:12px}
figure{margin:0;border:1px solid #e3e7ec;border-radius:4px;padding:6px}
figcaption{font-size:13px;color:#56606b;margin:2px 4px}
svg{max-width:100%;height:auto}
.note{color:#56606b;font-size:13px}
"""


def write_html(report: GateReport, path: str | Path) -> None:
    """Render the report and write the page atomically."""
    atomic_write_text(path, render_html(report))


def is_report_page(path: Path) -> bool:
    """True when `path` is a page `write_html` wrote, so rewriting it loses nothing the user made."""
    try:
        with path.open(encoding="utf-8", errors="replace") as page:
            return TITLE in page.read(4096)
    except OSError:
        return False


def render_html(report: GateReport) -> str:
    """The whole page for a format-2 report (one section per adapter)."""
    if report.report_format < 2:
        raise ReqcheckError(
            f"The report is of format {report.report_format} and holds no per-case records; regenerate "
            "it with pytest --reqcheck-report to render it as HTML."
        )
    verdict = _verdict(report.passed)
    head = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{TITLE}{numbers.verdict(report.passed)}</title><style>{STYLE}</style>"
        "</head><body>"
    )
    intro = (
        f"<h1>reqcheck gate report: {verdict}</h1>"
        f'<p class="meta">written {_e(report.created_at or "")} by reqcheck '
        f"{_e(report.reqcheck_version or '')} (report format {_num(report.report_format, 0)})</p>"
    )
    sections = [_adapter_section(entry, index) for index, entry in enumerate(report.adapters)]
    return head + intro + "".join(sections) + "</body></html>\n"


def _adapter_section(entry: AdapterEntry, index: int) -> str:
    from matplotlib import rc_context

    confidence = entry.confidence
    base = entry.base_model.get("name", "?")
    files = ", ".join(f"{_e(Path(d.path).name)} ({_num(d.n, 0)})" for d in entry.data)
    parts = [
        f"<section><h2>{_e(entry.name)}: {_verdict(entry.passed)}</h2>",
        f'<p class="meta">{_e(entry.adapter_type or "")} adapter on {_e(base)}, '
        f"content hash <code>{_e((entry.content_hash or '')[:23])}…</code>; cases from {files or 'no file'}</p>",
        f'<p class="meta">intervals: {confidence:.0%} (Wilson for rates; exact, paired by case, for '
        f"differences); gates decided on the {'lower bound' if entry.gate_on == 'bound' else 'point value'}"
        "</p>",
        f'<p class="meta">served by {_e(served_line(entry.served))}</p>' if entry.served else "",
        _hazard(entry.served),
        f'<p class="fail">{_e(partial_run(entry))}</p>' if entry.partial else "",
        "<h3>Gates</h3>",
        _gate_table(entry.gates),
        "<h3>Metrics</h3>",
        _metrics_table(entry.modes, confidence),
    ]
    figures = []
    with rc_context(_RC):
        for number, (caption, draw) in enumerate(_FIGURES):
            svg = draw(entry)
            if svg is not None:
                figures.append((caption, _svg(svg, f"reqcheck-{index}-{number}")))
    parts.append('<div class="plots">')
    parts += [f"<figure>{svg}<figcaption>{_e(caption)}</figcaption></figure>" for caption, svg in figures]
    parts.append("</div>")
    if not entry.training.history:
        parts.append(
            '<p class="note">No training curve: the adapter\'s manifest holds no per-epoch history.</p>'
        )
    parts.append(_misclassified(entry))
    parts.append(_regressions(entry.baseline))
    parts.append("</section>")
    return "".join(parts)


# tables


def _gate_table(gates: list[Gate]) -> str:
    if not gates:
        return '<p class="note">No gate was set.</p>'
    rows = []
    for gate in gates:
        name = gate.name + (f"[{gate.label}]" if gate.label else "")
        rows.append(
            "<tr>"
            f"<td>{_e(name)}</td><td>{_e(gate.mode)}</td>"
            f"<td class=num>{_e(op(gate.name, symbol=True))} {_num(gate.threshold)}</td>"
            f"<td class=num>{_num(gate.value)}</td>"
            f"<td class=num>{_interval(gate.interval)}</td>"
            f"<td class=num>{_pvalue(gate.p_value)}</td>"
            f"<td class=num>{_num(gate.n, 0, '')}</td>"
            f"<td>{_verdict(gate.passed)} <span class=note>on {_e(gate.on)}</span></td>"
            f"<td class=note>{_e(_resolution(gate))}</td>"
            "</tr>"
        )
    header = "<tr><th>gate</th><th>mode</th><th>threshold</th><th>value</th><th>interval</th><th>p</th>"
    header += "<th>cases</th><th>verdict</th><th>resolution</th></tr>"
    return f"<table>{header}{''.join(rows)}</table>"


def _resolution(gate: Gate) -> str:
    if gate.problem:
        return gate.problem
    if gate.resolved is None:
        return ""
    if gate.resolved:
        return "the interval leaves the threshold out"
    if gate.cases_needed is None:
        return "the interval holds the threshold; no number of cases would resolve it at this value"
    what = f"cases of {gate.label!r}" if gate.label else "cases"
    return f"the interval holds the threshold; about {gate.cases_needed:,} {what} would resolve it"


def _metrics_table(modes: dict[str, ModeSummary], confidence: float) -> str:
    header = (
        f"<tr><th>mode</th><th>cases</th><th>accuracy</th><th>{confidence:.0%} interval</th><th>macro-F1</th>"
        "<th>ECE</th><th>Brier</th><th>p50 ms</th><th>p95 ms</th><th>items/s</th><th>cached</th></tr>"
    )
    rows = []
    for mode, m in modes.items():
        calibration, latency = m.calibration or Calibration(), m.latency_ms or Latency()
        rows.append(
            f"<tr><td>{_e(mode)}</td><td class=num>{_num(m.n, 0)}</td><td class=num>{_num(m.accuracy)}</td>"
            f"<td class=num>{_interval(m.accuracy_interval)}</td><td class=num>{_num(m.macro_f1)}</td>"
            f"<td class=num>{_num(calibration.ece)}</td><td class=num>{_num(calibration.brier)}</td>"
            f"<td class=num>{_num(latency.p50, 1)}</td><td class=num>{_num(latency.p95, 1)}</td>"
            f"<td class=num>{_num(m.items_per_s, 1)}</td><td class=num>{_num(m.cached, 0)}</td></tr>"
        )
    return f"<table>{header}{''.join(rows)}</table>"


def _item_cell(case: CaseRecord | Change) -> str:
    if case.item is not None:
        return f"<td class=item>{_e(case.item)}</td>"
    return f"<td class=item><code>sha256:{_e(case.item_hash[:16])}…</code></td>"


def _where(case: CaseRecord | Change) -> str:
    return f"{_e(case.id)}<br><span class=note>{_e(case.file)}:{_num(case.line, 0)}</span>"


def _misclassified(entry: AdapterEntry) -> str:
    wrong = [c for c in entry.cases if "adapter" in c.modes and not c.right("adapter")]
    if not wrong:
        return (
            "<h3>Misclassified cases (adapter)</h3><p class=note>None: the adapter got every case right.</p>"
        )
    wrong.sort(key=lambda c: -c.modes["adapter"].probabilities.get(c.modes["adapter"].predicted, 0))
    rows = []
    for case in wrong:
        adapter = case.modes["adapter"]
        judge = case.modes.get("judge")
        probabilities = adapter.probabilities
        rows.append(
            f"<tr><td>{_where(case)}</td>{_item_cell(case)}<td>{_e(case.expected)}</td>"
            f"<td>{_e(adapter.predicted)}</td>"
            f"<td class=num>{_num(probabilities.get(adapter.predicted))}</td>"
            f"<td class=num>{_num(probabilities.get(case.expected))}</td>"
            f"<td>{_e(judge.predicted) if judge else '–'}</td></tr>"
        )
    header = (
        "<tr><th>case</th><th>item</th><th>expected</th><th>adapter said</th><th>p(said)</th>"
        "<th>p(expected)</th><th>judge said</th></tr>"
    )
    return (
        f"<h3>Misclassified cases (adapter): {len(wrong)}</h3>"
        "<p class=note>Most confident mistakes first.</p>"
        f"<table>{header}{''.join(rows)}</table>"
    )


def _regressions(baseline: BaselineComparison | None) -> str:
    if baseline is None:
        return ""
    title = f"<h3>Against the baseline {_e(Path(baseline.path).name)}</h3>"
    if baseline.problem is not None:
        return f"{title}<p class=note>{_e(baseline.problem)}</p>"
    parts = [
        title,
        f"<p class=note>{_num(baseline.shared, 0)} shared cases (matched by item hash and expected label); "
        f"{_num(baseline.baseline_only, 0)} only in the baseline, {_num(baseline.current_only, 0)} only in this "
        "run.</p>",
    ]
    header = (
        "<tr><th>case</th><th>item</th><th>expected</th><th>baseline said</th><th>p</th>"
        "<th>now says</th><th>p</th></tr>"
    )
    for changes, title in (
        (baseline.right_to_wrong, "Right before, wrong now"),
        (baseline.wrong_to_right, "Wrong before, right now"),
    ):
        parts.append(f"<h3>{title}: {len(changes)}</h3>")
        if not changes:
            continue
        rows = []
        for case in changes:
            was, now = case.baseline, case.current
            rows.append(
                f"<tr><td>{_where(case)}</td>{_item_cell(case)}<td>{_e(case.expected)}</td>"
                f"<td>{_e(was.predicted)}</td><td class=num>{_num(was.probabilities.get(was.predicted))}</td>"
                f"<td>{_e(now.predicted)}</td><td class=num>{_num(now.probabilities.get(now.predicted))}</td>"
                "</tr>"
            )
        parts.append(f"<table>{header}{''.join(rows)}</table>")
    return "".join(parts)


# plots

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
        axes.set_title(f"{mode}: accuracy {_num(metrics.accuracy)}")
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


# small formatters


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _num(value: Any, digits: int = 3, missing: str = "–") -> str:
    return numbers.number(value, digits, missing)


def _interval(interval: Any) -> str:
    return numbers.interval(interval, "–")


def _pvalue(value: Any) -> str:
    return numbers.p_value(value, "–")


def _verdict(passed: bool | None) -> str:
    css = {True: "pass", False: "fail"}.get(passed, "unset")
    return f'<span class="{css}">{numbers.verdict(passed)}</span>'


def _hazard(served: ServedRecord | None) -> str:
    line = on_by_default_line(served) if served is not None else None
    return f'<p class="fail">{_e(line)}</p>' if line else ""

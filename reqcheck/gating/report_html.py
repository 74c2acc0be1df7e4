"""The gate report as one self-contained HTML page: plots as inline SVG, no script, nothing fetched.

Rendered from the report (format 2) alone, so `reqcheck report REPORT.json --html PATH` needs no model,
and CI can keep the page as an artifact that opens offline. The plots come from `plots`, which alone
imports matplotlib, when a page is written. Every text that comes from data (items, ids, labels, paths) is HTML-escaped.
"""

from __future__ import annotations

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
from reqcheck.gating.explain import intervals_note, resolution
from reqcheck.gating.gates import op
from reqcheck.gating.plots import MATRIX_LABELS, figures
from reqcheck.gating.report_text import failed_lines, on_by_default_line, partial_run, served_line

TITLE = "<title>reqcheck gate report: "  # how `is_report_page` knows a page it wrote
TOP_CONFUSIONS = 20  # confusions listed per mode when the label set is too large for a matrix
MAX_ROWS = 200  # cases listed per table; the JSON report keeps every one
WIDE_PT = 560  # a plot wider than this (in points) spans the page's two columns
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
figure{margin:0;border:1px solid #e3e7ec;border-radius:4px;padding:6px}figure.wide{grid-column:1/-1}
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
    confidence = entry.confidence
    base = entry.base_model.get("name", "?")
    files = ", ".join(f"{_e(Path(d.path).name)} ({_num(d.n, 0)})" for d in entry.data)
    parts = [
        f"<section><h2>{_e(entry.name)}: {_verdict(entry.passed)}</h2>",
        f'<p class="meta">{_e(entry.adapter_type or "")} adapter on {_e(base)}, '
        f"content hash <code>{_e((entry.content_hash or '')[:23])}…</code>; cases from {files or 'no file'}</p>",
        f'<p class="meta">{_e(intervals_note(confidence, entry.gate_on))}</p>',
        f'<p class="meta">served by {_e(served_line(entry.served))}</p>' if entry.served else "",
        _hazard(entry.served),
        f'<p class="fail">{_e(partial_run(entry))}</p>' if entry.partial else "",
        "<h3>Gates</h3>",
        _gate_table(entry.gates),
        "<h3>Metrics</h3>",
        _metrics_table(entry.modes, confidence),
    ]
    parts.append('<div class="plots">')
    parts += [
        f"<figure{_wide(svg)}>{svg}<figcaption>{_e(caption)}</figcaption></figure>"
        for caption, svg in figures(entry, index)
    ]
    parts.append("</div>")
    parts.append(_top_confusions(entry))
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
            f"<td class=note>{_e(resolution(gate))}</td>"
            "</tr>"
        )
    header = "<tr><th>gate</th><th>mode</th><th>threshold</th><th>value</th><th>interval</th><th>p</th>"
    header += "<th>cases</th><th>verdict</th><th>resolution</th></tr>"
    return f"<table>{header}{''.join(rows)}</table>"


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


def _wide(svg: str) -> str:
    """A class that gives a plot wider than a grid column (a confusion matrix of many labels) a whole row."""
    match = re.search(r'<svg[^>]*\swidth="([\d.]+)pt"', svg[:1000])
    return ' class="wide"' if match and float(match.group(1)) > WIDE_PT else ""


def _top_confusions(entry: AdapterEntry) -> str:
    """Past MATRIX_LABELS labels (no legible matrix), each mode's most frequent confusions as a table."""
    if len(entry.labels) <= MATRIX_LABELS:
        return ""
    parts = [
        f"<h3>Most frequent confusions ({len(entry.labels)} labels: too many for a matrix)</h3>",
        "<p class=note>Share: of the cases of the expected label.</p>",
    ]
    header = "<tr><th>expected</th><th>predicted</th><th>cases</th><th>share</th></tr>"
    for mode, metrics in entry.modes.items():
        confusion = metrics.confusion
        if confusion is None:
            continue
        cells = [
            (count, i, j)
            for i, row in enumerate(confusion.matrix)
            for j, count in enumerate(row)
            if i != j and count
        ]
        cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
        rows = [
            f"<tr><td>{_e(confusion.labels[i])}</td><td>{_e(confusion.labels[j])}</td><td class=num>{count}</td>"
            f"<td class=num>{_num(count / sum(confusion.matrix[i]))}</td></tr>"
            for count, i, j in cells[:TOP_CONFUSIONS]
        ]
        body = f"<table>{header}{''.join(rows)}</table>" if rows else "<p class=note>None.</p>"
        parts.append(f"<p><b>{_e(mode)}</b>: {len(cells)} distinct confusions</p>{body}")
    return "".join(parts)


def _shown(rows: list[str], total: int) -> str:
    """A note when a table lists only the first MAX_ROWS of its cases."""
    if total <= len(rows):
        return ""
    return f"<p class=note>The first {len(rows)} of {total}; the JSON report holds every case.</p>"


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
    for case in wrong[:MAX_ROWS]:
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
        f"<table>{header}{''.join(rows)}</table>{_shown(rows, len(wrong))}"
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
        for case in changes[:MAX_ROWS]:
            was, now = case.baseline, case.current
            rows.append(
                f"<tr><td>{_where(case)}</td>{_item_cell(case)}<td>{_e(case.expected)}</td>"
                f"<td>{_e(was.predicted)}</td><td class=num>{_num(was.probabilities.get(was.predicted))}</td>"
                f"<td>{_e(now.predicted)}</td><td class=num>{_num(now.probabilities.get(now.predicted))}</td>"
                "</tr>"
            )
        parts.append(f"<table>{header}{''.join(rows)}</table>{_shown(rows, len(changes))}")
    return "".join(parts)


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
    if served is None:
        return ""
    hazard = on_by_default_line(served)
    lines = ([hazard] if hazard else []) + failed_lines(served)
    return "".join(f'<p class="fail">{_e(line)}</p>' for line in lines)

"""The gate report as text: the terminal summary of the pytest plugin and the Markdown of a CI step summary.

Both are rendered from the report (format 2) alone. Item text in Markdown is escaped (HTML and
Markdown punctuation), so an item holding `<script>` or a link shows as the text it is.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import Any

TERMINAL_REGRESSIONS = 10  # the terminal lists this many of each kind; the report and HTML list all
ITEM_CHARS = 80


def terminal_lines(entry: dict[str, Any]) -> list[str]:
    """One adapter's block of the pytest terminal summary."""
    confidence = entry.get("confidence", 0.95)
    lines = [f"{entry['name']} ({entry['adapter_type']}, {entry['content_hash'][:19]}...)"]
    header = ("mode", "cases", "accuracy", f"{confidence:.0%} interval", "macro-F1", "ECE", "Brier", "p50 ms",
              "p95 ms", "items/s", "cached")  # fmt: skip
    widths = (8, 6, 8, 16, 8, 6, 6, 7, 7, 7, 6)
    lines.append("  " + " ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for mode, m in entry["modes"].items():
        calibration = m.get("calibration") or {}
        cells = (
            mode,
            m["n"],
            f"{m['accuracy']:.3f}",
            _interval(m.get("accuracy_interval")),
            f"{m['macro_f1']:.3f}",
            _num(calibration.get("ece")),
            _num(calibration.get("brier")),
            f"{m['latency_ms']['p50']:.1f}",
            f"{m['latency_ms']['p95']:.1f}",
            f"{m['items_per_s']:.1f}" if m.get("items_per_s") else "-",
            m.get("cached", 0),
        )
        lines.append("  " + " ".join(f"{c!s:>{w}}" for c, w in zip(cells, widths, strict=True)))
    for mode, m in entry["modes"].items():
        recalls = [
            f"{label} {s['recall']:.3f} {_interval(s.get('recall_interval'))} ({s['support']})"
            for label, s in m["per_label"].items()
            if s["support"]
        ]
        lines.append(f"  recall ({mode}): " + ", ".join(recalls))
    lines += [f"  {gate_line(gate)}" for gate in entry.get("gates") or []]
    lines += _baseline_lines(entry.get("baseline"))
    return lines


def gate_line(gate: dict[str, Any]) -> str:
    """`gate NAME[LABEL]: VALUE [LOW, HIGH] p=P >= THRESHOLD -> VERDICT (on point); ...`."""
    label = f"[{gate['label']}]" if gate.get("label") else ""
    value = "-" if gate.get("value") is None else f"{gate['value']:.3f}"
    interval = f" {_interval(gate['interval'])}" if gate.get("interval") else ""
    p_value = (
        f" p{'' if gate['p_value'] < 0.001 else '='}{_p(gate['p_value'])}"
        if gate.get("p_value") is not None
        else ""
    )
    op = "<=" if gate["name"] == "max_drop" else ">="
    verdict = {True: "PASS", False: "FAIL"}.get(gate.get("passed"), "not run")
    if gate.get("problem"):
        return f"gate {gate['name']}{label}: FAIL: {gate['problem']}"
    line = f"gate {gate['name']}{label}: {value}{interval}{p_value} {op} {gate['threshold']} -> {verdict}"
    line += f" (on {'the lower bound' if gate.get('on') == 'bound' else 'the point value'})"
    if gate.get("resolved") is False:
        needed = gate.get("cases_needed")
        what = f"cases of {gate['label']!r}" if gate.get("label") else "cases"
        line += f"; the interval holds {gate['threshold']}: " + (
            f"about {needed:,} {what} would resolve it" if needed else "no number of cases resolves it"
        )
    return line


def _baseline_lines(baseline: dict[str, Any] | None) -> list[str]:
    if baseline is None:
        return []
    name = Path(baseline["path"]).name
    if "problem" in baseline:
        return [f"  baseline: {baseline['problem']}"]
    lines = [
        f"  baseline {name}: {baseline['shared']} shared cases; {len(baseline['right_to_wrong'])} right->wrong, "
        f"{len(baseline['wrong_to_right'])} wrong->right"
    ]
    for key, arrow in (("right_to_wrong", "right->wrong"), ("wrong_to_right", "wrong->right")):
        changes = baseline[key]
        for change in changes[:TERMINAL_REGRESSIONS]:
            lines.append(f"    {arrow} {_change(change)}")
        if len(changes) > TERMINAL_REGRESSIONS:
            lines.append(f"    ... and {len(changes) - TERMINAL_REGRESSIONS} more {arrow} in the report")
    return lines


def _change(change: dict[str, Any]) -> str:
    was, now = change["baseline"], change["current"]
    item = change.get("item")
    text = (
        repr(item if len(item) <= ITEM_CHARS else item[: ITEM_CHARS - 1] + "…")
        if item
        else change["item_hash"][:16]
    )
    return (
        f"{change['id']} ({change['file']}:{change['line']}) expected {change['expected']!r}: now "
        f"{now['predicted']!r} (p={now['probabilities'][now['predicted']]:.2f}), was {was['predicted']!r} "
        f"(p={was['probabilities'][was['predicted']]:.2f}): {text}"
    )


def markdown(report: dict[str, Any]) -> str:
    """The GitHub step summary: verdict, the metrics and gate tables with intervals, the regressions."""
    verdict = {True: "PASS", False: "FAIL"}.get(report.get("passed"), "NOT RUN")
    parts = [f"## reqcheck gate: {verdict}", ""]
    for entry in report.get("adapters") or []:
        confidence = entry.get("confidence", 0.95)
        entry_verdict = {True: "PASS", False: "FAIL"}.get(entry.get("passed"), "NOT RUN")
        parts += [f"### {_md(entry['name'])}: {entry_verdict}", ""]
        parts += [
            f"| mode | cases | accuracy | {confidence:.0%} interval | macro-F1 | ECE | Brier |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, m in entry["modes"].items():
            calibration = m.get("calibration") or {}
            parts.append(
                f"| {mode} | {m['n']} | {m['accuracy']:.3f} | {_interval(m.get('accuracy_interval'))} | "
                f"{m['macro_f1']:.3f} | {_num(calibration.get('ece'))} | {_num(calibration.get('brier'))} |"
            )
        gates = entry.get("gates") or []
        if gates:
            parts += [
                "",
                f"| gate | threshold | value | {confidence:.0%} interval | p | verdict |",
                "|---|---:|---:|---:|---:|---|",
            ]
            for gate in gates:
                name = gate["name"] + (f"[{_md(gate['label'])}]" if gate.get("label") else "")
                op = "≤" if gate["name"] == "max_drop" else "≥"
                verdict = {True: "PASS", False: "FAIL"}.get(gate.get("passed"), "not run")
                note = f": {_md(gate['problem'])}" if gate.get("problem") else ""
                if gate.get("resolved") is False:
                    needed = gate.get("cases_needed")
                    note = (
                        f" (unresolved: about {needed:,} cases would resolve it)"
                        if needed
                        else " (unresolved)"
                    )
                parts.append(
                    f"| {name} | {op} {gate['threshold']} | {_num(gate.get('value'))} | "
                    f"{_interval(gate.get('interval'))} | {_p(gate.get('p_value'))} | "
                    f"{verdict} on {gate.get('on', 'point')}{note} |"
                )
        parts += _markdown_baseline(entry.get("baseline"))
        parts.append("")
    return "\n".join(parts) + "\n"


def _markdown_baseline(baseline: dict[str, Any] | None) -> list[str]:
    if baseline is None:
        return []
    name = _md(Path(baseline["path"]).name)
    if "problem" in baseline:
        return ["", f"Baseline: {_md(baseline['problem'])}"]
    parts = [
        "",
        f"**Against the baseline {name}** ({baseline['shared']} shared cases): "
        f"{len(baseline['right_to_wrong'])} right → wrong, {len(baseline['wrong_to_right'])} wrong → right",
    ]
    changes = [("right → wrong", c) for c in baseline["right_to_wrong"]]
    changes += [("wrong → right", c) for c in baseline["wrong_to_right"]]
    if changes:
        parts += ["", "| change | case | item | expected | baseline | now |", "|---|---|---|---|---|---|"]
        for kind, change in changes:
            item = _md(change["item"]) if "item" in change else f"sha256:{change['item_hash'][:16]}…"
            was, now = change["baseline"]["predicted"], change["current"]["predicted"]
            parts.append(
                f"| {kind} | {_md(change['id'])} ({_md(change['file'])}:{change['line']}) | {item} | "
                f"{_md(change['expected'])} | {_md(was)} | {_md(now)} |"
            )
    return parts


_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]|~])")  # what can start emphasis, code, a link or end a cell


def _md(text: Any) -> str:
    """Data as inert Markdown table text: one line, inline Markdown backslash-escaped, then HTML-escaped."""
    flat = " ".join(str(text).split())
    return escape(_MARKDOWN_INLINE.sub(r"\\\1", flat), quote=True)


def _interval(interval: list[float] | None) -> str:
    return "-" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}" if value >= 0.001 else "<0.001"

"""The gate report as text: the terminal summary of the pytest plugin and the Markdown of a CI step summary.

Both are rendered from the report alone. Item text in Markdown is escaped (HTML and Markdown
punctuation), so an item holding `<script>` or a link shows as the text it is.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path
from typing import Any

from reqcheck.formats.gate_report import (
    AdapterEntry,
    BaselineComparison,
    Change,
    Gate,
    GateReport,
    ServedRecord,
)
from reqcheck.gating.cases import shorten
from reqcheck.gating.explain import cases_to_resolve, decided_on, resolution
from reqcheck.gating.gates import op
from reqcheck.gating.numbers import interval, number, p_value, verdict

TERMINAL_REGRESSIONS = 10  # the terminal lists this many of each kind; the report and HTML list all
ITEM_CHARS = 80


def served_line(served: ServedRecord) -> str:
    """Which server a served run used, as one line: engine, version, endpoint, model (and its hash)."""
    model = served.model or "?"
    if served.model_hash:
        model += f", hash {served.model_hash}"
    version = f" {served.engine_version}" if served.engine_version else ""
    compared = "; every case also ran in process (mode local)" if served.compared else ""
    where = served.endpoint
    if len(served.replicas) > 1:
        where = f"{len(served.replicas)} replicas ({', '.join(served.replicas)})"
    return f"{served.engine}{version} at {where} (model {model}){compared}"


def failed_lines(served: ServedRecord) -> list[str]:
    """One line per replica that stopped answering during the run: which, why, and where its cases went."""
    return [
        f"{url} stopped answering during the run, so its unfinished cases went to the other replicas: {reason}"
        for url, reason in served.failed.items()
    ]


def on_by_default_line(served: ServedRecord) -> str | None:
    """The hazard of a server whose adapters answer requests that name none, in one line; None if none do."""
    if not served.on_by_default:
        return None
    names = ", ".join(served.on_by_default)
    return (
        f"every request to {served.endpoint} that names no adapter gets {names} (global scale not 0); set the "
        "scale to 0 with POST /lora-adapters, or serve with reqcheck serve"
    )


def one_at_a_time_line(entry: AdapterEntry) -> str | None:
    """How to check an aLoRA faster where the server made its checks go one at a time; None elsewhere."""
    served = entry.served
    if served is None or entry.adapter_type != "alora" or not served.slots or served.slots == 1:
        return None
    return (
        f"{served.endpoint} has {served.slots} slots, so its aLoRA checks went one at a time (llama.cpp "
        "misapplies an aLoRA in a shared batch); serve one-slot replicas (reqcheck serve) to check concurrently"
    )


def terminal_lines(entry: AdapterEntry) -> list[str]:
    """One adapter's block of the pytest terminal summary."""
    lines = [f"{entry.name} ({entry.adapter_type}, {(entry.content_hash or '')[:19]}...)"]
    if entry.served is not None:
        lines.append(f"  served: {served_line(entry.served)}")
        hazard = on_by_default_line(entry.served)
        if hazard:
            lines.append(f"  warning: {hazard}")
        lines += [f"  warning: {line}" for line in failed_lines(entry.served)]
        slower = one_at_a_time_line(entry)
        if slower:
            lines.append(f"  note: {slower}")
    header = ("mode", "cases", "accuracy", f"{entry.confidence:.0%} interval", "macro-F1", "ECE", "Brier",
              "p50 ms", "p95 ms", "items/s", "cached")  # fmt: skip
    widths = (8, 6, 8, 16, 8, 6, 6, 7, 7, 7, 6)
    lines.append("  " + " ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for mode, m in entry.modes.items():
        calibration, latency = m.calibration, m.latency_ms
        cells = (
            mode,
            m.n,
            number(m.accuracy),
            interval(m.accuracy_interval),
            number(m.macro_f1),
            number(calibration and calibration.ece),
            number(calibration and calibration.brier),
            number(latency and latency.p50, 1),
            number(latency and latency.p95, 1),
            number(m.items_per_s or None, 1),
            m.cached,
        )
        lines.append("  " + " ".join(f"{c!s:>{w}}" for c, w in zip(cells, widths, strict=True)))
    for mode, m in entry.modes.items():
        recalls = [
            f"{label} {number(s.recall)} {interval(s.recall_interval)} ({s.support})"
            for label, s in m.per_label.items()
            if s.support
        ]
        lines.append(f"  recall ({mode}): " + ", ".join(recalls))
    if entry.partial:
        lines.append(f"  {partial_run(entry)}")
    lines += [f"  {gate_line(gate)}" for gate in entry.gates]
    lines += _baseline_lines(entry.baseline)
    return lines


def partial_run(entry: AdapterEntry) -> str:
    """What a narrowed run (-k, -x, a node id) means for its gates."""
    return (
        f"partial run: {entry.ran} of {entry.collected} collected cases ran, so the gates saw only those; "
        "reqcheck upload refuses this report unless given --allow-partial-gate"
    )


def gate_line(gate: Gate) -> str:
    """`gate NAME[LABEL]: VALUE [LOW, HIGH] p=P >= THRESHOLD -> VERDICT (on point); ...`."""
    label = f"[{gate.label}]" if gate.label else ""
    if gate.problem:
        return f"gate {gate.name}{label}: FAIL: {gate.problem}"
    shown = f" {interval(gate.interval)}" if gate.interval else ""
    p = "" if gate.p_value is None else f" p{'' if gate.p_value < 0.001 else '='}{p_value(gate.p_value)}"
    line = (
        f"gate {gate.name}{label}: {number(gate.value)}{shown}{p} {op(gate.name)} {gate.threshold} "
        f"-> {verdict(gate.passed)} (on {decided_on(gate.on)})"
    )
    if gate.resolved is False:
        line += f"; {resolution(gate)}"
    return line


def _baseline_lines(baseline: BaselineComparison | None) -> list[str]:
    if baseline is None:
        return []
    if baseline.problem is not None:
        return [f"  baseline: {baseline.problem}"]
    lines = [
        f"  baseline {Path(baseline.path).name}: {baseline.shared} shared cases; "
        f"{len(baseline.right_to_wrong)} right->wrong, {len(baseline.wrong_to_right)} wrong->right"
    ]
    for changes, arrow in (
        (baseline.right_to_wrong, "right->wrong"),
        (baseline.wrong_to_right, "wrong->right"),
    ):
        for change in changes[:TERMINAL_REGRESSIONS]:
            lines.append(f"    {arrow} {_change(change)}")
        if len(changes) > TERMINAL_REGRESSIONS:
            lines.append(f"    ... and {len(changes) - TERMINAL_REGRESSIONS} more {arrow} in the report")
    return lines


def _change(change: Change) -> str:
    was, now, item = change.baseline, change.current, change.item
    text = repr(shorten(item, ITEM_CHARS)) if item else change.item_hash[:16]
    return (
        f"{change.id} ({change.file}:{change.line}) expected {change.expected!r}: now "
        f"{now.predicted!r} (p={now.probabilities.get(now.predicted, 0.0):.2f}), was {was.predicted!r} "
        f"(p={was.probabilities.get(was.predicted, 0.0):.2f}): {text}"
    )


def markdown(report: GateReport) -> str:
    """The GitHub step summary: verdict, the metrics and gate tables with intervals, the regressions."""
    parts = [f"## reqcheck gate: {verdict(report.passed)}", ""]
    for entry in report.adapters:
        confidence = entry.confidence
        parts += [f"### {md(entry.name)}: {verdict(entry.passed)}", ""]
        parts += [
            f"| mode | cases | accuracy | {confidence:.0%} interval | macro-F1 | ECE | Brier |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for mode, m in entry.modes.items():
            calibration = m.calibration
            parts.append(
                f"| {mode} | {m.n} | {number(m.accuracy)} | {interval(m.accuracy_interval)} | "
                f"{number(m.macro_f1)} | {number(calibration and calibration.ece)} | "
                f"{number(calibration and calibration.brier)} |"
            )
        if entry.gates:
            parts += [
                "",
                f"| gate | threshold | value | {confidence:.0%} interval | p | verdict |",
                "|---|---:|---:|---:|---:|---|",
            ]
            parts += [_markdown_gate(gate) for gate in entry.gates]
        parts += _markdown_baseline(entry.baseline)
        parts.append("")
    return "\n".join(parts) + "\n"


def _markdown_gate(gate: Gate) -> str:
    name = gate.name + (f"[{md(gate.label)}]" if gate.label else "")
    note = f": {md(gate.problem)}" if gate.problem else ""
    if gate.resolved is False:
        note = f" (unresolved: {cases_to_resolve(gate)})"
    return (
        f"| {name} | {op(gate.name, symbol=True)} {gate.threshold} | {number(gate.value)} | "
        f"{interval(gate.interval)} | {p_value(gate.p_value)} | {verdict(gate.passed)} on {gate.on}{note} |"
    )


def _markdown_baseline(baseline: BaselineComparison | None) -> list[str]:
    if baseline is None:
        return []
    if baseline.problem is not None:
        return ["", f"Baseline: {md(baseline.problem)}"]
    parts = [
        "",
        f"**Against the baseline {md(Path(baseline.path).name)}** ({baseline.shared} shared cases): "
        f"{len(baseline.right_to_wrong)} right → wrong, {len(baseline.wrong_to_right)} wrong → right",
    ]
    changes = [("right → wrong", c) for c in baseline.right_to_wrong]
    changes += [("wrong → right", c) for c in baseline.wrong_to_right]
    if changes:
        parts += ["", "| change | case | item | expected | baseline | now |", "|---|---|---|---|---|---|"]
        for kind, change in changes:
            item = md(change.item) if change.item is not None else f"sha256:{change.item_hash[:16]}…"
            parts.append(
                f"| {kind} | {md(change.id)} ({md(change.file)}:{change.line}) | {item} | "
                f"{md(change.expected)} | {md(change.baseline.predicted)} | {md(change.current.predicted)} |"
            )
    return parts


_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]|~])")  # what can start emphasis, code, a link or end a cell


def md(text: Any) -> str:
    """Data as inert Markdown table text: one line, inline Markdown backslash-escaped, then HTML-escaped."""
    flat = " ".join(str(text).split())
    return escape(_MARKDOWN_INLINE.sub(r"\\\1", flat), quote=True)

"""The sentences that explain a gate's result, each written once.

The terminal summary, the Markdown step summary, the HTML page and the plugin's failure message all
call these, so they say the same thing in the same words; only the framing (a table cell, a line, a
test failure) is theirs.
"""

from __future__ import annotations

from reqcheck.formats.gate_report import Gate
from reqcheck.gating.gates import op


def decided_on(gate_on: str | None) -> str:
    """What verdicts are decided on: `the lower bound` (of each interval) or `the point value`."""
    return "the lower bound" if gate_on == "bound" else "the point value"


def intervals_note(confidence: float, gate_on: str | None) -> str:
    """How a report's intervals are drawn and what its gates are decided on, as one line."""
    return (
        f"intervals: {confidence:.0%} (Wilson for rates; exact McNemar, paired by case, for gain and drop); "
        f"gates decided on {decided_on(gate_on)}"
    )


def cases_to_resolve(gate: Gate) -> str:
    """How many cases (at the rates observed) would put the threshold outside an unresolved gate's interval."""
    if not gate.cases_needed:
        return "no number of cases would resolve it at this value"
    what = f"cases of {gate.label!r}" if gate.label else "cases"
    return f"about {gate.cases_needed:,} {what} would resolve it"


def resolution(gate: Gate) -> str:
    """Why a gate's verdict could still change, or why it could not be evaluated; empty when neither applies."""
    if gate.problem:
        return gate.problem
    if gate.resolved is None:
        return ""
    if gate.resolved:
        return "the interval leaves the threshold out"
    return f"the interval holds {gate.threshold}: {cases_to_resolve(gate)}"


def shortfall(gate: Gate) -> str:
    """Why a gate failed, in the terms it was decided on."""
    comparison = op(gate.name)
    if gate.on == "point" or gate.interval is None:
        return f"{gate.value:.3f} is not {comparison} {gate.threshold}"
    low, high = gate.interval
    p_value = f", p={gate.p_value:.2g}" if gate.p_value is not None else ""
    return (
        f"the lower bound {low:.3f} of its interval [{low:.3f}, {high:.3f}] is not {comparison} "
        f"{gate.threshold} (value {gate.value:.3f}{p_value})"
    )

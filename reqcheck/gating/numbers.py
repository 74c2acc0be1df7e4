"""How reports write numbers: one format each for a value, an interval, a p-value and a verdict.

`missing` is what stands for an absent number: `-` in plain text, `–` on pages.
"""

from __future__ import annotations

from typing import Any


def number(value: Any, digits: int = 3, missing: str = "-") -> str:
    """A value rounded to `digits` places; `missing` for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return missing
    return f"{value:.{digits}f}"


def interval(pair: Any, missing: str = "-") -> str:
    """`[low, high]` with three places."""
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return missing
    return f"[{number(pair[0])}, {number(pair[1])}]"


def p_value(value: Any, missing: str = "-") -> str:
    """Two significant digits, and `<0.001` below that."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return missing
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL"}.get(passed, "NOT RUN")

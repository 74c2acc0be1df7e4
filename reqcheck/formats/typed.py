"""JSON checked against the type hints of a dataclass record, all the way down, for the files users edit.

`build(kind, value, where)` returns `value` as `kind` or raises `Mismatch` naming the first field (by its
path, such as `adapters[0].modes.adapter.n`) that is not of its declared type, so a hand-edited or
damaged file ends in one sentence, never in a traceback further on. Unknown keys are left out.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, fields
from typing import Any


class Mismatch(Exception):
    """A field that is not of the type its record declares; the message names it by its path."""


def build(kind: Any, value: Any, where: str) -> Any:
    """`value` (JSON) as `kind` (a record, list, dict, union or scalar type), checked all the way down."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return build(inner, value, where)
    if kind is Any:
        return value
    if origin is list:
        _expect(isinstance(value, list), where, "a list")
        return [build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _expect(isinstance(value, dict), where, "an object")
        return {k: build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(kind, type) and hasattr(kind, "__dataclass_fields__"):
        return _record(kind, value, where)
    return _scalar(kind, value, where)


def _record(kind: type, value: Any, where: str) -> Any:
    _expect(isinstance(value, dict), where or "the whole file", "an object")
    hints = typing.get_type_hints(kind)
    found = {}
    for f in fields(kind):
        path = f"{where}.{f.name}" if where else f.name
        if f.name in value:
            found[f.name] = build(hints[f.name], value[f.name], path)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise Mismatch(f"{path} is missing")
    return kind(**found)


def _scalar(kind: type, value: Any, where: str) -> Any:
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        _expect(ok, where, "a finite number")
        return float(value)
    if kind is int:
        _expect(isinstance(value, int) and not isinstance(value, bool), where, "a whole number")
        return value
    _expect(isinstance(value, kind), where, {str: "a string", bool: "true or false"}.get(kind, kind.__name__))
    return value


def _expect(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise Mismatch(f"{where} is not {what}")

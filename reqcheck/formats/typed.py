"""JSON checked against the type hints of a dataclass record, all the way down, for the files users edit.

`build(kind, value, where)` returns `value` as `kind` or raises `Mismatch` naming the first field (by its
path, such as `adapters[0].modes.adapter.n`) that is not of its declared type, so a hand-edited or
damaged file ends in one sentence, never in a traceback further on. Unknown keys are left out.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any


def build(kind: Any, value: Any, where: str) -> Any:
    """`value` (JSON) as `kind` (a record, list, dict, union or scalar type), checked all the way down.

    `where` is the path of `value` in its file (empty for the whole file), for the message.
    """
    try:
        return _converter(kind)(value)
    except Mismatch as exc:
        raise exc.within(where) if where else exc from None


class Mismatch(Exception):
    """A field that is not of the type its record declares; the message names it by its path.

    `path` is filled in on the way out, by each container the field sits in, so a report that reads
    cleanly builds no path strings.
    """

    def __init__(self, what: str, path: str = "") -> None:
        super().__init__(what)
        self.what, self.path = what, path

    def within(self, segment: str) -> Mismatch:
        joined = segment + ("" if not self.path or self.path.startswith("[") else ".") + self.path
        return Mismatch(self.what, joined)

    def __str__(self) -> str:
        return f"{self.path or 'the whole file'} {self.what}"


@functools.cache
def _converter(kind: Any) -> Callable[[Any], Any]:
    """A function that checks and converts a JSON value to `kind`, built once per type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        convert = _converter(inner)
        return lambda value: None if value is None else convert(value)
    if kind is Any:
        return lambda value: value
    if origin is list:
        return _list_converter(_converter(args[0]))
    if origin is dict:
        return _dict_converter(_converter(args[1]))
    if isinstance(kind, type) and hasattr(kind, "__dataclass_fields__"):
        return _record_converter(kind)
    return _scalar_converter(kind)


def _list_converter(item: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> list[Any]:
        _expect(isinstance(value, list), "a list")
        out = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except Mismatch as exc:
                raise exc.within(f"[{index}]") from None
        return out

    return convert


def _dict_converter(item: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def convert(value: Any) -> dict[str, Any]:
        _expect(isinstance(value, dict), "an object")
        out = {}
        for key, element in value.items():
            try:
                out[key] = item(element)
            except Mismatch as exc:
                raise exc.within(str(key)) from None
        return out

    return convert


def _record_converter(kind: type) -> Callable[[Any], Any]:
    hints = typing.get_type_hints(kind)
    slots = [
        (f.name, _converter(hints[f.name]), f.default is MISSING and f.default_factory is MISSING)
        for f in fields(kind)
    ]

    def convert(value: Any) -> Any:
        _expect(isinstance(value, dict), "an object")
        found = {}
        for name, field_converter, required in slots:
            if name in value:
                try:
                    found[name] = field_converter(value[name])
                except Mismatch as exc:
                    raise exc.within(name) from None
            elif required:
                raise Mismatch("is missing", name)
        return kind(**found)

    return convert


def _scalar_converter(kind: type) -> Callable[[Any], Any]:
    if kind is float:

        def number(value: Any) -> float:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            _expect(ok, "a finite number")
            return float(value)

        return number
    if kind is int:

        def whole(value: Any) -> int:
            _expect(isinstance(value, int) and not isinstance(value, bool), "a whole number")
            return value

        return whole
    what = {str: "a string", bool: "true or false"}.get(kind, kind.__name__)

    def plain(value: Any) -> Any:
        _expect(isinstance(value, kind), what)
        return value

    return plain


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise Mismatch(f"is not {what}")

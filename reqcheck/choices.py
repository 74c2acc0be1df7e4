"""Closed sets of string values that several layers share: the adapter type a manifest records, the device
a model is loaded on. Kept below every sub-package so that model loading and checking need not import
the training options."""

from __future__ import annotations

from enum import Enum
from typing import Any

from reqcheck.errors import ReqcheckError


class Choice(str, Enum):
    """A closed set of string values: compares, hashes, prints and serialises as its value."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: Any, name: str) -> Choice:
        """`value` as a member, or one sentence naming `name` and the accepted values."""
        try:
            return cls(value)
        except ValueError:
            values = [member.value for member in cls]
            accepted = f"{', '.join(values[:-1])} or {values[-1]}"
            raise ReqcheckError(f"Unknown {name} {value!r}; use {accepted}.") from None


class AdapterType(Choice):
    alora = "alora"
    lora = "lora"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"

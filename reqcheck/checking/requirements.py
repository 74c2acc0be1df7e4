"""Requirements and the result of checking one (names follow Mellea's API)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of one requirement check.

    `score` is the probability mass on the adapter's positive label(s); `via` says who decided
    (`adapter:<name>`, `judge` or `function`) and `reason` why that route was taken.
    """

    passed: bool
    score: float
    label: str
    probabilities: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    via: str = ""
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.passed

    def as_intrinsic_output(self) -> dict[str, dict[str, float]]:
        """The output an intrinsic returns: `{"requirement_check": {"score": ...}}`."""
        return {"requirement_check": {"score": self.score}}


ValidationFn = Callable[[str], "bool | ValidationResult"]


@dataclass(frozen=True)
class Requirement:
    """A requirement on an output, checked by an adapter, the judge, or a Python function.

    `check_only` requirements are validated but not shown to the generator in `Session.instruct`.
    """

    description: str
    validation_fn: ValidationFn | None = None
    check_only: bool = False


@dataclass(frozen=True)
class ALoraRequirement(Requirement):
    """A requirement that is always checked by the named adapter, whatever the backend's switch says."""

    intrinsic_name: str = ""


@dataclass(frozen=True)
class LLMaJRequirement(Requirement):
    """A requirement that is always checked by the base model as judge."""


def req(description: str, validation_fn: ValidationFn | None = None) -> Requirement:
    """A requirement that the generator is told about and that is validated afterwards."""
    return Requirement(description, validation_fn=validation_fn)


def check(description: str, validation_fn: ValidationFn | None = None) -> Requirement:
    """A check-only requirement: validated, but not shown to the generator."""
    return Requirement(description, validation_fn=validation_fn, check_only=True)


def same_requirement(a: str | None, b: str | None) -> bool:
    """Requirement texts name the same requirement when they differ only in case, spacing or a final period."""

    def normal(text: str | None) -> str:
        return " ".join((text or "").lower().split()).rstrip(".")

    return bool(normal(a)) and normal(a) == normal(b)

"""Routing and batching shared by every backend: which checker serves a requirement, and its result.

`Checker` holds the registered adapters and the validation switch, decides each requirement's route
(`route`, which the pytest plugin calls too) and runs `check`/`check_batch`; a backend only says how it
scores a group of contexts with an adapter or with the base-model judge (`_scores`). `LocalHFBackend`
scores in process, `RemoteBackend` through a server, and both route and report alike. Torch-free, so a
served checker needs no local model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reqcheck.checking.adapters import ResolvedAdapter
from reqcheck.checking.requirements import (
    ALoraRequirement,
    LLMaJRequirement,
    Requirement,
    ValidationResult,
    same_requirement,
)
from reqcheck.errors import ReqcheckError
from reqcheck.formats.prompting import Messages, as_messages

Context = str | Messages
JUDGE_LABELS = ["yes", "no"]


@dataclass(frozen=True)
class Route:
    """Where a requirement is checked and which rule decided it."""

    via: str
    adapter: str | None
    reason: str


class Checker:
    """Registered adapters, the validation switch, routing and batched checks; subclasses score.

    `default_to_constraint_checking_alora = False` sends every requirement (except an
    `ALoraRequirement`) to the base-model judge: validation through adapters off.
    """

    def __init__(self, adapters: dict[str, ResolvedAdapter] | None = None) -> None:
        """A checker of `adapters` with validation through them on; a bare one routes without scoring."""
        self.adapters: dict[str, ResolvedAdapter] = dict(adapters or {})
        self.default_to_constraint_checking_alora = True

    def route(self, requirement: Requirement) -> Route:
        """Which checker serves `requirement`, by the first rule that applies:

        1. a `validation_fn` runs as Python; 2. `LLMaJRequirement` goes to the judge; 3. `ALoraRequirement`
        goes to its named adapter (an error if it is not registered); 4. with the switch off, the judge;
        5. the adapter trained for this requirement text; 6. the only registered adapter; 7. the judge.
        """
        if requirement.validation_fn is not None:
            return Route("function", None, "the requirement has a validation_fn")
        if isinstance(requirement, LLMaJRequirement):
            return Route("judge", None, "an LLMaJRequirement always uses the base-model judge")
        if isinstance(requirement, ALoraRequirement):
            if requirement.intrinsic_name not in self.adapters:
                known = ", ".join(sorted(self.adapters)) or "none"
                raise ReqcheckError(
                    f"ALoraRequirement names adapter {requirement.intrinsic_name!r}, which is not registered "
                    f"(registered: {known}); add it with backend.add_adapter(CustomIntrinsicAdapter(...))."
                )
            return Route(
                "adapter", requirement.intrinsic_name, "an ALoraRequirement always uses its named adapter"
            )
        if not self.default_to_constraint_checking_alora:
            return Route("judge", None, "default_to_constraint_checking_alora is False")
        for name, adapter in self.adapters.items():
            if same_requirement(adapter.manifest.requirement, requirement.description):
                return Route("adapter", name, f"adapter {name!r} was trained for this requirement")
        if len(self.adapters) == 1:
            name = next(iter(self.adapters))
            return Route("adapter", name, f"{name!r} is the only registered adapter")
        if self.adapters:
            return Route("judge", None, "no registered adapter was trained for this requirement")
        return Route("judge", None, "no adapter is registered")

    def check(self, requirement: Requirement, context: Context) -> ValidationResult:
        """Check one requirement on one context (an output text, or a conversation whose last turn is checked)."""
        return self.check_batch([requirement], [context])[0]

    def check_batch(
        self, requirements: Sequence[Requirement], contexts: Sequence[Context]
    ) -> list[ValidationResult]:
        """Check requirement i on context i, scoring each route's group of checks together."""
        if len(requirements) != len(contexts):
            raise ReqcheckError("check_batch needs one context per requirement; pass lists of equal length.")
        for requirement, context in zip(requirements, contexts, strict=True):
            if not isinstance(requirement, Requirement):
                raise ReqcheckError(
                    f"A requirement is a {type(requirement).__name__}, not a Requirement; wrap its text "
                    "in req('...') or check('...')."
                )
            as_messages(context)
        routes = [self.route(r) for r in requirements]
        results: list[ValidationResult | None] = [None] * len(requirements)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, route in enumerate(routes):
            groups.setdefault((route.via, route.adapter), []).append(index)
        for (via, name), indices in groups.items():
            started = time.perf_counter()
            notes = [""] * len(indices)
            if via == "function":
                produced = [run_function(requirements[i], contexts[i]) for i in indices]
            else:
                adapter = self.adapters[name] if name else None
                labels, positives = label_sets(adapter)
                chosen = [contexts[i] for i in indices]
                described = [requirements[i].description for i in indices]
                probs, notes = self._scores(via, name, chosen, described, labels)
                produced = [result_of(p, positives, adapter) for p in probs]
            each = (time.perf_counter() - started) / len(indices)
            for i, result, note in zip(indices, produced, notes, strict=True):
                tag = f"adapter:{routes[i].adapter}" if via == "adapter" else via
                results[i] = ValidationResult(
                    result.passed,
                    result.score,
                    result.label,
                    result.probabilities,
                    routes[i].reason + note,
                    tag,
                    each,
                )
        return [r for r in results if r is not None]

    def _scores(
        self,
        via: str,
        name: str | None,
        contexts: list[Context],
        requirements: list[str],
        labels: list[str],
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Label probabilities per context from adapter `name` (via "adapter") or the judge, and a note each."""
        raise NotImplementedError

    def generate(self, messages: Messages, max_new_tokens: int = 200) -> str:
        """The base model's greedy reply to `messages` (what `Session.instruct` validates)."""
        raise NotImplementedError


def requirement_for(adapter: ResolvedAdapter, requirement: str | None) -> str | None:
    """The requirement text a check is told: the caller's, else the one the adapter was trained for."""
    return requirement or adapter.manifest.requirement


def label_sets(adapter: ResolvedAdapter | None) -> tuple[list[str], list[str]]:
    """The labels and positive labels a requirement is read with: the adapter's, else yes/no."""
    if adapter is None:
        return list(JUDGE_LABELS), ["yes"]
    return list(adapter.manifest.labels), list(adapter.manifest.positive_labels)


def result_of(
    probabilities: dict[str, float], positives: list[str], adapter: ResolvedAdapter | None
) -> ValidationResult:
    """A check's verdict from label probabilities: the most probable label; the score is the positive mass."""
    if not positives:
        name = adapter.name if adapter else "judge"
        raise ReqcheckError(
            f"Adapter {name!r} has no positive label, so a requirement check cannot pass or fail; pass "
            "positive_labels=[...] to CustomIntrinsicAdapter or retrain with --positive-label."
        )
    label = max(probabilities, key=probabilities.__getitem__)
    score = sum(probabilities[p] for p in positives)
    return ValidationResult(label in positives, score, label, probabilities)


def run_function(requirement: Requirement, context: Context) -> ValidationResult:
    """A requirement's `validation_fn` on the checked text, as a result like the models' ones."""
    text = as_messages(context)[-1]["content"]
    outcome = requirement.validation_fn(text)  # type: ignore[misc]
    if isinstance(outcome, ValidationResult):
        return outcome
    passed = bool(outcome)
    return ValidationResult(
        passed,
        float(passed),
        "pass" if passed else "fail",
        {"pass": float(passed), "fail": float(not passed)},
    )

"""Instruct → validate → repair: generate with the base model until the requirements hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from reqcheck.checking.requirements import Requirement, ValidationResult
from reqcheck.checking.routing import Checker, Context


@dataclass
class InstructResult:
    """The last output produced, its validation results, and how many generations it took."""

    output: str
    results: list[ValidationResult] = field(default_factory=list)
    attempts: int = 0

    @property
    def passed(self) -> bool:
        return all(self.results)


class Session:
    """A conversation with a backend in which outputs are validated against requirements.

    The backend is a `LocalHFBackend` or a `RemoteBackend` (checks and generation through a server).
    """

    def __init__(self, backend: Checker, max_new_tokens: int = 200) -> None:
        self.backend = backend
        self.max_new_tokens = max_new_tokens

    def validate(self, requirements: Sequence[Requirement], output: Context) -> list[ValidationResult]:
        """Check every requirement on `output` (the text, as adapters were trained on it, or a conversation)."""
        return self.backend.check_batch(list(requirements), [output] * len(requirements))

    def instruct(
        self, description: str, requirements: Sequence[Requirement] = (), loop_budget: int = 2
    ) -> InstructResult:
        """Generate, validate, and repair up to `loop_budget` generations in all.

        The generator is told the requirements that are not check-only; a repair turn lists the failed
        requirements with the reason each failed.
        """
        shown = [r.description for r in requirements if not r.check_only]
        prompt = description + ("\n\nRequirements:\n" + "\n".join(f"- {d}" for d in shown) if shown else "")
        messages = [{"role": "user", "content": prompt}]
        result = InstructResult(output="")
        for attempt in range(1, max(1, loop_budget) + 1):
            output = self.backend.generate(messages, self.max_new_tokens)
            result = InstructResult(output, self.validate(requirements, output), attempt)
            if result.passed:
                break
            failed = [
                f"- {r.description} (score {v.score:.2f}, {v.via})"
                for r, v in zip(requirements, result.results, strict=True)
                if not v
            ]
            messages += [
                {"role": "assistant", "content": output},
                {
                    "role": "user",
                    "content": "Your reply does not meet these requirements:\n"
                    + "\n".join(failed)
                    + "\nRewrite the reply so that it meets all of them.",
                },
            ]
        return result

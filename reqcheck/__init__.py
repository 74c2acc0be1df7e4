"""reqcheck: train small adapters that check LLM output against requirements, and gate them in CI.

The public names are imported lazily, so `import reqcheck` (and the pytest plugin when it is idle)
does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LocalHFBackend": "reqcheck.backend",
    "CustomIntrinsicAdapter": "reqcheck.adapters",
    "Session": "reqcheck.session",
    "Requirement": "reqcheck.requirements",
    "ALoraRequirement": "reqcheck.requirements",
    "LLMaJRequirement": "reqcheck.requirements",
    "ValidationResult": "reqcheck.requirements",
    "req": "reqcheck.requirements",
    "check": "reqcheck.requirements",
    "ReqcheckError": "reqcheck.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reqcheck' has no attribute {name!r}")

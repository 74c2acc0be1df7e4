"""reqcheck: train small adapters that check LLM output against requirements, and gate them in CI.

The public names are imported lazily, so `import reqcheck` (and the pytest plugin when it is idle)
does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LocalHFBackend": "reqcheck.checking.backend",
    "RemoteBackend": "reqcheck.checking.remote",
    "CustomIntrinsicAdapter": "reqcheck.checking.adapters",
    "Session": "reqcheck.checking.session",
    "Requirement": "reqcheck.checking.requirements",
    "ALoraRequirement": "reqcheck.checking.requirements",
    "LLMaJRequirement": "reqcheck.checking.requirements",
    "ValidationResult": "reqcheck.checking.requirements",
    "req": "reqcheck.checking.requirements",
    "check": "reqcheck.checking.requirements",
    "ReqcheckError": "reqcheck.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reqcheck' has no attribute {name!r}")

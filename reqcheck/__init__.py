"""reqcheck: train small adapters that check LLM output against requirements, and gate them in CI."""

__version__ = "0.1.0"

"""Checking requirements: requirements and results (`requirements`), finding an adapter (`adapters`),
the in-process backend that routes checks (`backend`), the base-model judge (`judge`) and the
Mellea-style `Session` (`session`)."""

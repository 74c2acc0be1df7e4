"""What an exported adapter GGUF says about itself, read back from a server's adapter list.

`reqcheck export` writes the tag into llama.cpp's `adapter.lora.task_name` key; llama-server returns it
as `task_name` in `GET /lora-adapters`, so a client finds the server's id for an adapter by its content
hash, on any machine, without seeing the server's file paths.
"""

from __future__ import annotations

from dataclasses import dataclass

TASK_NAME_KEY = "adapter.lora.task_name"
_PREFIX = "reqcheck"


@dataclass(frozen=True)
class ServedTag:
    """An exported adapter's name and the content hash of the reqcheck adapter it was exported from."""

    name: str
    content_hash: str

    def render(self) -> str:
        return f"{_PREFIX}:{self.name}:{self.content_hash}"

    @classmethod
    def parse(cls, text: object) -> ServedTag | None:
        """The tag in a server's `task_name`, or None for an adapter reqcheck did not export."""
        if not isinstance(text, str) or not text.startswith(f"{_PREFIX}:"):
            return None
        parts = text[len(_PREFIX) + 1 :].rsplit(":", 2)  # the hash is "sha256:<hex>"; a name may hold ":"
        if len(parts) != 3 or not all(parts):
            return None
        return cls(parts[0], f"{parts[1]}:{parts[2]}")

"""pytest11 entry point `reqcheck` (see pyproject.toml); the hooks live here."""

"""Push a staged package to the Hugging Face Hub: token lookup, endpoint, one atomic commit.

What goes into the package, and whether it may go, is decided in `packaging`; the CLI does the asking.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from reqcheck.errors import ReqcheckError
from reqcheck.publishing.packaging import file_tree


def hub_token() -> str:
    """The token huggingface_hub would use (HF_TOKEN, then the stored login); never printed."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ReqcheckError("No Hugging Face token found; run `hf auth login` or set HF_TOKEN.")
    return token


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub.constants froze it at import time)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _network_errors() -> tuple[type[BaseException], ...]:
    """HfHubHTTPError and its bases: the HTTP library's HTTPError (connection errors too) and OSError."""
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, *HfHubHTTPError.__bases__)


@dataclass
class Target:
    """Where an upload goes."""

    repo_id: str
    revision: str
    private: bool
    commit_message: str


def push(folder: Path, target: Target, token: str) -> str:
    """Create the repo (and branch) if needed, then add every file under `folder` in ONE commit.

    A commit is atomic on the Hub, so a failure leaves the repo as it was. Returns the commit URL.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    operations = [CommitOperationAdd(path, str(folder / path)) for path in file_tree(folder)]
    try:
        api.create_repo(target.repo_id, private=target.private, exist_ok=True)
        if target.revision != "main":
            api.create_branch(target.repo_id, branch=target.revision, exist_ok=True)
        info = api.create_commit(
            target.repo_id, operations, commit_message=target.commit_message, revision=target.revision
        )
    except _network_errors() as exc:
        raise ReqcheckError(
            f"Could not reach the Hub at {endpoint} ({_describe(exc)}); nothing was uploaded, so check your "
            "network, HF_ENDPOINT and that the token may write to the repo, then retry."
        ) from exc
    return info.commit_url


def _describe(exc: BaseException) -> str:
    """The error's first line without anything token-like in it."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"hf_[A-Za-z0-9]+", "hf_***", first)[:200]

"""How each kind of server is asked: one small class per engine, so `RemoteBackend` never branches on it.

An engine says which request fields apply an adapter (and whether the server applies it to requests that
name none), which fields run the base model alone, how the server tokenizes a text, whether aLoRA
requests must go one at a time, whether a check can read its label from one decode step (and the fields
that ask for it), and, after an answer, whether the server still applies what was selected.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from reqcheck.checking.adapters import ResolvedAdapter
from reqcheck.checking.endpoint import LLAMA_CPP, VLLM, Endpoint, ServerInfo, read_adapters
from reqcheck.errors import ReqcheckError, plain_text
from reqcheck.formats.manifest import content_hash
from reqcheck.formats.served import ServedTag

# added to every label's first token: the same amount keeps their ratios, and puts them above any other token
LABEL_BIAS = 100.0
# the sampler chain left as the model's own distribution (each sampler at its "off" value), whatever the
# server's defaults, so that the probabilities after it are the logits' softmax plus the bias
NEUTRAL_SAMPLING = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "top_n_sigma": -1.0,
    "xtc_probability": 0.0,
    "dry_multiplier": 0.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "mirostat": 0,
}
PREFILL_PROBE = '{"probe": "'


class Engine:
    """What every engine answers; `for_server` picks the class for the server `info` describes."""

    def __init__(self, endpoint: Endpoint, info: ServerInfo) -> None:
        self.endpoint, self.info = endpoint, info

    @staticmethod
    def for_server(endpoint: Endpoint, info: ServerInfo) -> Engine:
        return {LLAMA_CPP: LlamaCpp, VLLM: Vllm}[info.engine](endpoint, info)

    def select(self, adapter: ResolvedAdapter) -> tuple[dict[str, Any], bool]:
        """The request fields that apply `adapter`, and whether requests naming no adapter get it too."""
        raise NotImplementedError

    def base_select(self) -> dict[str, Any]:
        """The request fields that run the base model alone."""
        raise NotImplementedError

    def tokenize_body(self, text: str) -> dict[str, Any]:
        """A `/tokenize` request for `text` without special tokens added."""
        raise NotImplementedError

    def one_at_a_time(self, adapter: ResolvedAdapter) -> AbstractContextManager[Any]:
        """Held around a request that applies `adapter`: a lock where the server needs them serialised."""
        return nullcontext()

    def reads_first_token(self) -> bool:
        """Whether a check reads its label from one decode step: the server continues a prefilled answer and
        reports the probabilities after a logit bias. Otherwise the whole JSON answer is generated."""
        return False

    def first_token_fields(self, token_ids: list[int]) -> dict[str, Any]:
        """Request fields for one decode step whose probabilities hold every one of `token_ids`."""
        raise NotImplementedError

    def confirm(self, adapter: ResolvedAdapter | None, answer: Any, opened: int) -> None:
        """Refuse `answer` when the server may no longer apply what the request selected: `adapter` (None: the
        base model alone), sent when the endpoint had opened `opened` connections."""


class LlamaCpp(Engine):
    """llama-server: adapters by `/lora-adapters` id and scale; aLoRA requests one at a time."""

    def __init__(self, endpoint: Endpoint, info: ServerInfo) -> None:
        super().__init__(endpoint, info)
        self._one_alora = threading.Lock()
        self._ids: dict[str, tuple[int, str]] = {}  # adapter name -> the id it is selected by, its hash
        self._rereading = threading.Lock()
        self._read_at = endpoint.connections  # connections opened when `/lora-adapters` was last read
        self._identity: tuple[Any, Any] | None = None  # the build and model the answers name
        self._probing = threading.Lock()
        self._prefills: bool | None = None  # whether the server continues a prefilled answer (asked once)

    def select(self, adapter: ResolvedAdapter) -> tuple[dict[str, Any], bool]:
        entry = self._entry(adapter)
        self._ids[adapter.name] = (int(entry["id"]), content_hash(adapter.path))
        return {"lora": [{"id": int(entry["id"]), "scale": 1.0}]}, bool(float(entry.get("scale") or 0))

    def confirm(self, adapter: ResolvedAdapter | None, answer: Any, opened: int) -> None:
        """Re-read `/lora-adapters` when the server may have changed under the request, and refuse its answer
        when the id used no longer serves the adapter (or, for the base model, an adapter was left unzeroed).

        llama-server applies adapters by id and its answers do not say which one ran, so a restart that loads
        other files, or another replica, would give another adapter's scores as ours. The server may have
        changed when the request opened a connection no re-read has seen yet (a restart drops every
        connection), or when an answer names another build or model than the first one did.
        """
        identity = (
            (answer.get("system_fingerprint"), answer.get("model")) if isinstance(answer, dict) else None
        )
        with self._rereading:
            self._identity = self._identity or identity
            if identity == self._identity and self.endpoint.connections <= max(opened, self._read_at):
                return
            before = {int(a["id"]) for a in self.info.adapters}
            self.info.adapters = read_adapters(self.endpoint)
            self._read_at, self._identity = self.endpoint.connections, identity
        if adapter is not None:
            self._still_serves(adapter)
        elif {int(a["id"]) for a in self.info.adapters} - before:
            raise ReqcheckError(
                f"The server at {self.endpoint.shown} now lists more adapters than when the run began, so the "
                "base model's request may have run one of them (it restarted, or another replica answered); "
                "load the same --lora files in the same order on every replica, then rerun."
            )

    def _still_serves(self, adapter: ResolvedAdapter) -> None:
        used, digest = self._ids[adapter.name]
        entry = next((a for a in self.info.adapters if a.get("id") == used), None)
        tag = ServedTag.parse(entry.get("task_name")) if entry else None
        if tag is None or tag.content_hash != digest:
            now = plain_text(entry.get("task_name") or entry.get("path")) if entry else "nothing"
            raise ReqcheckError(
                f"The server at {self.endpoint.shown} no longer serves adapter {adapter.name} at id {used} (it "
                f"serves {now} there now: it restarted, or another replica answered); load the same --lora "
                "files in the same order on every replica, then rerun."
            )

    def base_select(self) -> dict[str, Any]:
        """Every llama-server adapter at scale 0."""
        ids = [a.get("id") for a in self.info.adapters]
        return {"lora": [{"id": i, "scale": 0.0} for i in ids]} if ids else {}

    def tokenize_body(self, text: str) -> dict[str, Any]:
        return {"content": text, "add_special": False, "parse_special": True}

    def one_at_a_time(self, adapter: ResolvedAdapter) -> AbstractContextManager[Any]:
        # llama-server applies an aLoRA wrongly when parallel slots share a batch (the output is the base
        # model's, and the slots keep wrong caches; it keeps the aLoRA's on/off state once per batch, not
        # per slot), so its aLoRA requests go one at a time; a one-slot server has no shared batch and
        # queues concurrent requests itself
        return self._one_alora if adapter.is_alora and self.info.slots != 1 else nullcontext()

    def reads_first_token(self) -> bool:
        """Asked once: `/apply-template` renders a conversation that ends in an assistant message; a server that
        continues it leaves that message open at the end of the prompt (llama.cpp since its prefill_assistant,
        which came after post_sampling_probs). An older server, or one started with --no-prefill-assistant,
        closes it or lacks the route."""
        with self._probing:
            if self._prefills is None:
                messages = [
                    {"role": "user", "content": "ping"},
                    {"role": "assistant", "content": PREFILL_PROBE},
                ]
                rendered = self.endpoint.request(
                    "POST", "/apply-template", {"messages": messages}, missing_ok=True
                )
                prompt = rendered.get("prompt") if isinstance(rendered, dict) else None
                self._prefills = isinstance(prompt, str) and prompt.endswith(PREFILL_PROBE)
            return self._prefills

    def first_token_fields(self, token_ids: list[int]) -> dict[str, Any]:
        return {
            "max_tokens": 1,
            "max_completion_tokens": 1,
            "logprobs": True,
            "top_logprobs": len(token_ids),
            "post_sampling_probs": True,
            "logit_bias": {str(token_id): LABEL_BIAS for token_id in token_ids},
            **NEUTRAL_SAMPLING,
        }

    def _entry(self, adapter: ResolvedAdapter) -> dict[str, Any]:
        """The `/lora-adapters` entry whose task_name names this adapter's content hash; refuse misapplied aLoRAs."""
        digest = content_hash(adapter.path)
        entries = self.info.adapters
        tags = [ServedTag.parse(a.get("task_name")) for a in entries]
        found = [a for a, tag in zip(entries, tags, strict=True) if tag and tag.content_hash == digest]
        shown = self.endpoint.shown
        if not found:
            served = [plain_text(a.get("task_name") or Path(str(a.get("path", "?"))).name) for a in entries]
            raise ReqcheckError(
                f"The server at {shown} does not serve adapter {adapter.name} ({digest[:19]}…; it serves "
                f"{', '.join(served) or 'no adapter'}); serve it with reqcheck serve {adapter.path}, or export it "
                f"with reqcheck export {adapter.path} --gguf OUT and start llama-server with --lora OUT/adapter.gguf."
            )
        entry = found[0]
        if adapter.is_alora:
            tokens = list(entry.get("alora_invocation_tokens") or [])
            if tokens != adapter.manifest.invocation_ids[1:]:
                raise ReqcheckError(
                    f"The server at {shown} would apply aLoRA {adapter.name} as a plain LoRA or at the wrong "
                    f"place (its invocation tokens are {tokens or 'none'}); re-export it with reqcheck export "
                    "--gguf and restart llama-server with that file."
                )
        return entry


class Vllm(Engine):
    """vLLM: an adapter is the request's `model` (its LoRA module name); no activated LoRA."""

    def select(self, adapter: ResolvedAdapter) -> tuple[dict[str, Any], bool]:
        if adapter.is_alora:
            raise ReqcheckError(
                f"Adapter {adapter.name} is an aLoRA and vLLM applies adapters as plain LoRA; serve it "
                "with llama-server (reqcheck export --gguf) or check it in process."
            )
        names = [str(a.get("id")) for a in self.info.adapters]
        if adapter.name not in names:
            served = ", ".join(plain_text(name) for name in names)
            raise ReqcheckError(
                f"The vLLM server at {self.endpoint.shown} has no LoRA module {adapter.name!r} (it serves "
                f"{served or 'none'}); start it with --lora-modules {adapter.name}={adapter.path}."
            )
        return {"model": adapter.name}, False

    def base_select(self) -> dict[str, Any]:
        return {"model": self.info.meta.get("id")}

    def tokenize_body(self, text: str) -> dict[str, Any]:
        return {"model": self.info.meta.get("id"), "prompt": text, "add_special_tokens": False}

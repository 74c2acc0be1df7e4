"""One server of a served checker: what it is, which adapters it serves and how, and one check at a time.

A `Replica` probes its server once (`ServerInfo`), picks the class that knows how to ask it (`engines`),
registers adapters (refusing one the server lacks, would misapply, or has another base model for), and
sends a single check: an adapter's classification, a judge question, a generation. `RemoteBackend` spreads
checks over one replica per URL (`spreading`); a replica never decides where a check goes.

Where the server can (`Engine.reads_first_token`, asked once), a check is one decode step: the answer is
prefilled up to the label's value, every label's first token gets the same logit bias, and the label
probabilities are those tokens' probabilities after it, renormalised among the labels (`answers`). That is
granite-common's `likelihood` rule with every label in view, and the in-process rule, so served and
in-process scores agree on multi-token labels too. The judge asks the base model (every adapter at scale 0)
the question the in-process judge asks and reads its labels' first tokens the same way. Elsewhere (vLLM, an
older llama-server) the whole JSON answer is generated, checked (`answers`: finite logprobs no greater than
0, non-empty top logprobs) and read with granite-common's `IntrinsicsResultProcessor` over the value token's
top logprobs; the judge reads the top logprobs.
"""

from __future__ import annotations

import json
import math
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reqcheck.checking.adapters import ResolvedAdapter
from reqcheck.checking.answers import (
    NoLogprobs,
    checked_probabilities,
    first_token_logprobs,
    first_token_probs,
    label_probabilities,
)
from reqcheck.checking.endpoint import Endpoint, ServerInfo
from reqcheck.checking.engines import Engine
from reqcheck.checking.judge import first_token_owners, judge_messages
from reqcheck.checking.routing import Context
from reqcheck.errors import ReqcheckError
from reqcheck.formats.io_yaml import IoYaml
from reqcheck.formats.manifest import Manifest
from reqcheck.formats.prompting import Messages, as_messages

# top logprobs asked for: granite-common's own number (its rewriter asks for 10), and the judge's
TOP_LOGPROBS = 10
JUDGE_TOP_LOGPROBS = 20
# tokenised on every replica to tell their base models apart before any check
TOKENIZER_PROBE = "Is this reply polite? Yes, no: 42 \u00e9t\u00e9 \U0001f600"


@dataclass
class Served:
    """How one registered adapter is called on this server: its request fields and granite-common's readers."""

    select: dict[str, Any]
    config: dict[str, Any]
    processors: dict[str, Any]
    owners: dict[int, str]  # each label's first value token -> the label


class Replica:
    """One OpenAI-compatible server that serves the base model and the adapters, asked one check at a time.

    `concurrency` requests are in flight at once over its own connection pool and threads (`pool`).
    """

    def __init__(self, url: str, concurrency: int, timeout: float, retries: int, api_key: str | None) -> None:
        self.endpoint = Endpoint(url, concurrency, timeout, retries, api_key=api_key)
        self.concurrency = concurrency
        self.info = ServerInfo.probe(self.endpoint)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="reqcheck-remote")
        self._engine = Engine.for_server(self.endpoint, self.info)
        self._served: dict[str, Served] = {}
        self._judge_owners: dict[tuple[str, ...], dict[int, str]] = {}

    @property
    def shown(self) -> str:
        """The server's URL with its credentials hidden."""
        return self.endpoint.shown

    def tokenize(self, text: str) -> Any:
        """What the server's tokenizer makes of `text`, special tokens not added."""
        return (self.endpoint.post("/tokenize", self._engine.tokenize_body(text)) or {}).get("tokens")

    def register(self, adapter: ResolvedAdapter) -> bool:
        """Serve `adapter` here; whether requests that name no adapter get it too (its global scale is not 0)."""
        self._check_base(adapter)
        select, on_by_default = self._engine.select(adapter)
        self._served[adapter.name] = _readers(adapter.manifest, select)
        return on_by_default

    def _check_base(self, adapter: ResolvedAdapter) -> None:
        """Refuse a server whose base model is not the adapter's: its tokenizer, and (llama-server) its width."""
        manifest, shown = adapter.manifest, self.endpoint.shown
        tokens = self.tokenize(manifest.prompt.invocation)
        width, served_width = _adapter_width(adapter.path), self.info.meta.get("n_embd")
        if tokens != manifest.invocation_ids or (width and served_width and width != served_width):
            raise ReqcheckError(
                f"The server at {shown} runs {self.info.model or 'a model'}, not adapter {adapter.name}'s base "
                f"model {manifest.base_model.name} (its tokenizer or width differs); serve the base model "
                "the adapter was trained on (reqcheck export --base writes it)."
            )

    def classify_one(
        self, adapter: ResolvedAdapter, context: Context, requirement: str | None
    ) -> dict[str, float]:
        """The adapter's probability for each of its labels on one context, read from the served logprobs."""
        from granite_common import ChatCompletionResponse, IntrinsicsRewriter
        from pydantic import ValidationError

        served, manifest = self._served[adapter.name], adapter.manifest
        instruction = manifest.prompt.instruction or ""
        if manifest.prompt.requirement_in_prompt and not requirement:
            raise ReqcheckError(
                f"Adapter {adapter.name} reads the requirement text from its prompt and none was given; pass "
                "the requirement you check."
            )
        kwargs = {"requirement": requirement or ""} if "{requirement}" in instruction else {}
        messages = as_messages(context, manifest.prompt)
        rewritten = IntrinsicsRewriter(config_dict=served.config).transform({"messages": messages}, **kwargs)
        body = rewritten.model_dump(exclude_none=True)
        # the grammar constraint goes: scores are read from probabilities, not decoded
        body.pop("extra_body", None)
        what = f"adapter {adapter.name}"
        if self._engine.reads_first_token():
            body["messages"].append({"role": "assistant", "content": manifest.output.lead()})
            body.update(self._engine.first_token_fields(list(served.owners)), **served.select)
            with self._engine.one_at_a_time(adapter):
                probs = self._first_token(body, what, adapter)
            return label_probabilities(probs, served.owners, list(manifest.labels), self.endpoint.shown, what)
        body.update(
            logprobs=True, top_logprobs=max(body.get("top_logprobs") or 0, TOP_LOGPROBS), **served.select
        )
        body.setdefault("temperature", 0.0)
        with self._engine.one_at_a_time(adapter):
            _, answer = self._complete(body, what, adapter)
        try:
            response = ChatCompletionResponse.model_validate(answer)
        except ValidationError as exc:
            where = ".".join(map(str, exc.errors()[0]["loc"]))
            raise ReqcheckError(
                f"The server at {self.endpoint.shown} answered {what} with something that is not a chat "
                f"completion ({where}: {exc.errors()[0]['msg']}); fix the server or the proxy in front of it, "
                "then rerun."
            ) from None
        try:
            scores = {label: float(_score(p, response, rewritten)) for label, p in served.processors.items()}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            content = response.choices[0].message.content
            raise ReqcheckError(
                f"The server's output for adapter {adapter.name}, {content!r:.80}, is not the JSON the adapter "
                f"was trained to emit ({type(exc).__name__}); serve the exported adapter on its own base model."
            ) from None
        return checked_probabilities(scores, self.endpoint.shown, what)

    def judge_one(self, context: Context, requirement: str | None, labels: list[str]) -> dict[str, float]:
        """The base model's probability for each label on one context, asked the in-process judge's question."""
        messages = judge_messages(context, requirement, labels)
        if self._engine.reads_first_token():
            owners = self._judge_tokens(labels)
            body = {
                "messages": messages,
                **self._engine.first_token_fields(list(owners)),
                **self._base_select(),
            }
            probs = self._first_token(body, "the judge")
            return label_probabilities(probs, owners, labels, self.endpoint.shown, "the judge")
        body = {"messages": messages, "max_tokens": 1, "temperature": 0.0, "logprobs": True}
        body.update(top_logprobs=JUDGE_TOP_LOGPROBS, **self._base_select())
        content, _ = self._complete(body, "the judge")
        top = content[0]["top_logprobs"]
        mass = dict.fromkeys(labels, 0.0)
        for entry in top:
            text = entry["token"].strip().lower()
            owner = next((label for label in labels if text and label.lower() == text), None)
            if owner is not None:
                mass[owner] += math.exp(entry["logprob"])
        total = sum(mass.values())
        if not total:
            shown = ", ".join(repr(entry["token"]) for entry in top[:5])
            raise ReqcheckError(
                f"The served base model's top {len(top)} next tokens ({shown}, ...) hold none of the labels "
                f"{', '.join(labels)}, so the judge cannot score this check; check it with a trained adapter "
                "or serve an instruct model that answers the judge's question."
            )
        return checked_probabilities(
            {label: value / total for label, value in mass.items()}, self.endpoint.shown, "the judge"
        )

    def generate(self, messages: Messages, max_new_tokens: int) -> str:
        """The served base model's greedy reply (no adapter applied)."""
        body = {"messages": messages, "max_tokens": max_new_tokens, "temperature": 0.0, **self._base_select()}
        answer = self.endpoint.post("/v1/chat/completions", body)
        return str(answer["choices"][0]["message"]["content"] or "").strip()

    def close(self) -> None:
        """Stop the request threads (the replica is unusable afterwards)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    # internals

    def _base_select(self) -> dict[str, Any]:
        """Request fields that run the base model alone."""
        return self._engine.base_select()

    def _judge_tokens(self, labels: list[str]) -> dict[int, str]:
        """The first tokens of the labels' spellings in the server's vocabulary, each with its label."""
        key = tuple(labels)
        if key not in self._judge_owners:

            def first(text: str) -> int:
                tokens = self.tokenize(text)
                if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], int):
                    raise ReqcheckError(
                        f"The server at {self.endpoint.shown} tokenized the label {text!r} as {tokens!r:.60}, "
                        "not as token ids; fix the server or the proxy in front of it, then rerun."
                    )
                return tokens[0]

            self._judge_owners[key] = {
                token: labels[i] for token, i in first_token_owners(labels, first).items()
            }
        return self._judge_owners[key]

    def _first_token(
        self, body: dict[str, Any], what: str, adapter: ResolvedAdapter | None = None
    ) -> dict[int, float]:
        """A one-step answer's probabilities by token id (see `_complete` for `adapter`)."""
        opened = self.endpoint.connections
        answer = self.endpoint.post("/v1/chat/completions", body)
        self._engine.confirm(adapter, answer, opened)
        try:
            return first_token_probs(answer, self.endpoint.shown, what)
        except NoLogprobs:
            raise ReqcheckError(
                f"The server at {self.endpoint.shown} returned no token probabilities for {what}, and scores "
                "are read from them; serve with llama.cpp's server (reqcheck serve) or fix the proxy in front "
                "of it, then rerun."
            ) from None

    def _complete(
        self, body: dict[str, Any], what: str, adapter: ResolvedAdapter | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """A chat completion's checked logprobs (one entry per generated token) and the whole answer, or one
        sentence why no score can be read from it. `adapter` is the one the request applies (None: the base
        model alone), confirmed still served there when the server may have changed."""
        opened = self.endpoint.connections
        answer = self.endpoint.post("/v1/chat/completions", body)
        self._engine.confirm(adapter, answer, opened)
        try:
            return first_token_logprobs(answer, self.endpoint.shown, what), answer
        except NoLogprobs:
            raise ReqcheckError(
                f"The server at {self.endpoint.shown} returned no logprobs for {what}, and scores are read "
                "from them; serve with an engine and options that return logprobs and top_logprobs "
                "(vLLM: --max-logprobs 20)."
            ) from None


def _readers(manifest: Manifest, select: dict[str, Any]) -> Served:
    """granite-common's config for the adapter, and one result processor per label that reads its probability."""
    from granite_common import IntrinsicsResultProcessor

    config = IoYaml.for_manifest(manifest).to_dict()
    field_name = manifest.output.field
    processors = {}
    for label in manifest.labels:
        one_hot = {other: 1.0 if other == label else 0.0 for other in manifest.labels}
        steps = [{"type": "likelihood", "input_path": [field_name], "categories_to_values": one_hot}]
        processors[label] = IntrinsicsResultProcessor(config_dict={**config, "transformations": steps})
    return Served(select, config, processors, _first_value_tokens(manifest))


def _first_value_tokens(manifest: Manifest) -> dict[int, str]:
    """Each label's first value token: the first where the labels' ids part, after the JSON lead they share
    (train time refuses labels whose first value tokens granite-common could not tell apart)."""
    sequences = [manifest.label_token_ids[label] for label in manifest.labels]
    lead = 0
    while all(len(ids) > lead + 1 and ids[lead] == sequences[0][lead] for ids in sequences):
        lead += 1
    owners = {manifest.label_token_ids[label][lead]: label for label in manifest.labels}
    if len(owners) < len(manifest.labels):
        raise ReqcheckError(
            f"Two of the labels {', '.join(manifest.labels)} start with the same token, so their probabilities "
            "cannot be told apart where the value starts; retrain the adapter with labels that start differently."
        )
    return owners


def _score(processor: Any, response: Any, rewritten: Any) -> float:
    """One label's probability: what granite-common's likelihood rule makes of the served logprobs."""
    processed = processor.transform(response, rewritten)
    return json.loads(processed.choices[0].message.content)[processor.rules[0].input_path_expr[0]]


def _adapter_width(path: Path) -> int | None:
    """The base model's hidden size, read from the adapter's lora_A shapes (safetensors header, no torch)."""
    try:
        with (path / "adapter_model.safetensors").open("rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error):
        return None
    for name, entry in header.items():
        if name.endswith(("q_proj.lora_A.weight", "k_proj.lora_A.weight", "v_proj.lora_A.weight")):
            return int(entry["shape"][1])
    return None

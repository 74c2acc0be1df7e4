"""LocalHFBackend: a base model plus requirement-check adapters, with context KV reuse.

A requirement is routed to an adapter, the base-model judge, or its Python function (see `route`).
aLoRA checks reuse the base model's KV cache of the context: the adapter only runs from the
invocation on, so the context's keys and values are the base model's. An LRU keyed by token ids keeps
those caches, so after the first check of an output, checking more requirements on it costs only the
invocation and label tokens. LoRA adapters change the context's KV too, so they recompute it.

A context longer than the model's positions, or than the `--max-length` the adapter was trained with,
loses tokens from its start exactly as a long training item did; the result's `reason` says so.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from reqcheck.checking.adapters import CustomIntrinsicAdapter, ResolvedAdapter, resolve_adapter
from reqcheck.checking.judge import JUDGE_LABELS, judge_labels, judge_spec, pool_variants
from reqcheck.checking.routing import Checker, Context, Route, requirement_for
from reqcheck.errors import ReqcheckError
from reqcheck.formats.output import LabelSet
from reqcheck.formats.prompting import Messages, PromptSpec, Rendered, render
from reqcheck.models import kvcache
from reqcheck.models.attention import use_gqa_sdpa
from reqcheck.models.kvcache import KV
from reqcheck.models.loading import (
    load_model,
    load_tokenizer,
    quiet_peft_wrap,
    resolve_base_model,
    resolve_device,
    training_dtype,
)
from reqcheck.models.scoring import Prefix, left_pad, score_labels

__all__ = ["Context", "LocalHFBackend", "Route"]


class LocalHFBackend(Checker):
    """A Hugging Face causal LM that checks requirements through registered adapters or as a judge.

    `default_to_constraint_checking_alora = False` sends every requirement (except an
    `ALoraRequirement`) to the base-model judge: validation through adapters off.
    """

    def __init__(
        self,
        model_id: str,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        use_caches: bool = True,
        cache_size: int = 32,
        batch_size: int = 16,
    ) -> None:
        self.base_model = resolve_base_model(model_id)
        self.device = resolve_device(device)
        self.tokenizer = load_tokenizer(self.base_model)
        self.model: Any = load_model(self.base_model, self.device, dtype or training_dtype(self.device))
        use_gqa_sdpa(self.model)
        self.use_caches = use_caches
        self.batch_size = batch_size
        super().__init__()
        self._cache_size = cache_size
        self._prefixes: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self._peft_names: dict[str, str] = {}  # an adapter's name -> the name PEFT knows it by

    # registration and routing

    def add_adapter(self, adapter: CustomIntrinsicAdapter) -> ResolvedAdapter:
        """Load an adapter's weights next to the others; it is addressed by its intrinsic name.

        The name is the user's (a folder name may hold dots, spaces, any letters); PEFT gets a name of its
        own (`adapter0`, `adapter1`, ... in the order registered), since it builds module names from it.
        """
        from peft import PeftModel

        resolved = resolve_adapter(adapter, self.base_model.short_name, self.tokenizer)
        if resolved.name in self.adapters:
            raise ReqcheckError(
                f"An adapter named {resolved.name!r} is already registered; pass another intrinsic_name."
            )
        peft_name = f"adapter{len(self._peft_names)}"
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(resolved.path), adapter_name=peft_name, is_trainable=False)
        else:
            with quiet_peft_wrap():
                self.model = PeftModel.from_pretrained(self.model, str(resolved.path), adapter_name=peft_name)
        self.model.eval()
        self.adapters[resolved.name] = resolved
        self._peft_names[resolved.name] = peft_name
        return resolved

    def _scores(
        self,
        via: str,
        name: str | None,
        contexts: list[Context],
        requirements: list[str],
        labels: list[str],
    ) -> tuple[list[dict[str, float]], list[str]]:
        if via == "adapter":
            probs, rendered, limit = self._classify(name, contexts, requirements)
        else:
            probs, rendered, limit = self._judge(contexts, requirements, labels)
        return probs, [_truncation_note(r, limit) for r in rendered]

    def classify(
        self, adapter_name: str, contexts: Sequence[Context], requirements: Sequence[str | None] | None = None
    ) -> list[dict[str, float]]:
        """The adapter's probability for each of its labels, per context."""
        return self._classify(adapter_name, contexts, requirements)[0]

    def _classify(
        self, adapter_name: str, contexts: Sequence[Context], requirements: Sequence[str | None] | None
    ) -> tuple[list[dict[str, float]], list[Rendered], int | None]:
        adapter = self.adapters.get(adapter_name)
        if adapter is None:
            raise ReqcheckError(
                f"No adapter named {adapter_name!r} is registered; add it with backend.add_adapter."
            )
        manifest = adapter.manifest
        names = list(manifest.labels)
        labels = manifest.label_set(self.tokenizer)
        requirements = list(requirements) if requirements is not None else [None] * len(contexts)
        # an adapter trained with its requirement in the prompt gets that text when the caller names none
        requirements = [requirement_for(adapter, r) for r in requirements]
        limit = self._token_limit(manifest.hyperparameters.get("max_length"))
        rendered = self._render(contexts, manifest.prompt, requirements, limit, labels)
        peft_name = self._peft_names[adapter_name]
        if self.model.active_adapter != peft_name:
            self.model.set_adapter(peft_name)
        scores = self._score(rendered, labels, reuse_context=adapter.is_alora and self.use_caches)
        probs = [dict(zip(names, row.tolist(), strict=True)) for row in torch.softmax(scores, dim=-1)]
        return probs, rendered, limit

    def judge(
        self, contexts: Sequence[Context], requirements: Sequence[str | None], labels: list[str] | None = None
    ) -> list[dict[str, float]]:
        """The base model's probability for each label, asked as a question about each context."""
        return self._judge(contexts, requirements, labels)[0]

    def _judge(
        self, contexts: Sequence[Context], requirements: Sequence[str | None], labels: list[str] | None
    ) -> tuple[list[dict[str, float]], list[Rendered], int | None]:
        labels = labels or JUDGE_LABELS
        variants, owner = judge_labels(self.tokenizer, labels)
        spec = judge_spec(self.tokenizer, labels)
        limit = self._token_limit(None)
        rendered = self._render(contexts, spec, requirements, limit, variants)
        with self._base():
            scores = self._score(rendered, variants, reuse_context=self.use_caches)
        pooled = torch.softmax(pool_variants(scores, owner, len(labels)), dim=-1)
        return [dict(zip(labels, row.tolist(), strict=True)) for row in pooled], rendered, limit

    def generate(self, messages: Messages, max_new_tokens: int = 200) -> str:
        """Greedy generation with the base model.

        The conversation's KV is not kept: a check renders the output as a turn of its own (as the
        adapter was trained), so the conversation is never a prefix of what is checked.
        """
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(
            self.device
        )
        with self._base(), torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

    # internals

    def _token_limit(self, trained: object) -> int | None:
        """Tokens a prompt plus its label may take: the model's positions, and the adapter's --max-length."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        limits = [n for n in (positions, trained) if isinstance(n, int) and not isinstance(n, bool) and n > 0]
        return min(limits) if limits else None

    def _render(
        self,
        contexts: Sequence[Context],
        spec: PromptSpec,
        requirements: Sequence[str | None],
        limit: int | None,
        labels: LabelSet,
    ) -> list[Rendered]:
        """Prompts cut to `limit` with room for the longest label, as training cuts its items."""
        reserve = max(len(ids) for ids in labels.token_ids)
        return [
            render(self.tokenizer, c, spec, r, max_length=limit, reserve=reserve)
            for c, r in zip(contexts, requirements, strict=True)
        ]

    @contextmanager
    def _base(self) -> Iterator[None]:
        """Run the base model: adapters disabled."""
        with self.model.disable_adapter() if self.adapters else nullcontext():
            yield

    def _score(self, rendered: list[Rendered], labels: LabelSet, reuse_context: bool) -> torch.Tensor:
        rows = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(rendered), self.batch_size):
            chunk = rendered[start : start + self.batch_size]
            if reuse_context:
                # everything before the invocation (context, requirement, instruction) is base-model KV
                prefix = self._prefix(chunk)
                suffixes = [r.input_ids[r.invocation_start :] for r in chunk]
                rows.append(score_labels(self.model, suffixes, [0] * len(chunk), labels, pad, prefix))
            else:
                rows.append(
                    score_labels(
                        self.model,
                        [r.input_ids for r in chunk],
                        [r.invocation_start for r in chunk],
                        labels,
                        pad,
                    )
                )
        return torch.cat(rows)

    def _remember(self, key: tuple[int, ...], kv: KV) -> None:
        self._prefixes[key] = kv
        self._prefixes.move_to_end(key)
        while len(self._prefixes) > self._cache_size:
            self._prefixes.popitem(last=False)

    def _longest_cached(self, ids: tuple[int, ...]) -> tuple[int, KV | None]:
        best, found = 0, None
        for key, kv in self._prefixes.items():
            if best < len(key) <= len(ids) and ids[: len(key)] == key:
                best, found = len(key), kv
        if found is not None:
            self._prefixes.move_to_end(ids[:best])
        return best, found

    @torch.no_grad()
    def _context_kv(self, ids: tuple[int, ...], context_len: int) -> KV:
        """Base-model KV of a prompt up to its invocation, from the LRU or computed.

        The computation extends the longest cached prefix, so a prompt whose context was seen with
        another instruction or requirement (the judge after the adapter) runs only its own turn.
        """
        known, kv = self._longest_cached(ids)
        if known == len(ids) and kv is not None:
            return kv
        new = torch.tensor([ids[known:]], device=self.device)
        positions = torch.arange(known, len(ids), device=self.device).unsqueeze(0)
        with self._base():
            past = kvcache.to_cache(kv) if kv else None
            out = self.model(
                input_ids=new, position_ids=positions, cache=past, use_cache=True, logits_to_keep=1
            )
        kv = kvcache.tensors(out.cache)
        self._remember_prompt(ids, context_len, kv, known)
        return kv

    def _remember_prompt(self, ids: tuple[int, ...], context_len: int, kv: KV, known: int = 0) -> None:
        """Keep a prompt's KV, and its context's as a view of the same tensors (no copy) when not yet kept."""
        if not self.use_caches:
            return
        if known < context_len < len(ids):
            self._remember(ids[:context_len], kvcache.head(kv, context_len))
        self._remember(ids, kv)

    def _prefix(self, chunk: list[Rendered]) -> Prefix:
        """A fresh, left-padded batch cache of the prompts up to their invocations (the forward pass will
        append to it). Prompts not wholly cached are computed together in one left-padded forward pass,
        each from its longest cached prefix.
        """
        keys = [tuple(r.input_ids[: r.invocation_start]) for r in chunk]
        context = dict(zip(keys, (r.context_len for r in chunk), strict=False))
        pending = [k for k in dict.fromkeys(keys) if self._longest_cached(k)[0] < len(k)]
        computed = (
            dict(zip(pending, self._batch_kv(pending, context), strict=True)) if len(pending) > 1 else {}
        )
        rows = [computed[k] if k in computed else self._context_kv(k, context[k]) for k in keys]
        cache, mask = kvcache.left_pad_batch(rows)
        return Prefix(cache, mask, torch.tensor([len(k) for k in keys]))

    @torch.no_grad()
    def _batch_kv(self, prompts: list[tuple[int, ...]], context: dict[tuple[int, ...], int]) -> list[KV]:
        """Base-model KV of several prompts from one forward pass over what the LRU lacks, remembered there.

        Each row continues its longest cached prefix (the judge after the adapter runs only its own turns):
        the batch is [padding, cached prefix, padding, new tokens], masked and positioned per row.
        """
        found = [self._longest_cached(p) for p in prompts]
        known = [n for n, _ in found]
        ids, mask, positions = left_pad(
            [list(p[n:]) for p, n in zip(prompts, known, strict=True)],
            self.tokenizer.pad_token_id,
            self.device,
        )
        template = next((kv for _, kv in found if kv), None)
        past, width = None, 0
        if template is not None:
            past, past_mask = kvcache.left_pad_batch([kv or kvcache.empty_like(template) for _, kv in found])
            width = past_mask.shape[1]
            mask = torch.cat([past_mask, mask], dim=1)
            positions = positions + torch.tensor(known, device=self.device).unsqueeze(1)
        with self._base():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=past,
                use_cache=True,
                logits_to_keep=1,
            )
        kv = kvcache.tensors(out.cache)
        rows = []
        for index, (key, n) in enumerate(zip(prompts, known, strict=True)):
            row = kvcache.join(kv, index, (width - n, width), mask.shape[1] - (len(key) - n))
            self._remember_prompt(key, context[key], row, n)
            rows.append(row)
        return rows


def _truncation_note(rendered: Rendered, limit: int | None) -> str:
    if not rendered.truncated:
        return ""
    return (
        f"; the context's first {rendered.truncated} tokens were dropped to fit the {limit}-token limit "
        "(the model's positions or the adapter's --max-length), as training drops them"
    )

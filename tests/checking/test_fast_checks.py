"""The fast check path scores exactly as the plain one: GQA attention, context KV shared with the judge."""

from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.backend import LocalHFBackend
from reqcheck.checking.judge import JUDGE_LABELS, judge_spec
from reqcheck.checking.requirements import LLMaJRequirement, req
from reqcheck.formats.prompting import render
from reqcheck.models.attention import gqa_sdpa
from tests.helpers import PLEASE

ITEMS = ["we will help you today please", "the reply is late", "please wait, the reply is on its way"]


def with_adapter(model_dir: Path, adapter: Path, **options) -> LocalHFBackend:
    backend = LocalHFBackend(str(model_dir), device="cpu", **options)
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter), intrinsic_name="please"))
    return backend


@pytest.mark.parametrize("queries", [1, 8])
def test_gqa_attention_equals_transformers_sdpa_with_repeated_heads(queries: int) -> None:
    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    query = torch.randn(2, 9, queries, 16)
    key, value = torch.randn(2, 3, 40, 16), torch.randn(2, 3, 40, 16)
    mask = torch.ones(2, 1, queries, 40, dtype=torch.bool).tril(40 - queries)
    mask[1, :, :, :5] = False  # a left-padded row
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    got, _ = gqa_sdpa(module, query, key, value, mask, scaling=0.25)
    assert torch.allclose(got, expected, atol=1e-6)


def test_cached_uncached_and_plain_sdpa_scores_agree(tiny_model_dir: Path, tiny_adapters) -> None:
    adapter = tiny_adapters["alora"].outfile
    fast = with_adapter(tiny_model_dir, adapter)
    uncached = with_adapter(tiny_model_dir, adapter, use_caches=False)
    plain = with_adapter(tiny_model_dir, adapter, use_caches=False)
    plain.model.set_attn_implementation("sdpa")  # the attention before reqcheck.models.attention
    for requirement in (req(PLEASE), LLMaJRequirement(PLEASE)):
        first = fast.check_batch([requirement] * len(ITEMS), ITEMS)
        again = [fast.check(requirement, item) for item in ITEMS]
        for results in (
            again,
            uncached.check_batch([requirement] * 3, ITEMS),
            plain.check_batch([requirement] * 3, ITEMS),
        ):
            for a, b in zip(first, results, strict=True):
                for label, p in a.probabilities.items():
                    assert abs(p - b.probabilities[label]) <= 1e-5


def test_the_judge_reuses_the_context_the_adapter_cached(tiny_model_dir: Path, tiny_adapters) -> None:
    backend = with_adapter(tiny_model_dir, tiny_adapters["alora"].outfile)
    seen: list[int] = []
    hook = backend.model.register_forward_pre_hook(
        lambda _module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        backend.check(req(PLEASE), ITEMS[0])
        adapter_tokens = sum(seen)
        seen.clear()
        backend.check(LLMaJRequirement(PLEASE), ITEMS[0])
    finally:
        hook.remove()
    spec = judge_spec(backend.tokenizer, JUDGE_LABELS)
    judged = render(backend.tokenizer, ITEMS[0], spec, PLEASE)
    assert adapter_tokens > judged.context_len
    assert sum(seen) == len(judged.input_ids) - judged.context_len  # its own turns; the context was cached


def test_a_cached_alora_check_skips_pefts_masking_and_scores_as_the_masked_path(
    tiny_model_dir: Path, tiny_adapters, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft.tuners.lora.variants import ALoraLinearVariant

    from reqcheck.models import scoring

    masked_calls = []
    original = ALoraLinearVariant.forward

    def counted(*args, **kwargs):
        masked_calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ALoraLinearVariant, "forward", staticmethod(counted))
    requirement = req(PLEASE)
    plain = with_adapter(tiny_model_dir, tiny_adapters["alora"].outfile).check_batch([requirement] * 3, ITEMS)
    assert masked_calls == []  # every forward of a cached check took PEFT's plain LoRA path
    monkeypatch.setattr(scoring, "plain_lora", lambda model: nullcontext())
    masked = with_adapter(tiny_model_dir, tiny_adapters["alora"].outfile).check_batch(
        [requirement] * 3, ITEMS
    )
    assert masked_calls  # the same checks through PEFT's masking
    for a, b in zip(plain, masked, strict=True):
        assert a.label == b.label
        assert all(abs(a.probabilities[k] - b.probabilities[k]) <= 1e-5 for k in a.probabilities)

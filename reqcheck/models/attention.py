"""Attention for checks: PyTorch's SDPA on the key/value heads as they are (grouped-query attention).

SmolLM2 (like most small instruct models) has 3 key/value heads for 9 query heads. Transformers' SDPA
path copies every cached key and value three times (`repeat_kv`) whenever a mask is passed, which a
check over a cached context always has: at 1,500 context tokens that is ~200 MB written per check, more
than the check's own arithmetic. `torch.nn.functional.scaled_dot_product_attention(enable_gqa=True)`
reads the shared heads in place and gives bit-identical outputs.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "reqcheck_gqa_sdpa"


def gqa_sdpa(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Transformers' attention-function signature; the mask is the one transformers builds for `sdpa`."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal and query.shape[2] > 1 and attention_mask is None)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def use_gqa_sdpa(model: Any) -> None:
    """Switch a loaded model that runs SDPA to `gqa_sdpa` (masks built as for SDPA); others are left as they are."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register(NAME, gqa_sdpa)
    if NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)

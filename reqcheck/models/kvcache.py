"""Key/value caches as plain tensors, and transformers caches built from them without copying.

A transformers `DynamicCache` grows on every forward pass, so one is never passed twice; reqcheck keeps
each context's keys and values as per-layer tensors (batch of one) and builds a fresh cache from them
for every pass. The cache's own append makes new tensors, so the stored ones are never modified.
"""

from __future__ import annotations

from typing import Any

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]


def tensors(cache: Any) -> KV:
    """The per-layer (keys, values) of a transformers cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def to_cache(kv: KV) -> Any:
    """A DynamicCache holding `kv` as is (its constructor would copy every tensor once more)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    cache.layers = []
    for keys, values in kv:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def row(kv: KV, index: int, start: int = 0) -> KV:
    """Row `index` of a batch cache from position `start` on (dropping left padding), as its own tensors."""
    return [(k[index : index + 1, :, start:].clone(), v[index : index + 1, :, start:].clone()) for k, v in kv]


def join(kv: KV, index: int, cached: tuple[int, int], start: int) -> KV:
    """Row `index` of a batch cache laid out as [padding, cached span, padding, new tokens from `start`],
    without the padding, as its own tensors."""
    a, b = cached
    return [
        (
            torch.cat([k[index : index + 1, :, a:b], k[index : index + 1, :, start:]], dim=2),
            torch.cat([v[index : index + 1, :, a:b], v[index : index + 1, :, start:]], dim=2),
        )
        for k, v in kv
    ]


def empty_like(kv: KV) -> KV:
    """A cache of no positions shaped like `kv` (a row with nothing cached, in a batch with cached rows)."""
    return [(k[:, :, :0], v[:, :, :0]) for k, v in kv]


def head(kv: KV, n: int) -> KV:
    """The first `n` positions of a cache, as views of its tensors: a prefix kept without copying."""
    return [(k[:, :, :n], v[:, :, :n]) for k, v in kv]


def length(kv: KV) -> int:
    return kv[0][0].shape[2]


def left_pad_batch(rows: list[KV]) -> tuple[Any, torch.Tensor]:
    """One left-padded batch cache and its attention mask from per-row caches of batch one."""
    lengths = [length(r) for r in rows]
    width = max(lengths)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=rows[0][0][0].device)
    for index, n in enumerate(lengths):
        mask[index, width - n :] = 1
    if len(rows) == 1:
        return to_cache(rows[0]), mask
    layers = []
    for layer in range(len(rows[0])):
        keys, values = rows[0][layer]
        k = keys.new_zeros((len(rows), keys.shape[1], width, keys.shape[3]))
        v = values.new_zeros((len(rows), values.shape[1], width, values.shape[3]))
        for index, r in enumerate(rows):
            k[index, :, width - lengths[index] :] = r[layer][0][0]
            v[index, :, width - lengths[index] :] = r[layer][1][0]
        layers.append((k, v))
    return to_cache(layers), mask

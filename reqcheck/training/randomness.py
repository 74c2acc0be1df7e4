"""The random state a run goes on from: torch's (dropout masks), Python's and NumPy's global generators,
and the run's shuffle (the data order of every later epoch).

A checkpoint keeps this state for every process, so a resumed run draws exactly the numbers the
uninterrupted run would have drawn: with dropout on, the two end with the same weights. The state is kept
as tensors, numbers and lists, which `torch.load(weights_only=True)` reads back.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

State = dict[str, Any]


def capture(shuffle: random.Random, device: str) -> State:
    """This process's random state now, `shuffle` included."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: State = {
        "torch": torch.get_rng_state(),
        "python": _plain(random.getstate()),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "shuffle": _plain(shuffle.getstate()),
    }
    accelerator = _accelerator(device)
    if accelerator is not None:
        state["device"] = accelerator.get_rng_state()
    return state


def restore(state: State, device: str) -> random.Random:
    """Put a captured state back; the shuffle generator it held, ready to draw the next epoch's order."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_python(state["python"]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), position, has_gauss, cached))
    accelerator = _accelerator(device)
    if accelerator is not None and "device" in state:
        accelerator.set_rng_state(state["device"].cpu())
    shuffle = random.Random()
    shuffle.setstate(_python(state["shuffle"]))
    return shuffle


def _plain(state: tuple[Any, ...]) -> list[Any]:
    """A Python generator's state as a list (`torch.load(weights_only=True)` reads lists back as lists)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python(plain: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = plain
    return version, tuple(internal), gauss


def _accelerator(device: str) -> Any:
    """The torch module holding the device's own generator (dropout on a GPU draws from it), or None."""
    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        return torch.cuda
    if kind == "mps" and torch.backends.mps.is_available():
        return torch.mps
    return None

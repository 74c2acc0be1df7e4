"""Data-parallel training under `torchrun` without code changes.

One process needs nothing from here. Under torchrun (WORLD_SIZE > 1) every process trains the same
model on its share of each optimizer step's batches; gradients are summed across processes so each
update equals the single-process update over the same batches, and validation sums are shared so
every process agrees on the best epoch. Only rank 0 reports and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from reqcheck.errors import ReqcheckError


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


SOLO = Group()


def start(device: str) -> tuple[Group, str]:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SOLO, device
    import torch.distributed as dist

    if device == "mps":
        raise ReqcheckError("Training under torchrun is not supported on mps; use --device cpu or cuda.")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Group(dist.get_rank(), dist.get_world_size(), owned), device


def stop(group: Group) -> None:
    """Leave the process group if this run created it."""
    if group.owned:
        import torch.distributed as dist

        dist.destroy_process_group()


def sum_grads(params: list[torch.Tensor], group: Group) -> None:
    """Sum every process's accumulated gradients in place (a process that saw no batch adds zeros)."""
    if group.world == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def sum_values(values: list[float], group: Group, device: str) -> list[float]:
    """Element-wise sum of `values` over all processes."""
    if group.world == 1:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(value: Any, group: Group) -> list[Any]:
    """Every process's `value`, by rank (each process's random state, for the checkpoint)."""
    if group.world == 1:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * group.world
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_params(params: list[torch.Tensor], group: Group) -> None:
    """Give every process rank 0's trainable weights, so all start (or resume) from the same point."""
    if group.world == 1:
        return
    import torch.distributed as dist

    for p in params:
        dist.broadcast(p.data, src=0)


def barrier(group: Group) -> None:
    """Wait until every process gets here (e.g. until rank 0 has written a checkpoint)."""
    if group.world > 1:
        import torch.distributed as dist

        dist.barrier()

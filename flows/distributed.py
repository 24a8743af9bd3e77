"""Where training runs: one process (CUDA when present, else CPU), or one of N under ``torchrun``.

``torchrun --nproc_per_node N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; each process
then takes its own GPU (NCCL) or, without GPUs, the CPU (gloo). Rank 0 is the one that evaluates,
saves, logs to MLflow and registers; the others only train their shard of the batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Placement", "placement", "replicas_agree", "wrap"]


@dataclass(frozen=True)
class Placement:
    """This process's rank, the number of processes and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process evaluates, saves and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether this is one of several ``torchrun`` processes."""
        return self.world_size > 1


@contextmanager
def placement() -> Iterator[Placement]:
    """This process's placement; under ``torchrun`` the process group lives for the block."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if world_size == 1:
        yield Placement(0, 1, torch.device("cuda" if cuda else "cpu"))
        return
    if cuda:
        torch.cuda.set_device(device)
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield Placement(dist.get_rank(), dist.get_world_size(), device)
    finally:
        if started_here:
            dist.destroy_process_group()


def wrap(model: nn.Module, where: Placement) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else as it is."""
    if not where.distributed:
        return model
    device_ids = [where.device.index] if where.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def replicas_agree(model: nn.Module, where: Placement) -> bool:
    """Whether every process holds the same trainable weights (DDP kept them in step)."""
    if not where.distributed:
        return True
    with torch.no_grad():
        sums = [p.detach().double().sum() for p in model.parameters() if p.requires_grad]
        total = torch.stack(sums).sum().to(where.device)
    gathered = [torch.zeros_like(total) for _ in range(where.world_size)]
    dist.all_gather(gathered, total)
    return all(torch.equal(g, gathered[0]) for g in gathered)

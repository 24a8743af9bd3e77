"""Where training runs: one process (CUDA when present, else CPU), or one of N under ``torchrun``.

``torchrun --nproc_per_node N`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; each process
then takes its own GPU (NCCL) or, without GPUs, the CPU (gloo). Rank 0 is the one that evaluates,
saves, logs to MLflow and registers; the others only train their shard of the batches.

Two ways to spread the model (``train.sharding``): DDP keeps a whole copy in every process and
all-reduces gradients; FSDP2 (``torch.distributed.fsdp.fully_shard``, per transformer block and
then the rest) keeps 1/N of every weight in each process, gathers a block's weights just before
it runs and reduce-scatters its gradients, so a base larger than one GPU trains. The adapter and
head then live as shards too: :func:`gathered` puts them back together (every process takes part)
before rank 0 evaluates and saves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from peft_core.sharding import shard_units
from peft_core.shards import has_shards, is_shard

__all__ = [
    "Placement",
    "gathered",
    "is_sharded",
    "placement",
    "replicas_agree",
    "shard",
    "summed",
    "wrap",
]


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
        if started_here:
            # Gloo's barrier waits for every earlier collective, so no process tears the group down
            # while a peer's work is still in flight (which aborted a CPU run at exit in CI:
            # "terminate called without an active exception").
            dist.barrier()
    finally:
        if started_here:
            dist.destroy_process_group()


def wrap(model: nn.Module, where: Placement, sharding: str = "ddp") -> nn.Module:
    """``model`` in DistributedDataParallel (``sharding="fsdp"``: sharded by FSDP2, in place)
    when there are several processes, else as it is."""
    if not where.distributed:
        return model
    if sharding == "fsdp":
        return shard(model, where)
    device_ids = [where.device.index] if where.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shard(model: nn.Module, where: Placement) -> nn.Module:
    """FSDP2 over ``where``'s processes: each transformer block (the classes transformers names in
    ``_no_split_modules``) is one unit, gathered only while it runs; the root holds the rest."""
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    mesh = init_device_mesh(where.device.type, (where.world_size,))
    for module in shard_units(model):  # the units adapterops plan --processes counts with
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards."""
    # peft_core.shards' one check: it does not import DTensor's module (until it is imported,
    # nothing can be a shard)
    return has_shards(model)


def gathered(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Whole tensors for sharded ones (others as they are). A collective: every process must call
    it, with the same keys in the same order."""
    return {
        key: value.full_tensor() if is_shard(value) else value for key, value in tensors.items()
    }


def summed(values: Sequence[float], where: Placement) -> list[float]:
    """Each of ``values`` added up over the processes (every process gets the sums). A
    collective: every process calls it with as many values."""
    if not where.distributed:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=where.device)
    dist.all_reduce(total)  # a sum
    return [float(value) for value in total]


def replicas_agree(model: nn.Module, where: Placement) -> bool:
    """Whether every process holds the same trainable weights (DDP kept them in step)."""
    if not where.distributed or is_sharded(model):
        return True  # FSDP2 holds one copy, in shards: nothing to compare
    with torch.no_grad():
        sums = [p.detach().double().sum() for p in model.parameters() if p.requires_grad]
        total = torch.stack(sums).sum().to(where.device)
    gathered = [torch.zeros_like(total) for _ in range(where.world_size)]
    dist.all_gather(gathered, total)
    return all(torch.equal(g, gathered[0]) for g in gathered)

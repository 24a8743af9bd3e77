"""FSDP2's shards of a model's weights, seen from one process.

``fully_shard`` turns each parameter into a ``DTensor`` whose local part is this process's rows
(dim 0, cut as ``torch.chunk`` cuts). Training keeps copies of the trainable weights (the best
step's, a checkpoint's); these helpers say whether a model is sharded, give the part a process
holds, and turn parts into whole tensors and back. ``torch.distributed.tensor`` is imported only
once something is sharded: without it imported no parameter can be a ``DTensor``, and not
importing it keeps ``import peft_core`` fast.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TypeGuard

from torch import Tensor, nn

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

__all__ = [
    "has_shards",
    "is_shard",
    "local_part",
    "local_part_of_whole",
    "whole_from_local_part",
]


def is_shard(tensor: Tensor) -> TypeGuard[DTensor]:
    """Whether ``tensor`` is a DTensor (an FSDP2 shard), without importing DTensor's module."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def has_shards(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor shard (FSDP2)."""
    return any(is_shard(p) for p in model.parameters())


def local_part(param: Tensor) -> Tensor:
    """What this process holds of ``param``: its shard's rows (a view: writing into it writes
    the parameter), or ``param`` itself when it is not sharded."""
    return param.to_local() if is_shard(param) else param


def whole_from_local_part(param: Tensor, part: Tensor) -> Tensor:
    """The whole tensor, on the CPU, whose shards sit in the processes as ``param``'s do, this
    process holding ``part``. A collective when sharded: every process calls it, in the same
    order."""
    if not is_shard(param):
        return part.cpu()
    sharded = type(param).from_local(
        part.to(param.device), param.device_mesh, param.placements,
        shape=param.shape, stride=param.stride(),
    )  # fmt: skip
    return sharded.full_tensor().cpu()


def local_part_of_whole(param: Tensor, whole: Tensor) -> Tensor:
    """This process's part of ``whole`` (on the CPU), cut as ``param`` is sharded; every process
    holds ``whole`` already, so nothing is sent."""
    if not is_shard(param):
        return whole
    from torch.distributed.tensor import distribute_tensor  # noqa: PLC0415

    cut = distribute_tensor(
        whole.to(param.device), param.device_mesh, param.placements, src_data_rank=None
    )
    return cut.to_local().cpu().clone()

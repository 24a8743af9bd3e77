"""What each of N processes holds of the weights when FSDP2 shards a model (``train.sharding:
fsdp``): the units it shards, and the bytes of weights kept and gathered per process.

FSDP2 (``torch.distributed.fsdp.fully_shard``) is applied once per transformer block (the
classes transformers lists in ``_no_split_modules``) and once at the root, which takes every
parameter outside the blocks (embeddings, final norm, output head). Each process keeps
``1/N`` of every parameter (dim 0, padded to a multiple of N). On top of its shard, at a
step's peak, a process holds whole:

- the root's weights, from the start of the forward pass to the end of the backward pass
  (FSDP2 does not reshard the root after forward: its weights are needed again at once), and
  its trainable gradients for the whole backward pass (the output head's come first, the root
  reduce-scatters last);
- the running block's weights, and the next block's twice (its all-gather buffer and the
  weights copied out of it): three blocks' worth when the blocks are alike, more beside a
  large unit such as BERT's embeddings;
- two copies of a block's trainable gradients (as autograd leaves them, and in the
  reduce-scatter buffer).

This is FSDP2's own bookkeeping, checked against its allocations counted by the profiler in two
and four gloo processes on a CPU (``tests/distributed/test_fsdp_memory.py``).

    units = pc.shard_units(model)            # the blocks, in order
    weights = pc.sharded_weight_bytes(model, processes=8)
    weights.kept + weights.gathered          # a process's weights at a step's peak
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from torch import nn

from .quantize import Quantization, stored_bytes_by_parameter

__all__ = ["ShardedWeights", "shard_units", "sharded_weight_bytes"]

# Whole copies of the next block's weights (all-gather buffer, weights) and of a block's
# trainable gradients (autograd's, reduce-scatter buffer) one process holds at once.
NEXT_BLOCK_COPIES, GRADIENT_COPIES = 2, 2


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards one by one (each gathered only while it runs): ``model``'s
    transformer blocks, in module order. The root (``model`` itself) is sharded last and holds
    the rest.

    The blocks are the classes ``model._no_split_modules`` names (transformers' list for
    device maps); a model without one (BERT's) gets the entries of its largest ``ModuleList``
    (its layers) instead, so that it is not gathered whole for every step."""
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    if blocks:
        return [module for module in model.modules() if type(module).__name__ in blocks]
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        return []
    layers = max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
    return list(layers)


@dataclass(frozen=True)
class ShardedWeights:
    """One process's bytes of weights under FSDP2 across ``processes`` processes.

    ``kept``: its shard of every parameter, for the whole run. ``gathered``: what it holds on
    top, at most, during a step: the root's whole parameters and trainable gradients, a running
    block's parameters with the next one's twice, and two copies of a block's trainable
    gradients.
    """

    processes: int
    kept: int
    gathered: int


def sharded_weight_bytes(
    model: nn.Module, processes: int, quantization: Quantization = "none"
) -> ShardedWeights:
    """What one of ``processes`` FSDP2 processes holds of ``model``'s parameters (stored as
    ``quantization`` says; from shapes and dtypes only, so a meta model answers too)."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    sizes = stored_bytes_by_parameter(model, quantization)
    kept = 0
    for parameter in model.parameters():
        rows = parameter.shape[0] if parameter.dim() else 1
        kept += sizes[id(parameter)] * math.ceil(rows / processes) // rows
    if processes == 1:
        return ShardedWeights(processes, kept, 0)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_blocks: set[int] = set()
    blocks, largest_trainable = [], 0
    for unit in shard_units(model):
        ids = {id(p) for p in unit.parameters()} - in_blocks
        in_blocks |= ids
        blocks.append(sum(sizes[i] for i in ids))
        largest_trainable = max(largest_trainable, sum(sizes[i] for i in ids & trainable))
    root = sum(size for key, size in sizes.items() if key not in in_blocks)
    root_trainable = sum(size for key, size in sizes.items() if key in trainable - in_blocks)
    return ShardedWeights(
        processes,
        kept,
        root + root_trainable + _running_and_next(blocks) + GRADIENT_COPIES * largest_trainable,
    )


def _running_and_next(blocks: list[int]) -> int:
    """The most one block running and the next one being gathered hold, in execution order:
    forward (first to last) and backward (last to first)."""
    if not blocks:
        return 0
    pairs = list(itertools.pairwise(blocks))
    return max(
        [NEXT_BLOCK_COPIES * blocks[0]]
        + [running + NEXT_BLOCK_COPIES * following for running, following in pairs]
        + [following + NEXT_BLOCK_COPIES * running for running, following in pairs]
    )

"""What each of N processes holds of the weights when FSDP2 shards a model (``train.sharding:
fsdp``): the units it shards, its shard of every weight, and a replay of what it gathers whole
during a training step.

FSDP2 (``torch.distributed.fsdp.fully_shard``) is applied once per transformer block and once
at the root, which takes every parameter outside the blocks (embeddings, final norm, output
head). Each process keeps ``1/N`` of every parameter (dim 0, padded to a multiple of N). On top
of its shard it holds whole, during a step:

- the root's weights, from the start of the forward pass to the end of the backward pass
  (FSDP2 does not reshard the root after forward: its weights are needed again at once), and
  the root's trainable gradients for the whole backward pass (the output head's come first,
  the root reduce-scatters last);
- the running block's weights, and the next block's (prefetched) twice for a moment: its
  all-gather buffer and the weights copied out of it;
- a block's trainable gradients until its backward is done, and a copy of them in the
  reduce-scatter buffer until the next block's reduce-scatter starts.

:class:`GatheringReplay` adds these to a :class:`~peft_core.memory.LiveTensorBytes` counter at
the moments they happen (module hooks on a fake-tensor step), so they meet the activations of
that moment, not the step's peak of them. Checked against FSDP2's own allocations, counted by
the profiler in 2 and 4 gloo processes on a CPU (``bench/fsdp_memory_bench.py``: LoRA within
4%, full fine-tuning 0.77-1.12 as its real peak moves between runs).

    units = pc.shard_units(model)             # the blocks, in order
    pc.sharded_weight_bytes(model, 8).kept    # one process's shard of every weight
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .errors import ConfigError
from .quantize import (
    BLOCK,
    SCALER_BLOCK,
    Quantization,
    quantizable_layers,
    stored_bytes_by_parameter,
)

if TYPE_CHECKING:
    from .memory import LiveTensorBytes

__all__ = [
    "GatheringReplay",
    "ShardedWeights",
    "check_shardable",
    "shard_units",
    "sharded_weight_bytes",
]

# FSDP2 copies a gathered unit out of its all-gather buffer: both whole, both alive for a moment.
COPY_FACTOR = 2
# keys of what is held beside the units' indices: the root's weights and gradients, and the
# last reduce-scatter's input (FSDP2 frees it only when the next reduce-scatter starts)
_ROOT, _ROOT_GRADIENTS, _REDUCE_SCATTER = -1, -2, -3


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


def check_shardable(model: nn.Module, quantization: Quantization, processes: int) -> None:
    """Refuse (:class:`ConfigError`) a base FSDP2 cannot split across ``processes`` once it is
    stored as ``quantization``: torchao's int8 weights do not split at all, and an NF4 weight
    splits only along its blocks of 64 x 256 values, so ``processes`` must divide every NF4
    weight's number of them. From shapes only (a meta model answers)."""
    if processes <= 1 or quantization == "none":
        return
    if quantization == "int8":
        raise ConfigError(
            "load.quantization int8 cannot be sharded by FSDP2 (torchao's int8 weights do not "
            "split across processes): use nf4, or train.sharding: ddp"
        )
    modules = dict(model.named_modules())
    counts = {
        name: modules[name].weight.numel() // (BLOCK * SCALER_BLOCK)
        for name in quantizable_layers(model, quantization)
    }
    uneven = {name: count for name, count in counts.items() if count % processes}
    if uneven:
        name, count = next(iter(uneven.items()))
        common = math.gcd(*counts.values())
        blocks = f"{count} block{'s' if count != 1 else ''}"
        instead = (
            f"start a number of processes that divides {common}, or use train.sharding: ddp"
            if common > 1  # one process would shard nothing
            else "no number of processes splits them all: use train.sharding: ddp"
        )
        raise ConfigError(
            f"load.quantization nf4 under FSDP splits each NF4 weight evenly across the "
            f"processes along its blocks of {BLOCK} x {SCALER_BLOCK} values, and {len(uneven)} "
            f"of the base's weights cannot be split across {processes} processes ({name}.weight "
            f"has {blocks}): {instead}"
        )


@dataclass(frozen=True)
class ShardedWeights:
    """One process's bytes of weights under FSDP2 across ``processes`` processes.

    ``kept``: its shard of every parameter, for the whole run. ``root`` and ``blocks`` (one per
    unit of :func:`shard_units`, in order): what each unit's whole weights take when gathered;
    ``root_trainable`` and ``blocks_trainable``: their trainable weights' share of that (a
    gradient of each is whole until the unit reduce-scatters).
    """

    processes: int
    kept: int
    root: int = 0
    root_trainable: int = 0
    blocks: tuple[int, ...] = ()
    blocks_trainable: tuple[int, ...] = ()


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
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_blocks: set[int] = set()
    blocks, blocks_trainable = [], []
    for unit in shard_units(model):
        ids = {id(p) for p in unit.parameters()} - in_blocks
        in_blocks |= ids
        blocks.append(sum(sizes[i] for i in ids))
        blocks_trainable.append(sum(sizes[i] for i in ids & trainable))
    root = {key: size for key, size in sizes.items() if key not in in_blocks}
    return ShardedWeights(
        processes, kept, sum(root.values()), sum(root[k] for k in root.keys() & trainable),
        tuple(blocks), tuple(blocks_trainable),
    )  # fmt: skip


class GatheringReplay:
    """FSDP2's gathering and freeing of whole weights in one process, replayed on ``model``'s
    training step (its forward hooks and its outputs' gradient hooks) and added to
    ``counter``; ``most`` is the most whole weights it held at once.

    ``model`` is the model the step runs (fake or real tensors); ``weights`` its
    :func:`sharded_weight_bytes`, computed before its weights were replaced. The step tells it
    where it is: :meth:`start_forward` before each forward pass (the root is gathered),
    :meth:`start_backward` before ``loss.backward()``, :meth:`end_backward` after it. Its hooks
    stay on the model's blocks: give it a model built for the estimate.
    """

    def __init__(self, model: nn.Module, weights: ShardedWeights, counter: LiveTensorBytes):
        self.units = shard_units(model)
        self.weights = weights
        self.counter = counter
        self.most = 0
        self._held: dict[int, int] = {}  # unit index (or _ROOT...) -> whole bytes held
        self._backward = False
        self._with_backward: list[int] = []  # units whose output needed a gradient, in order
        for index, unit in enumerate(self.units):
            unit.register_forward_pre_hook(lambda *_, i=index: self._before_unit(i))
            unit.register_forward_hook(lambda _m, _a, out, i=index: self._after_unit(i, out))

    def start_forward(self) -> None:
        """The root's weights are gathered for the whole forward and backward pass."""
        self._backward = False
        self._with_backward = []
        self._gather(_ROOT, self.weights.root)

    def start_backward(self) -> None:
        """The root's trainable gradients (output head first) stay whole until the end."""
        self._backward = True
        self._take(_ROOT_GRADIENTS, self.weights.root_trainable)

    def end_backward(self) -> None:
        """Every unit and then the root reduce-scatter and free what they gathered."""
        for index in [i for i in self._held if i >= 0]:
            self._free_unit(index)
        self._reduce_scatter(self.weights.root_trainable)
        for held in (_ROOT_GRADIENTS, _ROOT, _REDUCE_SCATTER):
            self._free(held)

    def _before_unit(self, index: int) -> None:
        if self._backward:  # a checkpointed block recomputing: gathered by its backward hook
            return
        self._gather(index, self.weights.blocks[index])
        if index + 1 < len(self.units):  # prefetched while this one runs
            self._gather(index + 1, self.weights.blocks[index + 1])

    def _after_unit(self, index: int, output: Any) -> None:
        if self._backward:
            return
        self._free(index)
        needs_gradient = [
            t for t in pytree.tree_leaves(output) if isinstance(t, Tensor) and t.requires_grad
        ]
        if needs_gradient:  # FSDP2 gathers a unit again only if its backward runs
            self._with_backward.append(index)
            needs_gradient[0].register_hook(lambda _grad, i=index: self._before_backward(i))

    def _before_backward(self, index: int) -> None:
        for done in [i for i in self._held if i >= 0 and i != index]:
            self._free_unit(done)
        self._gather(index, self.weights.blocks[index])
        self._take(index, self.weights.blocks_trainable[index])  # its gradients, whole
        earlier = [i for i in self._with_backward if i < index]
        if earlier:  # the next unit to run backward is prefetched
            self._gather(earlier[-1], self.weights.blocks[earlier[-1]])

    def _free_unit(self, index: int) -> None:
        """A unit's backward is done: its gradients go through the reduce-scatter buffer."""
        self._reduce_scatter(self.weights.blocks_trainable[index])
        self._free(index)

    def _reduce_scatter(self, size: int) -> None:
        """Gradients of ``size`` bytes copied whole into the reduce-scatter input, which stays
        until the next reduce-scatter starts (the previous one's is freed then)."""
        self._free(_REDUCE_SCATTER)
        self._take(_REDUCE_SCATTER, size)

    def _gather(self, index: int, size: int) -> None:
        if index not in self._held:
            self._transient(COPY_FACTOR * size)  # the all-gather buffer and the copied weights
            self._take(index, size)

    def _take(self, index: int, size: int) -> None:
        self._held[index] = self._held.get(index, 0) + size
        self.counter.hold(size)
        self.most = max(self.most, sum(self._held.values()))

    def _free(self, index: int) -> None:
        self.counter.hold(-self._held.pop(index, 0))

    def _transient(self, size: int) -> None:
        self.counter.touch(size)
        self.most = max(self.most, sum(self._held.values()) + size)

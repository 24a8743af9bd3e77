"""How much memory a training step takes, measured without using any: the step runs on fake
tensors (PyTorch's ``FakeTensorMode``: shapes, dtypes and devices, no storage) and every tensor
it creates is counted for as long as it lives.

    memory = pc.estimate_step_memory(
        config, pc.LoRA(rank=16, targets=("q", "k", "v", "o", "ffn_in", "ffn_out")),
        head="causal-lm",
        dtype=torch.bfloat16, batch_size=8, sequence_length=1024, precision="bf16",
        gradient_checkpointing=True)
    memory.peak_bytes          # weights + the step's own peak (activations, gradients, AdamW)

The step is ``pc.train``'s: the KV cache off, checkpointing as asked, the method's training
forward under autocast, backward, gradient clipping and an AdamW step, twice (the second holds
AdamW's moments from the first). Rows are full ``sequence_length`` (the most a padded batch
holds; a packed one holds no more). Counted are tensors, as ``torch.cuda.max_memory_allocated``
counts them (views of a tensor that exists are no new memory); not counted are the CUDA context
(~0.5 GB), kernel workspaces and the caching allocator's fragmentation. A quantised base is
estimated on its unquantised layers: its stored weights come from
:func:`~peft_core.quantize.stored_bytes`, and the one weight it dequantises at a time is left
out.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import PretrainedConfig

from .config import MethodConfig
from .errors import ConfigError, NotEstimableError
from .heads import HeadKind
from .inject import add_adapter
from .plan import build_on_meta
from .positions import position_limit
from .quantize import Quantization, stored_bytes
from .sharding import GatheringReplay, check_shardable, sharded_weight_bytes
from .training import (
    Precision,
    _autocast,
    _checkpointing,
    _trained_adapters,
    _training_forward,
    _without_kv_cache,
    check_counts,
)

__all__ = ["LiveTensorBytes", "StepMemory", "estimate_step_memory"]

# What a step that needs real values (data-dependent control flow or shapes) raises here.
_FAKE_TENSOR_LIMITS = (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
)


@dataclass(frozen=True)
class StepMemory:
    """The memory of one training step at its peak, in bytes.

    ``weights_bytes``: the frozen base as stored and the trainable weights. ``step_bytes``: the
    most the step held on top of them at once (activations, gradients, AdamW's moments,
    temporaries). ``peak_bytes``: their sum.

    Under FSDP2 across ``processes`` > 1 processes every figure is one process's:
    ``weights_bytes`` is its shard of every weight; ``step_bytes`` holds the whole weights it
    gathers (``gathered_bytes``: the most at once), its shards of the gradients and AdamW's
    moments, and its own rows' activations (``batch_size`` each).
    """

    batch_size: int
    sequence_length: int
    weights_bytes: int
    step_bytes: int
    peak_bytes: int
    processes: int = 1
    gathered_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return asdict(self)


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of every tensor storage created while it is active, for as long as the
    storage lives: ``live`` now, ``peak`` the most at once. Works on real and on fake tensors
    alike (a fake tensor has a storage of its size on the meta device).

    ``share`` is the part of each new storage's size that counts, and :meth:`count_share`
    changes it for one that exists: the estimate of a sharded step counts a gradient or an
    optimiser state at ``1/N`` of its size, what each of N processes holds of it.

    An op's output that shares an input's storage (a view, a transpose, an in-place result) is
    no new memory: without that rule every ``weight.t()`` of a linear layer counted the frozen
    weight again, for as long as the weight lived."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.share = 1.0
        self._counted: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:  # fmt: skip
        out = func(*args, **(kwargs or {}))
        given = {
            leaf.untyped_storage()._cdata
            for leaf in pytree.tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor)
        }
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                storage = leaf.untyped_storage()
                if storage._cdata not in given:
                    self._count(storage)
        return out

    def _count(self, storage: Any) -> None:
        if storage in self._counted:  # a view or an in-place result: no new memory
            return
        counted = [int(storage.nbytes() * self.share)]  # a cell: count_share may change it
        self._counted[storage] = counted
        self.live += counted[0]
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, counted)

    def count_share(self, tensor: torch.Tensor, share: float) -> None:
        """Count ``tensor``'s storage, from now on, at ``share`` of its size (nothing if this
        counter did not see it created)."""
        storage = tensor.untyped_storage()
        counted = self._counted.get(storage)
        if counted is not None:
            size = int(storage.nbytes() * share)
            self.live += size - counted[0]
            counted[0] = size

    def hold(self, size: int) -> None:
        """Count ``size`` bytes no tensor seen here owns (negative: stop counting them)."""
        self.live += size
        self.peak = max(self.peak, self.live)

    def touch(self, size: int) -> None:
        """``size`` bytes more for a moment: the peak sees them, ``live`` does not keep them."""
        self.peak = max(self.peak, self.live + size)

    def _release(self, counted: list[int]) -> None:
        self.live -= counted[0]


def estimate_step_memory(
    config: PretrainedConfig,
    method: MethodConfig,
    *,
    head: HeadKind,
    batch_size: int,
    sequence_length: int,
    dtype: torch.dtype = torch.float32,
    quantization: Quantization = "none",
    precision: Precision = "fp32",
    gradient_checkpointing: bool = False,
    attention: str | None = None,
    processes: int = 1,
) -> StepMemory:
    """The peak memory of a training step of ``method`` on the base of ``config`` (loaded in
    ``dtype``, stored with ``quantization``) over ``batch_size`` rows of ``sequence_length``
    tokens, measured on fake tensors (seconds, whatever the model's size).

    ``attention``: ``eager`` keeps every attention matrix (rows x heads x length squared) for
    the backward pass; the fused kernels (the default sdpa, flash attention, flex) keep one
    row of statistics per query, so any of them is measured as sdpa.

    ``processes`` > 1: one of that many FSDP2 processes (``train.sharding: fsdp`` under
    ``torchrun``), each training ``batch_size`` rows: its shard of the weights, and the step
    with the whole weights it gathers as the passes run
    (:class:`~peft_core.sharding.GatheringReplay`) and each gradient and optimiser state at
    ``1/processes`` of its size once it is sharded.
    """
    if head not in ("classification", "masked-lm", "causal-lm"):
        raise ValueError(f"no training step to estimate for head {head!r}")
    # "8" or 0 failed inside the model's forward, obscurely
    check_counts(
        {"batch_size": batch_size, "sequence_length": sequence_length, "processes": processes}
    )
    # plain ints in the StepMemory it returns, whatever integer type was given (NumPy's)
    batch_size, sequence_length, processes = int(batch_size), int(sequence_length), int(processes)
    config = copy.deepcopy(config)  # the pad id may be set
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = 0  # a classifier finds each row's last token by it
    kernel = "eager" if attention == "eager" else None  # the others: memory as sdpa's
    model = build_on_meta(config, head, dtype=dtype, attention=kernel)  # as plan builds it
    limit = position_limit(model)
    if limit is not None and sequence_length > limit:  # a shape error inside the fake step
        raise ConfigError(
            f"sequence_length {sequence_length} is more than the {limit} token positions this "
            f"model has (its position embeddings are learned): give {limit} or less"
        )
    check_shardable(model, quantization, processes)  # the base's layers, before adapters wrap them
    add_adapter(model, "estimate", method)
    trainable_bytes = sum(p.nbytes for p in model.parameters() if p.requires_grad)
    weights = stored_bytes(model, quantization) + trainable_bytes
    sharded = sharded_weight_bytes(model, processes, quantization)  # before the fakes
    if processes > 1:
        weights = sharded.kept
    with FakeTensorMode():
        _fake_weights(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        batch = _batch(head, batch_size, sequence_length)
        counter = LiveTensorBytes()
        replay = GatheringReplay(model, sharded, counter) if processes > 1 else None
        try:
            with counter:
                _two_steps(model, trainable, batch, precision, gradient_checkpointing,
                           counter=counter, replay=replay)  # fmt: skip
        except _FAKE_TENSOR_LIMITS as exc:
            raise NotEstimableError(
                f"a {type(method).__name__} training step cannot be measured on fake tensors "
                f"({type(exc).__name__}: it reads tensor values); measure one real step instead"
            ) from None
    return StepMemory(
        batch_size, sequence_length, weights, counter.peak, weights + counter.peak,
        processes, replay.most if replay else 0,
    )  # fmt: skip


def _fake_weights(model: nn.Module) -> None:
    """Every parameter and buffer of ``model`` (on the meta device) replaced by a fake CPU
    tensor of its shape and dtype, under the active ``FakeTensorMode``; tied weights stay tied."""
    fakes: dict[int, torch.Tensor] = {}

    def fake(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in fakes:
            empty = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
            if isinstance(tensor, nn.Parameter):
                empty = nn.Parameter(empty, requires_grad=tensor.requires_grad)
            fakes[id(tensor)] = empty
        return fakes[id(tensor)]

    for module in model.modules():
        for name, parameter in module._parameters.items():
            if parameter is not None:
                module._parameters[name] = fake(parameter)  # type: ignore[assignment]
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = fake(buffer)


def _batch(head: str, rows: int, length: int) -> dict[str, torch.Tensor]:
    ids = torch.ones(rows, length, dtype=torch.long)
    labels = torch.zeros(rows, dtype=torch.long) if head == "classification" else ids
    return {"input_ids": ids, "labels": labels}


def _two_steps(
    model: nn.Module,
    trainable: list[nn.Parameter],
    batch: dict[str, torch.Tensor],
    precision: Precision,
    gradient_checkpointing: bool,
    *,
    counter: LiveTensorBytes,
    replay: GatheringReplay | None = None,
) -> None:
    """What ``pc.train`` does in two optimiser steps, minus reading the loss (fake tensors have
    no values) and fp16's loss scaler (a few scalars).

    With a ``replay`` (one of N FSDP2 processes): it adds the whole weights and gradients FSDP2
    gathers as the passes run; a gradient counts at its share (1/N) once accumulated, and
    everything clipping and AdamW create too (the optimiser only ever sees shards)."""
    share = 1 / replay.weights.processes if replay else 1.0
    if replay:
        for parameter in trainable:
            parameter.register_post_accumulate_grad_hook(
                lambda p: counter.count_share(p.grad, share)
            )
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    forward = _training_forward(model, _trained_adapters(model))
    device = trainable[0].device
    model.train()
    with _without_kv_cache(model), _checkpointing(model, enabled=gradient_checkpointing):
        for _ in range(2):
            if replay:
                replay.start_forward()
            with _autocast(device, precision):
                loss = forward(**batch).loss
            if replay:
                replay.start_backward()
            loss.backward()
            if replay:
                replay.end_backward()
            counter.share = share  # clipping and AdamW run on shards
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            counter.share = 1.0

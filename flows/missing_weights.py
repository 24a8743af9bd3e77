"""Weights a base checkpoint lacks, drawn the same on every load.

transformers initialises the weights a checkpoint does not hold from the global random generator,
on whatever device they load to. Most of them belong to a new classification head, which each
adapter copies, trains and saves: their start does not matter after training. A frozen head the
checkpoint lacks is another matter: sentence-transformers' MiniLM ships no masked-LM transform,
so a masked-LM adapter trains against a random one; loaded again (evaluation, prediction, the other
processes of a sharded run), it met a different random head, and predicted noise while its
recorded perplexity no longer reproduced. Here every such weight is redrawn from a generator seeded
by its name, on the CPU, at the model's initializer range: the same on every load, every device,
every process.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable

import torch
from torch import nn

import peft_core as pc

__all__ = ["settle_missing_weights"]

_log = logging.getLogger(__name__)


def settle_missing_weights(model: nn.Module, missing: Iterable[str]) -> list[str]:
    """Redraw the random weights among ``missing`` (``from_pretrained``'s missing keys) from
    fixed generators, except those of a head the adapters copy and train; the names redrawn.
    Constant starts (biases, norms) are already the same on every load and stay."""
    head = pc.detect_head(model)
    owned = tuple(f"{module}." for module in head.modules) if head.trainable else ()
    std = float(getattr(model.config, "initializer_range", 0.02))
    redrawn = []
    for name in sorted(missing):
        if name.startswith(owned):
            continue
        weight = _tensor(model, name)
        if weight is None or weight.dim() < 2 or not weight.is_floating_point():
            continue  # a constant start, or quantised storage
        if weight.device.type == "meta":
            continue  # offloaded: its value lives elsewhere and loads with the block
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        drawn = torch.randn(weight.shape, generator=generator) * std
        with torch.no_grad():
            weight.copy_(drawn.to(weight.dtype))
        redrawn.append(name)
    if redrawn:
        _log.info("not in the checkpoint, drawn from fixed seeds: %s", ", ".join(redrawn))
    return redrawn


def _tensor(model: nn.Module, name: str) -> torch.Tensor | None:
    """The parameter or buffer called ``name``, or None (a key transformers reported but the
    model no longer holds under that name)."""
    module_name, _, attribute = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return None
    value = getattr(module, attribute, None)
    return value if isinstance(value, torch.Tensor) else None

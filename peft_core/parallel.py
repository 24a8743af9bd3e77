"""``Parallel``: the same input through several adapters in one forward pass.

    pc.set_active(model, pc.Parallel("sst2", "imdb"))
    out = model(**batch)                              # logits for 2 x batch rows
    per_adapter = pc.parallel_outputs(model, out.logits)   # {"sst2": ..., "imdb": ...}

While a ``Parallel`` is active, a forward pre-hook repeats the batch once per adapter (every
tensor argument whose first dimension is the batch) and routes copy ``k`` through adapter ``k``
with the per-row machinery, heads included; the output holds the copies one after the other.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .composition import Parallel
from .errors import ConfigError
from .routing import install_routing, remove_routing

__all__ = ["activate_parallel", "deactivate_parallel", "parallel_outputs"]

_STATE = "peft_core_parallel"


def activate_parallel(model: nn.Module, block: Parallel) -> None:
    """Install the hooks that run ``block`` on every forward pass (validated: plain names)."""
    deactivate_parallel(model)
    names = tuple(str(child) for child in block.children)
    handles = (
        model.register_forward_pre_hook(_replicate, with_kwargs=True),
        model.register_forward_hook(_release),
    )
    model.__dict__[_STATE] = (names, handles)


def deactivate_parallel(model: nn.Module) -> None:
    """Remove the hooks (no-op when no Parallel is active)."""
    state: tuple[tuple[str, ...], tuple[RemovableHandle, ...]] | None = model.__dict__.pop(
        _STATE, None
    )
    if state is not None:
        for handle in state[1]:
            handle.remove()
        remove_routing(model)


def parallel_adapters(model: nn.Module) -> tuple[str, ...]:
    """The adapters an active ``Parallel`` runs (``()``: none is active)."""
    state = model.__dict__.get(_STATE)
    return state[0] if state is not None else ()


def parallel_outputs(model: nn.Module, output: Tensor) -> dict[str, Tensor]:
    """Split a Parallel forward's output into one tensor per adapter."""
    state = model.__dict__.get(_STATE)
    if state is None:
        raise ConfigError("no Parallel composition is active")
    names = state[0]
    rows = output.shape[0] // len(names)
    return {name: output[i * rows : (i + 1) * rows] for i, name in enumerate(names)}


def _replicate(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    names = model.__dict__[_STATE][0]
    first = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    if first is None and args:
        first = args[0]
    if not isinstance(first, Tensor):
        raise ConfigError("Parallel needs input_ids or inputs_embeds to find the batch size")
    batch = first.shape[0]

    def repeat(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return value.repeat(len(names), *([1] * (value.dim() - 1)))
        return value

    install_routing(model, [name for name in names for _ in range(batch)])
    return tuple(repeat(a) for a in args), {k: repeat(v) for k, v in kwargs.items()}


def _release(model: nn.Module, args: Any, output: Any) -> None:
    del args, output
    remove_routing(model)

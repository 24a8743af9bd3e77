"""Base layers that accelerate keeps off their device (``device_map`` with ``"cpu"`` or ``"disk"``).

A base bigger than the GPUs loads with ``from_pretrained(..., device_map=...)``: accelerate keeps
some layers' weights in CPU memory or on disk, leaves those parameters on the ``meta`` device, and
hooks each layer so its weights are brought to the *execution device* for its forward and dropped
after. Adapters never go through that: they are small, so they live on the execution device
from the start (built there, see :attr:`peft_core.methods.base.LayerSite.device`) and the hook
leaves them alone, since it only moves the tensors it offloaded.

What reads a base weight outside the base layer's own forward (IA³ on a feed-forward layer,
PiSSA's decomposition) gets it through :func:`current_weight`, which brings it in for the moment.
What writes base weights (merging) or reads them on every call for a cached table (DoRA's row
norms) is refused on such a layer in one line (:func:`offloaded_weight_message`).
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from accelerate.utils import align_module_device, has_offloaded_params
from torch import Tensor, nn

__all__ = [
    "current_weight",
    "execution_device",
    "input_device",
    "is_offloaded",
    "offloaded_weight_message",
    "onloaded_copy",
]


def execution_device(module: nn.Module) -> torch.device | None:
    """The device accelerate runs ``module``'s forward on, when a hook of its says so."""
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", None) or ([hook] if hook is not None else [])  # SequentialHook
    for one in hooks:
        device = getattr(one, "execution_device", None)
        if device is not None:
            return torch.device(device)  # an int is a CUDA index
    return None


def input_device(model: nn.Module) -> torch.device:
    """Where ``model``'s inputs go: its first parameter's device, or that layer's execution
    device when accelerate offloads it."""
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if parameter.is_meta:
                return execution_device(module) or parameter.device
            return parameter.device
    return torch.device("cpu")


def is_offloaded(module: nn.Module) -> bool:
    """Whether ``module``'s own weights are kept off its device (on ``meta`` between forwards)."""
    return bool(has_offloaded_params(module))


def current_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """``module``'s parameter ``name``, brought onto the execution device when accelerate keeps
    it elsewhere (a copy, gone when the caller drops it; the module keeps its ``meta`` one)."""
    if not is_offloaded(module):
        return cast(Tensor, getattr(module, name))
    with align_module_device(module):
        return cast(Tensor, getattr(module, name))


def onloaded_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every tensor in memory on its execution device and no
    accelerate hooks: a hook copied along would swap the copy's own (trained) weights for the
    original's offloaded ones on every forward."""
    duplicate = copy.deepcopy(module)
    for name, original in module.named_modules():
        target = duplicate.get_submodule(name)
        if is_offloaded(original):
            with align_module_device(original), torch.no_grad():
                for key, value in original.named_parameters(recurse=False):
                    target._parameters[key] = nn.Parameter(value.clone(), value.requires_grad)
                for key, buffer in original.named_buffers(recurse=False):
                    target._buffers[key] = buffer.clone()
        for hooked in ("_hf_hook", "_old_forward", "forward"):  # back to the class's forward
            target.__dict__.pop(hooked, None)
    return duplicate


def offloaded_weight_message(module_name: str, what: str) -> str:
    """The one line for work that needs the weights of an offloaded base layer."""
    return (
        f"{what} needs the base weights of {module_name}, which accelerate keeps in CPU memory or "
        "on disk (device_map with 'cpu' or 'disk' entries): load the base model onto devices "
        "that hold it whole (more GPUs, or a quantised base) to do this"
    )

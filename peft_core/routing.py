"""A different adapter per row of one batch, in one forward pass.

    with pc.per_row(model, ["a", "b", None, "a"]):   # row i uses adapter i; None = base model
        out = model(**batch)

In every adapted layer each adapter type is computed once for the whole batch by the module
class's ``batched(modules, index)`` (defined beside each method): the adapters' weights are
stacked (slot 0 is all zeros, for rows without an adapter there), each row gathers its own, and
batched matrix products do the rest. The per-row weights are gathered once, when the ``per_row``
block is entered, so each forward pass costs two batched products per LoRA layer. The
cost stays nearly flat as the number of distinct adapters grows: no loop over adapters, no
sub-batches (peft's ``adapter_names`` runs one sub-batch per adapter). LoRAs of different ranks
are zero-padded to the largest rank and bottlenecks to the widest bottleneck: zero rows and
columns add exactly nothing.

Routing is for inference: dropout is not applied, and merged adapters are refused.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .methods import method_of
from .methods.parts import SliceParts
from .state import adapter_layers, get_record, head_switches

__all__ = [
    "KERNELS",
    "Kernel",
    "auto_kernel",
    "install_routing",
    "per_row",
    "remap_slots",
    "remove_routing",
    "segmented_wins",
]


Step = Callable[[Tensor, Tensor], Tensor]  # (layer input x, output so far y) -> new y


Kernel = Literal["gather", "segmented", "auto", "triton"]
KERNELS: tuple[Kernel, ...] = ("gather", "segmented", "auto", "triton")


@contextmanager
def per_row(
    model: nn.Module, rows: Iterable[str | None], *, kernel: Kernel = "gather"
) -> Iterator[None]:
    """Within the block, batch row ``i`` runs through adapter ``rows[i]`` (``None``: the base).

    ``kernel`` picks how LoRA layers compute: ``gather`` (BGMV-style: each row gathers its own
    weights, two batched products) or ``segmented`` (SGMV-style: rows sorted by adapter, one
    grouped product per adapter, ``torch._grouped_mm``; in half precision on CUDA), ``triton``
    (CUDA): SGMV-style shrink and expand in Triton (:mod:`peft_core.lora_triton`) with float32
    weights and intermediate, rows left in place, or ``auto``: for a prefill in half precision on
    CUDA ``triton`` (``segmented`` without Triton or on a GPU older than Ampere), ``gather``
    otherwise (decoding, CPU, float32), as each won on an H200 (:func:`auto_kernel`). They give
    the same outputs, to half precision's rounding. Layers of other methods (and DoRA) route
    with ``gather`` under every kernel.
    """
    install_routing(model, rows, kernel=kernel)
    try:
        yield
    finally:
        remove_routing(model)


def install_routing(
    model: nn.Module, rows: Iterable[str | None], *, kernel: Kernel = "gather"
) -> None:
    """Prepare every layer and head to route row ``i`` through ``rows[i]``."""
    rows = _row_names(rows)
    if kernel not in KERNELS:
        raise ConfigError(f"per_row kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    device = next(model.parameters()).device
    if kernel == "triton":
        _check_triton(device)
    names = sorted({name for name in rows if name is not None})
    for name in names:
        record = get_record(model, name)  # unknown names fail before anything changes
        if method_of(record.config).places_itself:
            raise ConfigError(
                f"per_row cannot route {name!r}: peft runs its layers, which take one adapter "
                "per batch; run its rows in a batch of their own"
            )
    # (layer, the names it holds, in name order, and their modules); the checks before any change
    held = [(layer, dict(layer.adapters.items())) for _, layer in adapter_layers(model)]
    layers = [(layer, [n for n in names if n in own], own) for layer, own in held]
    merged = sorted({n for _, present, own in layers for n in present if own[n].merged})
    if merged:
        raise ConfigError(f"per_row needs unmerged adapters; unmerge {merged} first")
    switches = [switch for _, switch in head_switches(model)]
    index_of = _IndexTensors(device)
    slots_of: dict[tuple[str, ...], list[int]] = {}  # layers mostly hold the same adapters
    with torch.no_grad():
        for layer, present, own in layers:
            if (key := tuple(present)) not in slots_of:
                position = {n: slot for slot, n in enumerate(present, start=1)}
                slots_of[key] = [position.get(n, 0) if n else 0 for n in rows]
            modules = [own[n] for n in present]
            layer.routing = RowRouting(len(rows), _plan(modules, slots_of[key], index_of, kernel))
    for switch in switches:
        switch.rows = list(rows)


def _row_names(rows: Iterable[str | None]) -> list[str | None]:
    """``rows`` read once as a list (a generator, a tuple, a NumPy array of names), refused
    when it is not one adapter name or None per row."""
    if isinstance(rows, str):  # "ab" was two rows, through adapters "a" and "b"
        raise ConfigError(
            f"per_row takes one adapter name (or None) per batch row, a list; got the string "
            f"{rows!r:.40}: [{rows!r:.40}] for one row"
        )
    listed = list(rows)
    for index, row in enumerate(listed):
        if row is not None and not isinstance(row, str):  # NumPy's str_ is a str
            raise ConfigError(
                f"per_row takes adapter names (or None for the base), one per batch row; row "
                f"{index} is {type(row).__name__} {row!r:.40}: map ids to names first, e.g. "
                "[names[i] for i in ids]"
            )
    return listed


def remove_routing(model: nn.Module) -> None:
    """Back to the active adapter or composition."""
    for _, layer in adapter_layers(model):
        layer.routing = None
    for _, switch in head_switches(model):
        switch.rows = None


class RowRouting:
    """One layer's prepared per-row computation."""

    def __init__(self, rows: int, steps: list[Step]) -> None:
        self.rows = rows
        self.steps = steps

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if y.shape[0] != self.rows:
            raise ConfigError(_row_count_mismatch(self.rows, y.shape[0]))
        for step in self.steps:
            y = step(x, y)
        return y


def _row_count_mismatch(names: int, rows: int) -> str:
    """What to say when a batch has another number of rows than ``per_row`` has names."""
    said = f"per_row was given {names} row names for a batch of {rows} rows"
    if not names or rows % names or rows < names:
        return said
    # generate() repeats each prompt num_beams (or num_return_sequences) times, side by side
    times = rows // names
    return (
        f"{said}: generate with num_beams or num_return_sequences {times} repeats each row "
        f"{times} times; give each row's name {times} times too "
        f"([name for name in names for _ in range({times})])"
    )


class _IndexTensors:
    """Slot lists as device tensors, one per distinct list: the layers of a model mostly share
    theirs, and every list built on a GPU is a host-to-device copy."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.made: dict[tuple[int, ...], Tensor] = {}

    def __call__(self, slots: list[int]) -> Tensor:
        key = tuple(slots)
        if key not in self.made:
            self.made[key] = torch.tensor(slots, device=self.device)
        return self.made[key]


def _plan(
    modules: list[nn.Module], slots: list[int], index_of: _IndexTensors, kernel: Kernel = "gather"
) -> list[Step]:
    """Group the layer's adapters by module type; each group becomes one batched step.

    ``slots[i]`` is row ``i``'s adapter, ``modules[slots[i] - 1]`` (0: none). Slots are worked
    out as lists on the host, so preparing a layer never waits for the GPU. A group no row uses
    adds no step; a group whose rows all use one adapter runs that adapter as ``set_active``
    would, over the whole batch, without stacking anything.
    """
    groups: dict[type, list[int]] = defaultdict(list)
    for slot, module in enumerate(modules, start=1):
        groups[type(module)].append(slot)
    steps: list[Step] = []
    for kind, kind_slots in groups.items():
        position = {slot: local for local, slot in enumerate(kind_slots, start=1)}
        local = [position.get(s, 0) for s in slots]
        members = [modules[s - 1] for s in kind_slots]
        if set(local) == {0}:
            continue  # no row uses an adapter of this kind here
        if kind is SliceParts:
            fused = [cast(SliceParts, m) for m in members]
            for part in fused[0].parts:  # the same targets give the same parts
                steps += _plan([m.parts[part] for m in fused], local, index_of, kernel)
        elif not hasattr(kind, "batched"):
            raise ConfigError(f"per_row cannot route {kind.__name__} adapters")
        elif len(set(local)) == 1 and not _drops_out(members[local[0] - 1]):
            steps.append(members[local[0] - 1])  # one adapter for every row: its own forward
        else:
            steps.append(_kernel_step(kind, members, local, index_of, kernel))
    return steps


def segmented_wins(x: Tensor) -> bool:
    """Whether ``auto`` leaves gather for a LoRA layer's input ``x``: a prefill (more than one
    token a row) in half precision on CUDA. On an H200 (``bench.multi_lora_bench``) gather cost
    1.12-1.42x one adapter in such a prefill with 4-64 distinct adapters; in decoding gather
    stayed at 0.76-1.05x, ahead of Triton (0.86-1.28x) and the grouped GEMM (up to 2.5x), and
    on a CPU gather won."""
    tokens_per_row = x.numel() // max(1, x.shape[0] * x.shape[-1])
    return x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and tokens_per_row > 1


def auto_kernel(x: Tensor, *, triton_ready: bool) -> Literal["gather", "segmented", "triton"]:
    """``auto``'s kernel for a LoRA layer's input ``x``: where :func:`segmented_wins`, Triton's
    (``triton_ready``: see :func:`triton_runs_on`) or else the grouped GEMM; gather elsewhere.
    On an H200 (bf16, every linear layer adapted, 32 rows of 256 tokens) a prefill with 4, 16
    and 32 distinct adapters cost 0.74x, 1.00x and 0.99x one adapter through Triton, 1.17x,
    1.50x and 1.27x through the grouped GEMM."""
    if not segmented_wins(x):
        return "gather"
    return "triton" if triton_ready else "segmented"


@functools.cache
def triton_runs_on(device: torch.device) -> bool:
    """Whether ``auto`` may use the Triton kernel on ``device``: a CUDA GPU of compute
    capability 8.0 or later (Ampere: its float32 products run in TF32 there, and they were
    measured on Hopper) with the triton package importable."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        return False
    return importlib.util.find_spec("triton") is not None


class _ByPhase:
    """``auto``'s step: gather, segmented or Triton by :func:`auto_kernel`, each prepared when
    first needed (``generate`` runs one prefill, then many decoding steps)."""

    def __init__(
        self, kind: type, members: list[nn.Module], local: list[int], index: Tensor, triton: bool
    ) -> None:
        self.kind, self.members, self.local, self.index = kind, members, local, index
        self.triton_ready = triton and triton_runs_on(index.device)
        self.steps: dict[str, Step] = {}

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        kernel = auto_kernel(x, triton_ready=self.triton_ready)
        if kernel not in self.steps:
            routes: Any = self.kind
            if kernel == "triton":
                self.steps[kernel] = routes.triton(self.members, self.local, self.index.device)
            else:
                build = routes.segmented if kernel == "segmented" else routes.batched
                self.steps[kernel] = build(self.members, self.index)
        return self.steps[kernel](x, y)


def _kernel_step(
    kind: type, members: list[nn.Module], local: list[int], index_of: _IndexTensors, kernel: Kernel
) -> Step:
    """One group's step under ``kernel``: the method's own segmented or Triton variant where its
    class defines one next to ``batched`` (DoRA, a LoRA subclass, must not inherit LoRA's),
    else ``batched`` (gather)."""
    routes: Any = kind  # the variants are optional static methods of the module class
    own = _owner(kind, "batched")
    if kernel == "triton" and _owner(kind, "triton") is own:
        return routes.triton(members, local, index_of.device)
    if kernel == "segmented" and _owner(kind, "segmented") is own:
        return routes.segmented(members, index_of(local))
    if kernel == "auto" and _owner(kind, "segmented") is own:
        has_triton = _owner(kind, "triton") is own
        return _ByPhase(kind, members, local, index_of(local), has_triton)
    return routes.batched(members, index_of(local))


def _check_triton(device: torch.device) -> None:
    """``triton``'s needs, before any layer changes: the package, and a CUDA device (or Triton's
    interpreter, which tests use on a CPU)."""
    try:
        import triton  # noqa: F401, PLC0415
    except ImportError:
        raise ConfigError(
            "per_row kernel 'triton' needs the triton package (CUDA builds of torch bring it): "
            "pip install triton, or use kernel='gather'"
        ) from None
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(
            f"per_row kernel 'triton' runs on CUDA GPUs and this model is on {device.type}: use "
            "kernel='gather' (TRITON_INTERPRET=1 runs it, slowly, through Triton's interpreter)"
        )


def _owner(kind: type, attribute: str) -> type | None:
    """The class in ``kind``'s hierarchy that defines ``attribute`` (a subclass with its own
    ``batched``, DoRA's, must not inherit LoRA's ``segmented``)."""
    return next((c for c in kind.__mro__ if attribute in vars(c)), None)


def _drops_out(module: nn.Module) -> bool:
    """Whether ``module``'s own forward would apply dropout (routing never does)."""
    return any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in module.modules())


def remap_slots(index: Tensor, slots: list[int], slot_count: int | None = None) -> Tensor:
    """Slots of the layer -> slots of one group (others become 0: no adapter of this kind).
    ``slot_count`` (the layer's adapters + 1) spares a wait for the GPU to read ``index.max()``."""
    if slot_count is None:
        slot_count = int(index.max().item()) + 1 if index.numel() else 1
    table = [0] * slot_count  # built on the host, copied once
    for position, slot in enumerate(slots, start=1):
        if slot < slot_count:
            table[slot] = position
    return torch.tensor(table, dtype=torch.long, device=index.device)[index]

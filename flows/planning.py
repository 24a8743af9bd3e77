"""What a spec's adapter will cost, before anything is loaded: parameters, file size and memory
(``adapterops plan``), and whether one training step fits the GPU it is about to run on (checked
with the other inputs before a build or train loads the model).

Everything here reads the base model's config.json only: models are built on the meta device,
and the step's memory is measured on fake tensors (``peft_core.memory``).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import peft_core as pc

from .errors import DataError
from .models import base_config

if TYPE_CHECKING:
    from .spec import AdapterSpec, PlanSpec

__all__ = ["check_max_length", "check_step_fits", "plan_spec", "plan_step", "planned_precision"]

# The estimate's own error: on an H200 it was 1.1-1.6% under the measured peak with gradient
# checkpointing and 3.2-3.3% over without (bench/gpu_bench.py). A step this close is let through
# with a warning, not refused.
_MARGIN = 0.03
# Under FSDP the figure also replays what FSDP2 gathers and frees. Against the peaks counted in
# gloo processes on a CPU (bench/fsdp_memory_bench.py): LoRA 0.96-1.02, full fine-tuning
# 0.77-1.12, whose real peak moves by up to 30% between runs as the asynchronous collectives'
# buffers pile up or not. A step is let through silently 15% under the limit, with a warning up
# to 15% over it, refused beyond.
_SHARDED_MARGIN, _SHARDED_OVER = 0.15, 0.15


def planned_precision(spec: AdapterSpec | PlanSpec) -> str:
    """The precision a GPU trains ``spec`` in: ``train.precision``, or for ``auto`` autocast in
    the base's half dtype (fp32 for a float32 base)."""
    if spec.train.precision != "auto":
        return spec.train.precision
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(
        str(spec.load.torch_dtype()), "fp32"
    )


def check_max_length(spec: AdapterSpec | PlanSpec) -> None:
    """A base with learned position embeddings takes at most that many tokens: a longer
    ``train.max_length`` would fail mid-training on the first long text (and in ``plan``'s
    step), with a shape error. A base with rotary or relative positions takes any length, but
    was pre-trained on at most ``max_position_embeddings`` tokens (its config's context, a
    RoPE-scaled one included): a longer ``train.max_length`` is said, as a warning."""
    config = base_config(spec)
    length = spec.train.max_length
    limit = pc.position_limit(pc.build_on_meta(config, spec.head.type))
    if limit is not None and length > limit:
        raise DataError(
            f"train.max_length {length} is more than the {limit} token positions "
            f"{spec.base_model} has (its position embeddings are learned): set train.max_length "
            f"to {limit} or less"
        )
    context = getattr(config, "max_position_embeddings", None)
    if limit is None and isinstance(context, int) and length > context:
        # Nothing fails: the positions past the context are extrapolated, which is where long
        # inputs degrade (a spec copied from a longer-context base is the usual way here).
        warnings.warn(
            f"{spec.name}: train.max_length {length} is more than the {context} tokens "
            f"{spec.base_model} was pre-trained on (max_position_embeddings in its config.json): "
            "positions past them were never seen, and longer texts (packed batches fill "
            f"train.max_length) usually answer worse; set train.max_length to {context} or less",
            RuntimeWarning,
            stacklevel=2,
        )


def plan_step(spec: AdapterSpec | PlanSpec, processes: int = 1) -> pc.StepMemory | None:
    """The peak memory of one training step of ``spec``'s adapter over ``train.batch_size``
    rows of ``train.max_length`` tokens, estimated on fake tensors; None for a fusion (its
    members' weights come from the registry).

    ``processes``: under ``torchrun`` with ``train.sharding: fsdp``, one process's figure (its
    shard of the weights and what it gathers); DDP keeps a whole model in every process, so
    its figure is one process's whatever their number."""
    if spec.method.type == "fusion":
        return None
    sharded = processes if spec.train.sharding == "fsdp" else 1
    return pc.estimate_step_memory(
        base_config(spec), spec.method.to_config(), head=spec.head.type,
        batch_size=spec.train.batch_size, sequence_length=spec.train.max_length,
        dtype=spec.load.torch_dtype(), quantization=spec.load.quantization,
        precision=planned_precision(spec),  # type: ignore[arg-type]
        gradient_checkpointing=spec.train.gradient_checkpointing,
        attention=spec.load.attn_implementation(), processes=sharded,
    )  # fmt: skip


def check_quantized_storage(spec: AdapterSpec | PlanSpec, processes: int) -> None:
    """Refuse a ``load.quantization`` the base cannot be stored in, from its config alone: no
    layer torchao can store so (what loading it refuses, after the data is read), or, under
    FSDP in ``processes`` processes, quantised weights too few blocks to split (what
    ``fully_shard`` fails on, inside torchao). ``plan`` and ``build`` say it before any work."""
    quantization = spec.load.quantization
    if quantization == "none":
        return
    skeleton = pc.build_on_meta(base_config(spec), spec.head.type)
    pc.quantize.quantization_config(skeleton, quantization)
    if spec.train.sharding == "fsdp":
        pc.check_shardable(skeleton, quantization, processes)


def plan_spec(spec: AdapterSpec | PlanSpec) -> pc.Plan:
    """The cost of ``spec``'s adapter, computed on the meta device (no weights are loaded)."""
    config = base_config(spec)
    dtype, quantization = spec.load.torch_dtype(), spec.load.quantization
    if spec.method.type != "fusion":
        return pc.plan(
            config, spec.method.to_config(), head=spec.head.type, dtype=dtype,
            quantization=quantization,
        )  # fmt: skip
    # A fusion is costed over its members as registered: their configs come from the specs
    # they were built from (registry metadata only; no weights are read).
    from registry import Registry  # noqa: PLC0415

    from .spec import FusionSpec, member_name, spec_of_version  # noqa: PLC0415

    assert isinstance(spec.method, FusionSpec)  # (its type is "fusion")

    model = pc.build_on_meta(config, spec.head.type, dtype=dtype)
    registry = Registry(create=False)  # its members are registered already, or it is a typo
    for ref in spec.method.members:
        member = spec_of_version(registry.get(ref), "planning a fusion over it")
        pc.add_adapter(model, member_name(ref), member.method.to_config())
        for param in model.parameters():
            param.requires_grad_(False)  # members are frozen under a fusion
    pc.add_adapter(model, spec.name, spec.method.to_config())
    return pc.measure(model, spec.name, quantization=quantization)


def check_step_fits(
    spec: AdapterSpec, device_bytes: int, device_name: str = "this GPU", processes: int = 1
) -> None:
    """Refuse, before the model is loaded, a spec whose training step needs more memory than
    ``device_bytes``: the run would fail with out-of-memory minutes later, after loading the
    base. A method the estimate cannot measure (``NotEstimableError``) is let through.
    ``processes``: how many ``torchrun`` started (an FSDP process holds a shard)."""
    try:
        step = plan_step(spec, processes)
    except pc.NotEstimableError:
        return
    gib = 2**30
    if step is None:
        return
    margin, over = (_MARGIN, 0.0) if step.processes == 1 else (_SHARDED_MARGIN, _SHARDED_OVER)
    if step.peak_bytes <= device_bytes * (1 - margin):
        return
    needs = f"one training step of {spec.name} needs about {step.peak_bytes / gib:.1f} GiB"
    if step.processes > 1:
        needs += f" per process of {step.processes} (FSDP)"
    if step.peak_bytes <= device_bytes * (1 + over):
        relation = "of the" if step.peak_bytes <= device_bytes else "against the"
        band = f"{margin:.0%} under" + (f" to {over:.0%} over" if over else "")
        warnings.warn(
            f"{needs} {relation} {device_bytes / gib:.1f} GiB free on {device_name}: within "
            f"{band} the limit, where the estimate's own error lies; the run goes ahead, but "
            "may run out of memory (lower train.batch_size to be safe)",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    more = ", or train on more GPUs (train.processes)" if step.processes > 1 else ""
    raise DataError(
        f"{needs} ({spec.train.batch_size} rows x {spec.train.max_length} tokens, weights "
        f"{step.weights_bytes / gib:.1f} GiB) but {device_name} has {device_bytes / gib:.1f} GiB "
        "free: lower train.batch_size (and raise train.gradient_accumulation_steps to keep the "
        "batch), turn on train.gradient_checkpointing, shorten train.max_length, or load the "
        f"base with load.quantization nf4{more} (adapterops plan shows the figures)"
    )

"""A small, explicit training loop for adapters (AdamW, linear warm-up and decay).

Only parameters with ``requires_grad`` are optimised, so after ``add_adapter`` this trains the
adapter (and a new head) and nothing else. The loop also knows what a long run needs:

- **checkpoints and resume**: every ``checkpoint_every`` steps the trainable weights, optimiser,
  scheduler, RNG states and the curves so far are written atomically to ``checkpoint_dir``; a new
  call with the same folder continues from the last one and ends with the same weights an
  uninterrupted run would have (batches are replayed from the seeded loader, not re-shuffled);
- **bf16**: ``precision="bf16"`` runs forward and loss under ``torch.autocast`` (weights and
  optimiser stay fp32, as mixed precision should);
- **DDP**: pass a ``DistributedDataParallel``-wrapped model; gradients are all-reduced by DDP and
  only rank 0 writes checkpoints;
- **validation during training** (:mod:`peft_core.periodic_evaluation`): a loss every N steps,
  the best step's weights kept, early stopping.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from .batches import BatchLimits, batch_limits, checked_batch
from .errors import CheckpointMismatchError, ConfigError, TrainingDivergedError
from .inject import active_adapters, is_merged
from .methods import Method, method_of
from .parallel import parallel_adapters
from .periodic_evaluation import PeriodicEvaluation
from .shards import has_shards, local_part
from .state import adapter_layers, adapter_records

__all__ = ["CHECKPOINT_FILE", "SCHEDULES", "Precision", "Schedule", "TrainResult", "train"]

Batch = Mapping[str, Tensor]
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
# How the learning rate moves after its linear warm-up: down to 0 in a line, down to 0 along
# half a cosine (common for LLM fine-tuning), or not at all.
Schedule = Literal["linear", "cosine", "constant"]
SCHEDULES: tuple[Schedule, ...] = ("linear", "cosine", "constant")
CHECKPOINT_FILE = "checkpoint.pt"
# Steps in a row whose loss is not a number before training stops though the weights still are
# (fp16 skips each such step): one bad batch is skipped; a forward pass that overflows float16
# at every step learns nothing for the rest of the run.
NOT_FINITE_IN_A_ROW = 10
_NO_CONTEXT = contextlib.nullcontext()


@dataclass
class TrainResult:
    """Loss, learning rate and wall time of every optimiser step."""

    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    resumed_from: int = 0  # the step a checkpoint put us at (0: a fresh start)
    # evaluate_every: (optimiser steps done, validation loss) after every N-th step and the last
    evaluations: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None  # keep_best: the step whose weights the model ends with
    stopped_at: int | None = None  # patience: the steps done when training stopped early

    def record(self, loss: float, learning_rate: float, seconds: float) -> None:
        """One optimiser step's loss, learning rate and wall time."""
        self.losses.append(loss)
        self.learning_rates.append(learning_rate)
        self.step_seconds.append(seconds)

    @property
    def median_step_seconds(self) -> float:
        """Median step time (robust to the slow first steps)."""
        ordered = sorted(self.step_seconds)
        return ordered[len(ordered) // 2] if ordered else 0.0


def train(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    max_steps: int,
    learning_rate: float,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.06,
    lr_schedule: Schedule = "linear",
    max_grad_norm: float = 1.0,
    gradient_accumulation_steps: int = 1,
    precision: Precision = "fp32",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    on_step: Callable[[int, float, float], None] | None = None,
    gradient_checkpointing: bool = False,
    evaluate: Callable[[], float] | None = None,
    evaluate_every: int | None = None,
    keep_best: bool = False,
    patience: int | None = None,
    on_evaluation: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` for ``max_steps`` optimiser steps over ``batches`` (cycled if shorter).

    Each batch is a mapping of model inputs including ``labels``; the model returns the loss.
    With ``gradient_accumulation_steps`` = k, each optimiser step averages the gradients of k
    batches. Batches move to the model's device. ``on_step(step, loss, learning_rate)`` is called
    after every optimiser step. ``batches`` must yield the same sequence each time it is iterated
    (a DataLoader with a seeded generator does) for a resumed run to equal an uninterrupted one.
    Under DDP or FSDP each step's loss is the mean over the processes.
    ``gradient_checkpointing`` recomputes each transformer block's activations in the backward
    pass instead of keeping them (less memory, ~30% more compute), with the same gradients.
    ``lr_schedule``: after a linear warm-up over ``warmup_ratio`` of the steps, the learning rate
    falls to 0 in a line (``linear``), along half a cosine (``cosine``), or stays
    (``constant``). ``precision``: ``bf16`` or ``fp16`` autocast; ``fp16`` also scales the loss (a
    ``GradScaler``), without which small gradients vanish in float16 (GPUs without bf16).
    ``evaluate`` (a callable returning the validation loss) runs in eval mode, without
    gradients, after every ``evaluate_every``-th step and after the last
    (``result.evaluations``; ``on_evaluation(step, loss)`` hears each); ``keep_best`` ends
    with the trainable weights of the lowest loss (``result.best_step``). Under DDP or FSDP
    ``evaluate`` runs in every process and must return the same loss in each (the flows score
    a share of the rows per process and add the sums up); under FSDP its forwards are
    collectives, so every process runs as many. ``patience`` K stops training once K
    evaluations in a row found no lower loss (``result.stopped_at``; a resumed stopped run
    trains no more).
    """
    _check_evaluation(evaluate, evaluate_every, keep_best, patience)
    _check_settings(
        max_steps=max_steps, gradient_accumulation_steps=gradient_accumulation_steps,
        checkpoint_every=checkpoint_every, learning_rate=learning_rate,
        weight_decay=weight_decay, warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm,
        lr_schedule=lr_schedule, precision=precision,
    )  # fmt: skip
    params = _checked_parameters(model, precision)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    scheduler = _scheduler(optimizer, lr_schedule, int(warmup_ratio * max_steps), max_steps)
    device = params[0].device
    # fp16: the loss is scaled up before backward and the gradients down before the step; a
    # step whose gradients overflowed is skipped and the scale lowered (off: a pass-through)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    result = TrainResult()
    periodic = PeriodicEvaluation(
        _unwrapped(model), evaluate, every=evaluate_every, keep_best=keep_best,
        patience=patience, on_evaluation=on_evaluation,
    )  # fmt: skip
    checkpoints = _Checkpoints(checkpoint_dir, model) if checkpoint_dir is not None else None
    stream = _cycle(batches, batch_limits(_unwrapped(model)))
    if checkpoints is not None:
        result = checkpoints.restore(
            optimizer,
            scheduler,
            max_steps=max_steps,
            replay=stream,
            per_step=gradient_accumulation_steps,
            scaler=scaler,
            periodic=periodic,
        )
    trained = _trained_adapters(model)
    _check_what_trains_runs(model, trained)
    forward = _explained_first_failure(_training_forward(model, trained), trained)
    # DDP or FSDP: the processes train one model on their shares of each batch (a process
    # group alone does not say so: separate models per process report their own losses)
    data_parallel = isinstance(model, DDP) or has_shards(model)
    model.train()
    inner = _unwrapped(model)
    losses = _LossWatch(params, precision, data_parallel=data_parallel, device=device)
    with _without_kv_cache(inner), _checkpointing(inner, enabled=gradient_checkpointing):
        for step in range(result.resumed_from, max_steps):
            if periodic.should_stop:  # (a resumed run that had stopped early trains no more)
                result.stopped_at = step
                break
            started = time.perf_counter()
            step_loss = 0.0
            for micro in range(gradient_accumulation_steps):
                batch = {k: v.to(device) for k, v in next(stream).items()}
                # DDP all-reduces on the last micro-batch only (no_sync skips the others).
                last = micro == gradient_accumulation_steps - 1
                sync = model.no_sync() if isinstance(model, DDP) and not last else _NO_CONTEXT
                with sync, _autocast(device, precision):
                    loss = _loss_of(forward(**batch)) / gradient_accumulation_steps
                scaler.scale(loss).backward()
                step_loss += float(loss.detach())
            if data_parallel:
                step_loss = _mean_over_processes(step_loss, device)
            lr_used = _optimizer_step(params, optimizer, scheduler, scaler, max_grad_norm)
            # e.g. AdaLoRA's rank allocation, which reads the gradients
            for method, name in trained:
                method.after_optimizer_step(_unwrapped(model), name, step)
            optimizer.zero_grad(set_to_none=True)
            result.record(step_loss, lr_used, time.perf_counter() - started)
            if on_step is not None:
                on_step(step, step_loss, lr_used)
            done = step + 1
            losses.after_step(step_loss, learning_rate=lr_used, step=done)
            periodic.after_step(done, max_steps)
            final = done == max_steps or periodic.should_stop
            if checkpoints is not None and (done % checkpoint_every == 0 or final):
                checkpoints.save(
                    optimizer, scheduler, result, step=done, scaler=scaler, periodic=periodic
                )
    result.evaluations, result.best_step = list(periodic.points), periodic.restore_best()
    model.eval()
    return result


def _check_evaluation(
    evaluate: Callable[[], float] | None,
    evaluate_every: int | None,
    keep_best: bool,
    patience: int | None,
) -> None:
    """Refuse periodic-evaluation settings that cannot work together, before any step."""
    if evaluate_every is not None:
        check_counts({"evaluate_every": evaluate_every})
        if evaluate is None:
            raise ConfigError("evaluate_every needs evaluate, a callable returning the loss")
    for name, asked in (("keep_best", keep_best), ("patience", patience is not None)):
        if asked and evaluate_every is None:
            raise ConfigError(f"{name} needs evaluate_every (and evaluate): nothing is evaluated")
    if patience is not None:
        check_counts({"patience": patience})


def _optimizer_step(
    params: list[nn.Parameter], optimizer: Any, scheduler: Any, scaler: Any, max_norm: float
) -> float:
    """Clip, step, schedule; the learning rate the step used. Under fp16 the gradients are
    unscaled first (clipping and AdaLoRA see the true ones), and a step skipped because they
    overflowed leaves the schedule where it was."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    learning_rate = float(scheduler.get_last_lr()[0])
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    if not scaler.is_enabled() or scaler.get_scale() >= scale:
        scheduler.step()
    return learning_rate


@contextlib.contextmanager
def _checkpointing(model: Any, *, enabled: bool) -> Iterator[None]:
    """Gradient checkpointing for the run, off again afterwards. Non-reentrant: the reentrant
    variant gives no gradients to adapters inside a block whose inputs do not require grad (a
    frozen base's)."""
    if not enabled:
        yield
        return
    # transformers >= 5.20 calls it activation checkpointing; earlier 5.x gradient checkpointing
    modern = hasattr(model, "activation_checkpointing_enable")
    word = "activation" if modern else "gradient"
    enable = getattr(model, f"{word}_checkpointing_enable", None)
    if enable is None or not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"{type(model).__name__} does not support gradient checkpointing (transformers "
            "models whose blocks do: BERT, GPT-2, Llama, ...)"
        )
    enable(**{f"{word}_checkpointing_kwargs": {"use_reentrant": False}})
    try:
        yield
    finally:
        getattr(model, f"{word}_checkpointing_disable")()


@contextlib.contextmanager
def _without_kv_cache(model: Any) -> Iterator[None]:
    """``config.use_cache`` off while training: no step reads a KV cache, building one costs
    memory, and transformers recognises packed rows (position ids restarting per example) only
    when there is none."""
    config: Any = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if use_cache is None:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = use_cache


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def _trained_adapters(model: nn.Module) -> list[tuple[Method, str]]:
    """The adapters whose parameters train now, with their methods (for the training hooks)."""
    inner = _unwrapped(model)
    trained = []
    for name, record in adapter_records(inner).items():
        method = method_of(record.config)
        if method.places_itself:
            params = method.own_parameters(inner, name)
        else:
            params = [
                p
                for _, layer in adapter_layers(inner, name)
                for p in layer.adapters[name].parameters()
            ]
        if any(p.requires_grad for p in params):
            trained.append((method, name))
    return trained


def _check_what_trains_runs(model: nn.Module, trained: list[tuple[Method, str]]) -> None:
    """Refuse an adapter that trains but does not run: one merged into the base weights (its
    forward reads them, not its own weights), or, after switching with ``set_active`` alone, the
    last added adapter, still the trainable one (the loss then has no gradient: torch's
    "element 0 of tensors does not require grad" after the first forward pass)."""
    inner = _unwrapped(model)
    merged = [name for _, name in trained if is_merged(inner, name)]
    if merged:  # its forward reads the merged base weights, never its own
        raise ConfigError(
            f"adapter {merged[0]!r} is merged into the base weights, so training would change "
            "weights its forward no longer reads (only its head would learn): "
            f"pc.unmerge(model, {merged[0]!r}) first, and merge again after training"
        )
    routed = any(layer.routing is not None for _, layer in adapter_layers(inner))
    running = {*active_adapters(inner), *parallel_adapters(inner)}
    if not trained or routed or any(name in running for _, name in trained):
        return
    name = trained[0][1]
    active = ", ".join(repr(n) for n in active_adapters(inner)) or "none, the base model alone"
    raise ConfigError(
        f"adapter {name!r} trains (the last one added, or pc.set_trainable's) but is not active "
        f"(active: {active}), so it would get no gradient: pc.set_trainable(model, NAME) trains "
        f"the active adapter NAME, pc.set_active(model, {name!r}) runs the one that trains"
    )


def _training_forward(model: nn.Module, trained: list[tuple[Method, str]]) -> Callable[..., Any]:
    """What training batches run through: the model, or a method's own forward (AdaLoRA's
    tuner adds its regulariser to the loss). Under DDP always the DDP wrapper (it syncs grads)."""
    if isinstance(model, DDP):
        return model
    for method, name in trained:
        forward = method.training_forward(model, name)
        if forward is not None:
            return forward
    return model


def check_counts(counts: Mapping[str, int]) -> None:
    """Refuse a count (steps, rows, processes) that is not a whole number of at least 1."""
    for name, count in counts.items():
        # numbers.Integral: a NumPy integer (len(array) // batch) counts as well as an int
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise ConfigError(f"{name} must be a whole number of at least 1, got {count!r:.40}")


def _check_settings(
    *,
    max_steps: int,
    gradient_accumulation_steps: int,
    checkpoint_every: int,
    learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    max_grad_norm: float,
    lr_schedule: str,
    precision: str,
) -> None:
    """Refuse a setting of the wrong type or range before any step, naming it: a string
    (``learning_rate="1e-3"``, read from a config file) failed inside AdamW or the scheduler
    ("'<=' not supported between instances of 'float' and 'str'")."""
    counts = {
        "max_steps": max_steps,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "checkpoint_every": checkpoint_every,
    }
    check_counts(counts)
    ranges = {
        "learning_rate": (learning_rate, lambda v: 0 < v < math.inf, "a finite number above 0"),
        "weight_decay": (weight_decay, lambda v: 0 <= v < math.inf, "a finite number, 0 or more"),
        "warmup_ratio": (warmup_ratio, lambda v: 0 <= v <= 1, "a number from 0 to 1"),
        "max_grad_norm": (max_grad_norm, lambda v: v > 0, "a number above 0 (inf: no clipping)"),
    }
    for name, (value, allowed, wanted) in ranges.items():
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not number or math.isnan(value) or not allowed(value):
            raise ConfigError(f"{name} must be {wanted}, got {value!r:.40}")
    if lr_schedule not in SCHEDULES:
        raise ConfigError(
            f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {lr_schedule!r:.40}"
        )
    if precision not in PRECISIONS:  # "fp8" trained in float32, saying nothing
        raise ConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r:.40}"
        )


def _scheduler(optimizer: Any, schedule: Schedule, warmup_steps: int, max_steps: int) -> Any:
    """transformers' learning-rate schedule ``schedule`` after ``warmup_steps`` of warm-up."""
    # transformers' optimisation module imports peft (~1.5 s): only training pays for it
    from transformers import get_scheduler  # noqa: PLC0415

    name = "constant_with_warmup" if schedule == "constant" else schedule
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_steps
    )


def _checked_parameters(model: nn.Module, precision: Precision) -> list[nn.Parameter]:
    """The parameters to train, after refusing what cannot train (before any step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad (add an adapter first)")
    if precision == "fp16" and has_shards(model):
        raise ConfigError(
            "fp16 loss scaling is not done for FSDP-sharded models here: train them in bf16 "
            "(precision bf16) or without sharding"
        )
    return params


def _loss_of(output: Any) -> torch.Tensor:
    """The loss a model's forward returned; a transformers model returns none without labels."""
    loss = getattr(output, "loss", None)
    if loss is None:
        raise ValueError(
            "the model returned no loss: each batch must hold `labels` (class ids for a "
            "classifier, token ids for a language model) beside its inputs"
        )
    return cast(torch.Tensor, loss)


def _explained_first_failure(
    forward: Callable[..., Any], trained: list[tuple[Method, str]]
) -> Callable[..., Any]:
    """``forward``, whose failure on the first batch is a :class:`ConfigError` naming the peft
    method: peft accepts some configurations it cannot run on a model (SHADOW wrapping linear
    layers instead of decoder blocks fails inside the attention), and a user should read which
    adapter and what to change, not peft's traceback."""
    run_by_peft = [(method, name) for method, name in trained if method.places_itself]
    if not run_by_peft:
        return forward
    first = [True]

    def run(*args: Any, **kwargs: Any) -> Any:
        if not first[0]:
            return forward(*args, **kwargs)
        try:
            output = forward(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            names = ", ".join(f"{name!r}" for _, name in run_by_peft)
            raise ConfigError(
                f"peft could not run adapter {names} on the first batch "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); peft accepted the "
                "configuration but not on this model: check config.target_modules against what "
                "peft's documentation of the method says it wraps"
            ) from exc
        first[0] = False
        return output

    return run


def _autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Checkpoints:
    """One rolling checkpoint file (write to a temporary name, then rename: never half-written)."""

    def __init__(self, folder: str | Path, model: nn.Module) -> None:
        self.file = Path(folder) / CHECKPOINT_FILE
        self.model = model
        rank = int(os.environ.get("RANK", "0"))
        self.writer = rank == 0 and (
            not torch.distributed.is_available()
            or not torch.distributed.is_initialized()
            or torch.distributed.get_rank() == 0
        )
        # FSDP2 shards: the checkpoint holds whole tensors (gathered on save, re-sharded on
        # restore), so a run resumes whatever the number of processes.
        self.sharded = has_shards(model)

    def trainable_names(self) -> set[str]:
        return {name for name, param in self.model.named_parameters() if param.requires_grad}

    def trainable_state(self) -> dict[str, Tensor]:
        """The trainable weights, whole, on the CPU (sharded: a collective; only the writer
        gets the tensors)."""
        if self.sharded:
            from torch.distributed.checkpoint import state_dict as dcp  # noqa: PLC0415

            gathered = dcp.get_model_state_dict(self.model, options=_gathered_options())
            return {name: value for name, value in gathered.items() if isinstance(value, Tensor)}
        return {
            name: param.detach().cpu().clone()
            for name, param in self.model.named_parameters()
            if param.requires_grad
        }

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        if self.sharded:  # keyed by parameter name, whole tensors on the writer
            from torch.distributed.checkpoint import state_dict as dcp  # noqa: PLC0415

            return dcp.get_optimizer_state_dict(self.model, optimizer, options=_gathered_options())
        return optimizer.state_dict()

    def load(self, optimizer: Any, state: dict[str, Any]) -> None:
        """Put a checkpoint's weights and optimiser state into this run's model and optimiser."""
        if self.sharded:
            from torch.distributed.checkpoint import state_dict as dcp  # noqa: PLC0415

            # every process read the whole tensors; each keeps its shard (strict=False: the
            # frozen base is not in the checkpoint)
            whole = dcp.StateDictOptions(full_state_dict=True, strict=False)
            dcp.set_model_state_dict(self.model, state["weights"], options=whole)
            dcp.set_optimizer_state_dict(self.model, optimizer, state["optimizer"], options=whole)
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["weights"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])

    def save(
        self,
        optimizer: Any,
        scheduler: Any,
        result: TrainResult,
        *,
        step: int,
        scaler: Any,
        periodic: PeriodicEvaluation | None = None,
    ) -> None:
        weights, optimizer_state = self.trainable_state(), self.optimizer_state(optimizer)
        evaluation = periodic.state() if periodic is not None else {}  # sharded: a collective
        if not self.writer:
            return
        state = {
            "step": step,
            "sharded": self.sharded,
            "weights": weights,
            "optimizer": optimizer_state,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),  # fp16's loss scale ({} when not scaling)
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "losses": result.losses,
            "learning_rates": result.learning_rates,
            "step_seconds": result.step_seconds,
            "evaluation": evaluation,
        }
        self.file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.file.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(self.file)

    def restore(
        self,
        optimizer: Any,
        scheduler: Any,
        *,
        max_steps: int,
        replay: Iterator[Batch],
        per_step: int,
        scaler: Any,
        periodic: PeriodicEvaluation | None = None,
    ) -> TrainResult:
        """Load the last checkpoint (if any) and advance ``replay`` past the batches it used."""
        if not self.file.is_file():
            return TrainResult()
        state = torch.load(self.file, map_location="cpu", weights_only=False)
        if set(state["weights"]) != self.trainable_names() or state["step"] > max_steps:
            raise CheckpointMismatchError(
                f"checkpoint {self.file} does not belong to this run (different trainable "
                f"parameters or more steps than {max_steps}); delete it to start afresh"
            )
        if bool(state.get("sharded", False)) != self.sharded:
            raise CheckpointMismatchError(
                f"checkpoint {self.file} was written by a "
                f"{'sharded (FSDP)' if state.get('sharded') else 'replicated'} run: resume it "
                "with the same train.sharding, or delete it to start afresh"
            )
        self.load(optimizer, state)
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        # Replay first: collators draw from the global RNG (masking), which is restored after.
        for _ in range(int(state["step"]) * per_step):
            next(replay)
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if periodic is not None:  # the losses so far and the best weights before the crash
            periodic.load(state.get("evaluation") or {})
        return TrainResult(
            losses=list(state["losses"]),
            learning_rates=list(state["learning_rates"]),
            step_seconds=list(state["step_seconds"]),
            resumed_from=int(state["step"]),
        )


def _stop_if_diverged(
    params: list[nn.Parameter],
    loss: float,
    *,
    learning_rate: float,
    step: int,
    data_parallel: bool,
    device: torch.device,
) -> None:
    """Raise :class:`TrainingDivergedError` when a step whose loss is not finite left a weight
    that trains NaN or infinite (without fp16's loss scaling a NaN loss always does; with it,
    the step was skipped and training goes on). It ran every remaining step on NaN before: hours
    of a GPU, then a version that scores nothing. Under FSDP each process holds its own
    shards, so the processes of one model agree through one all-reduce before any stops."""
    broken = float(any(not bool(torch.isfinite(local_part(p.detach())).all()) for p in params))
    if data_parallel:  # (separate models per process decide alone: they meet in no collective)
        broken = _mean_over_processes(broken, device)
    if broken == 0.0:
        return
    raise TrainingDivergedError(
        f"training diverged at step {step}: its loss is {loss} and the weights that train are "
        f"no longer finite numbers, so no later step can recover them; lower learning_rate "
        f"({learning_rate:g} at this step) or warm it up (warmup_ratio), and check the data"
    )


class _LossWatch:
    """What a step's loss that is not a number means (every process sees the same mean loss,
    so all decide alike): weights no longer numbers stop training at once
    (:func:`_stop_if_diverged`); weights still numbers (fp16 skipped the step) stop it after
    :data:`NOT_FINITE_IN_A_ROW` such steps in a row (:func:`_stop_if_nothing_learns`)."""

    def __init__(
        self, params: list[nn.Parameter], precision: str, *, data_parallel: bool, device: Any
    ) -> None:
        self.params, self.precision = params, precision
        self.data_parallel, self.device = data_parallel, device
        self.not_finite_since: int | None = None  # the first step of the run of them

    def after_step(self, loss: float, *, learning_rate: float, step: int) -> None:
        if math.isfinite(loss):
            self.not_finite_since = None
            return
        _stop_if_diverged(
            self.params, loss, learning_rate=learning_rate, step=step,
            data_parallel=self.data_parallel, device=self.device,
        )  # fmt: skip
        self.not_finite_since = self.not_finite_since or step
        _stop_if_nothing_learns(self.not_finite_since, step, self.precision)


def _stop_if_nothing_learns(first: int, step: int, precision: str) -> None:
    """Raise :class:`TrainingDivergedError` once :data:`NOT_FINITE_IN_A_ROW` steps in a row
    (``first`` to ``step``, counted from 1) had a loss that is not a number while the weights
    stayed numbers: fp16's loss scaling skipped each, and it would skip every step to the end
    (a forward pass that overflows float16, as T5 and some LLMs do), then register the adapter
    unchanged."""
    if step - first + 1 < NOT_FINITE_IN_A_ROW:
        return
    cause = (
        "the forward pass overflows float16: train with precision bf16 (where the GPU has it) "
        "or fp32"
        if precision == "fp16"
        else "check the data and the model's outputs"
    )
    raise TrainingDivergedError(
        f"training stopped at step {step}: the loss has not been a finite number since step "
        f"{first} ({NOT_FINITE_IN_A_ROW} steps in a row, each skipped: nothing was learned); "
        f"{cause}"
    )


def _mean_over_processes(loss: float, device: torch.device) -> float:
    """The mean of every process's loss (each trains its own rows of the batch), so the
    reported, logged and checkpointed losses are the whole batch's on every rank."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()):
        return loss
    if distributed.get_world_size() == 1:
        return loss
    total = torch.tensor([loss], dtype=torch.float64, device=device)
    distributed.all_reduce(total)  # a sum: gloo has no average
    return float(total) / distributed.get_world_size()


def _gathered_options() -> Any:
    """Whole tensors of the trainable weights only, gathered to the CPU of rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions  # noqa: PLC0415

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def _cycle(batches: Iterable[Batch], limits: BatchLimits) -> Iterator[Batch]:
    """``batches`` over and over, each checked against the model's ``limits``."""
    first_pass = 0
    while True:
        produced = 0
        for batch in batches:
            produced += 1
            yield checked_batch(batch, limits)
        if produced == 0 and first_pass:  # a generator or an iterator: read once, then spent
            kind = type(batches).__name__
            raise ValueError(
                f"the batches ran out after {first_pass}: a {kind} is read once, and training "
                "asks for more (max_steps x gradient_accumulation_steps); pass a list or a "
                "DataLoader (read again for each pass), or lower max_steps"
            )
        if produced == 0:
            raise ValueError("no training batches: the data set is empty")
        first_pass = first_pass or produced

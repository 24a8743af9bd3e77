"""Train one adapter from a spec, evaluate it and save it: the job behind ``adapterops train``.

Plain functions, no Prefect: the flows wrap them, the CLI and the tests call them directly.
Everything a user can get wrong (spec, base model, data) is checked before training starts.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerBase,
)

import peft_core as pc
from peft_core.heads import adapter_head
from peft_core.state import adapter_layers, get_record
from registry.folders import check_folder_to_write

from .data import PreparedData, longest_first_order, make_loader
from .distributed import Placement, gathered, placement, replicas_agree, wrap
from .errors import DataError
from .evaluation import EvaluationProgress, RowOutcome, RowsCallback, counted_rows, evaluate
from .inference_placement import InferencePlacement, place_for_inference
from .launch import launched_here, train_in_processes
from .members import load_members, members_of_spec
from .missing_weights import settle_missing_weights
from .models import base_config, load_base_tokenizer, resolve_base_weights
from .prepare_job import prepare_cached
from .shares import metrics_in_shares
from .spec import AdapterSpec
from .validation_during_training import evaluation_line, outcome_lines, periodic_evaluation

if TYPE_CHECKING:
    from registry import AdapterVersion, Registry

_log = logging.getLogger(__name__)

__all__ = [
    "PhaseCallback",
    "TrainReport",
    "evaluate_folder",
    "evaluate_model",
    "evaluate_registered",
    "evaluation_line",
    "inference_device",
    "load_base_model",
    "load_inference_model",
    "load_registered",
    "load_tokenizer",
    "no_phases",
    "outcome_lines",
    "train_from_spec",
    "training_precision",
    "write_report",
]

_AUTO = {
    "classification": AutoModelForSequenceClassification,
    "masked-lm": AutoModelForMaskedLM,
    "causal-lm": AutoModelForCausalLM,
}


@dataclass
class TrainReport:
    """What one training run produced, for people (tables) and scripts (``--json``)."""

    name: str
    method: str
    trainable_params: int
    total_params: int
    adapter_bytes: int
    steps: int
    train_seconds: float
    median_step_seconds: float
    final_loss: float
    metrics: dict[str, Any]
    output: str
    losses: list[float] = field(default_factory=list, repr=False)
    learning_rates: list[float] = field(default_factory=list, repr=False)
    world_size: int = 1
    sharding: str = "none"  # across processes: "ddp", "fsdp", or "none" (one process)
    device: str = "cpu"
    precision: str = "fp32"
    resumed_from_step: int = 0
    members: list[str] = field(default_factory=list)  # a fusion's exact member versions
    # train.eval_every: [step, validation loss] pairs; keep_best: the step of the saved weights
    evaluations: list[list[float]] = field(default_factory=list)
    best_step: int | None = None
    stopped_at: int | None = None  # train.patience: the steps done when it stopped early
    # keep_outcomes: each validation row's outcome from the evaluation after training, in the
    # split's order (a build keeps them in its MLflow run; not in report.json)
    outcomes: list[RowOutcome] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the per-step curves and the rows' outcomes)."""
        data = asdict(replace(self, outcomes=[]))
        del data["losses"], data["learning_rates"], data["outcomes"]
        return data


def load_tokenizer(spec: AdapterSpec) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a padding token (GPT-2 and Llama ship without one)."""
    tokenizer: PreTrainedTokenizerBase = load_base_tokenizer(spec.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def inference_device() -> torch.device:
    """Where evaluation and prediction run: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_base_model(
    spec: AdapterSpec,
    device: torch.device | None = None,
    *,
    placement: InferencePlacement | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The spec's base model with its head, and its tokenizer (from local files only).

    With ``device`` each weight is read from the checkpoint straight onto it; with
    ``placement`` onto the devices its ``device_map`` names (several GPUs, CPU memory, disk:
    :mod:`flows.inference_placement`). A quantised base
    (``load.quantization``) is quantised weight by weight as it loads, on that device: a GPU
    quantises in seconds what takes a CPU minutes per billion weights, and the CPU never holds
    the quantised model before it moves.
    """
    path = resolve_base_weights(spec.base_model)
    tokenizer = load_tokenizer(spec)
    auto = _AUTO[spec.head.type]
    config = base_config(spec)
    options: dict[str, Any] = {"config": config, "dtype": spec.load.torch_dtype()}
    if attention := spec.load.attn_implementation():
        options["attn_implementation"] = attention
    if spec.load.quantization != "none":
        with torch.device("meta"):  # the architecture without weights: which layers to quantise
            skeleton = auto.from_config(config)
        options["quantization_config"] = pc.quantize.quantization_config(
            skeleton, spec.load.quantization
        )
    if device is not None:
        options["device_map"] = {"": device}
    offload_folder = None
    if placement is not None:
        options["device_map"] = placement.device_map
        if placement.offload:
            offload_folder = options["offload_folder"] = tempfile.mkdtemp(prefix="adapterops-")
    model, loaded = auto.from_pretrained(path, output_loading_info=True, **options)
    settle_missing_weights(model, loaded["missing_keys"])
    if offload_folder is not None:  # the weights accelerate put on disk go with the model
        weakref.finalize(model, shutil.rmtree, offload_folder, True)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_inference_model(spec: AdapterSpec) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """``spec``'s base model for evaluation and prediction: on one GPU when it fits there, else
    spread over the GPUs (or offloaded, with ``load.offload``), else a one-line refusal before
    any weight is read (:func:`flows.inference_placement.place_for_inference`)."""
    placement = place_for_inference(spec)
    if placement.offloads:  # the user asked for it (load.offload), but should know its cost
        warnings.warn(
            f"{spec.name}: {placement.describe()}; the blocks outside the GPUs are brought in for "
            "every forward pass (slow)",
            RuntimeWarning,
            stacklevel=2,
        )
    elif placement.spread:
        _log.info("%s: %s", spec.name, placement.describe())
    return load_base_model(spec, placement=placement)


# Hears what a job does next ("evaluate on 872 rows"): a bar's or spinner's text at a terminal,
# a line in a log. Without it, a person watched a finished bar for the 10 s of evaluation.
PhaseCallback = Callable[[str], None]


def no_phases(_: str) -> None:
    """The phase callback when nobody listens."""


def train_from_spec(
    spec: AdapterSpec,
    output: str | Path,
    *,
    on_step: Callable[[int, int, float, float], None] | None = None,
    evaluate_after: bool = True,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str | None = None,
    registry: Registry | None = None,
    on_phase: PhaseCallback = no_phases,
    on_evaluation: Callable[[int, float], None] | None = None,
    keep_outcomes: bool = False,
    on_scoring: EvaluationProgress | None = None,
) -> TrainReport:
    """Train (and by default evaluate) ``spec``'s adapter and save it into ``output``.

    ``on_step(step, total_steps, loss, learning_rate)`` is called after every optimiser step
    (progress bars, experiment tracking); ``on_phase`` hears each step around training (load,
    prepare data, evaluate, save). With ``checkpoint_dir`` a crashed run resumes from its
    last checkpoint. Under ``torchrun`` every process trains its shard of each batch (DDP); rank 0
    evaluates and saves, the other ranks return a report with an empty ``output``. A build
    passes the dataset ``fingerprint`` it computed (else it is computed here) and its
    ``registry`` (a fusion's members are loaded from it). With ``train.processes`` N > 1 and
    no torchrun around, this starts torchrun with N processes and returns rank 0's report
    (:mod:`flows.launch`; a fusion's members then come from the environment's registry).
    With ``train.eval_every`` N, ``on_evaluation(step, validation_loss)`` hears the loss
    measured after every N-th step (and ``on_phase`` a line of it). With ``keep_outcomes`` the
    evaluation after training also keeps each validation row's outcome (``report.outcomes``);
    ``on_scoring(what, done, total)`` hears its rows as they are done (rank 0's share of them
    in several processes).
    """
    check_folder_to_write(output, f"save {spec.name}")  # before hours of training, not after
    if launched_here(spec):  # train.processes: torchrun started from here, then back here
        return train_in_processes(
            spec, output, on_step=on_step, evaluate_after=evaluate_after,
            checkpoint_dir=checkpoint_dir, fingerprint=fingerprint, on_phase=on_phase,
            on_evaluation=on_evaluation, keep_outcomes=keep_outcomes, on_scoring=on_scoring,
        )  # fmt: skip
    torch.manual_seed(spec.train.seed)
    resolve_base_weights(spec.base_model)  # an unknown base model fails before the data is read
    with placement() as where:
        sharded = where.distributed and spec.train.sharding == "fsdp"
        # FSDP2 shards a model built on the CPU; otherwise the weights load onto the device
        on_phase(f"load {spec.base_model}")
        model, tokenizer = load_base_model(spec, None if sharded else where.device)
        on_phase("prepare data")
        data = _prepared_on_every_rank(spec, tokenizer, where, fingerprint)
        members = load_members(model, members_of_spec(spec), registry)  # frozen, for a fusion
        config = spec.method.to_config()
        pc.add_adapter(model, spec.name, config)
        model.to(where.device)
        cfg = spec.train
        rows = data.train.shard(where.world_size, where.rank) if where.distributed else data.train
        train_loader = make_loader(
            rows,
            tokenizer,
            head=data.head,
            batch_size=cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            packing=cfg.packing,
        )
        per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)
        steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))
        report_step = on_step if on_step is not None and where.is_main else None
        on_phase("train")
        started = time.perf_counter()
        result = pc.train(
            wrap(model, where, cfg.sharding),
            train_loader,
            max_steps=steps,
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            warmup_ratio=cfg.warmup_ratio,
            lr_schedule=cfg.lr_schedule,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            precision=training_precision(spec, where.device),
            checkpoint_dir=checkpoint_dir,  # FSDP2: whole tensors, gathered on rank 0
            checkpoint_every=cfg.checkpoint_every,
            gradient_checkpointing=cfg.gradient_checkpointing,
            on_step=(lambda step, loss, lr: report_step(step, steps, loss, lr))
            if report_step
            else None,
            **periodic_evaluation(
                spec,
                model,
                data=data,
                tokenizer=tokenizer,
                where=where,
                on_phase=on_phase,
                on_evaluation=on_evaluation,
            ),
        )
        seconds = time.perf_counter() - started
        if not replicas_agree(model, where):
            raise RuntimeError("DDP replicas disagree after training: gradients were not synced")
        if where.is_main:  # what patience and keep_best did, before the evaluation's line
            _say_all(on_phase, outcome_lines(result, steps, cfg.patience))
        outcomes: list[RowOutcome] | None = [] if keep_outcomes else None
        # metrics and probes None: measured below by rank 0, the processes' group gone
        model, metrics, probes = _measured_in_processes(
            model, spec, where, data=data, tokenizer=tokenizer, members=members,
            registry=registry, evaluate_after=evaluate_after, on_phase=on_phase,
            outcomes=outcomes, on_scoring=on_scoring,
        )  # fmt: skip
    if metrics is None:
        metrics = {}
        if evaluate_after and where.is_main:
            on_phase(f"evaluate on {len(data.validation)} rows")
            metrics = evaluate_model(
                model, data.validation, tokenizer, head=data.head, generate=generates(spec),
                on_rows=counted_rows(on_scoring, len(data.validation)), outcomes=outcomes,
            )  # fmt: skip
    costs = pc.measure(model, spec.name)
    report = TrainReport(
        name=spec.name,
        method=config.type,
        trainable_params=costs.trainable_params,
        total_params=costs.total_params,
        adapter_bytes=costs.adapter_bytes,
        steps=steps,
        train_seconds=seconds,
        median_step_seconds=result.median_step_seconds,
        final_loss=result.losses[-1],
        metrics=metrics,
        output="",
        losses=result.losses,
        learning_rates=result.learning_rates,
        world_size=where.world_size,
        sharding=cfg.sharding if where.distributed else "none",
        device=str(where.device),
        precision=training_precision(spec, where.device),
        resumed_from_step=result.resumed_from,
        members=members,
        evaluations=[[step, loss] for step, loss in result.evaluations],
        best_step=result.best_step,
        stopped_at=result.stopped_at,
        outcomes=outcomes or [],
    )
    if not where.is_main:
        return report
    # Adapters peft runs are written in its layout, which peft, vLLM and LoRAX read directly.
    layout: Literal["peft", "adapterops"] = (
        "peft" if pc.method_of(config).places_itself else "adapterops"
    )
    on_phase(f"save into {output}")
    folder = pc.save_adapter(model, spec.name, output, format=layout, tokenizer=tokenizer)
    if probes is not None:
        pc.write_probes(probes, folder)
    elif not members:  # golden probes: loading re-runs them to catch other base weights
        pc.record_probes(model, spec.name, folder)  # (a fusion's outputs need its members)
    report.output = str(folder)
    write_report(report)
    return report


def _say_all(on_phase: PhaseCallback, lines: list[str]) -> None:
    for line in lines:
        on_phase(line)


def _unsharded(
    spec: AdapterSpec,
    state: dict[str, torch.Tensor],
    members: list[str],
    registry: Registry | None,
    device: torch.device,
) -> nn.Module:
    """A fresh base model holding the trained adapter ``state`` (gathered from FSDP2 shards)."""
    model, _ = load_base_model(spec, device)
    load_members(model, members, registry)
    pc.add_adapter(model, spec.name, spec.method.to_config())
    with torch.no_grad():
        for key, tensor in pc.adapter_state_dict(model, spec.name).items():
            tensor.copy_(state[key])
    return model.to(device).eval()


# heads whose metrics processes score in shares of the rows (a masked LM's seeded masks follow
# the rows a loader sees: its metrics would depend on the number of processes)
SCORED_IN_SHARES = ("classification", "causal-lm")


def _measured_in_processes(
    model: nn.Module,
    spec: AdapterSpec,
    where: Placement,
    *,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    members: list[str],
    registry: Registry | None,
    evaluate_after: bool,
    on_phase: PhaseCallback,
    outcomes: list[RowOutcome] | None = None,
    on_scoring: EvaluationProgress | None = None,
) -> tuple[nn.Module, dict[str, Any] | None, dict[str, Any] | None]:
    """What several processes measure together after training, while their group lives: under
    FSDP the evaluation and probes on the shards (:func:`_after_sharded_training`); under DDP a
    classifier's or a causal LM's metrics (exact match's answers too: the replicas generate
    apart), each process scoring a share of the rows. Returns the model rank 0 saves, the
    metrics and the probes (None: rank 0 measures them alone afterwards); ``outcomes``, when
    given, receives each row's outcome with the metrics; ``on_scoring`` hears this process's
    share of them as it is scored."""
    if not where.distributed:
        return model, None, None
    fsdp = spec.train.sharding == "fsdp"
    # the processes evaluate (each a share of the rows) or rank 0 does, alone, afterwards
    in_processes = _saved_from_shards(spec, members) if fsdp else data.head in SCORED_IN_SHARES
    if evaluate_after and in_processes:
        on_phase(f"evaluate on {len(data.validation)} rows")
    if fsdp:
        return _after_sharded_training(
            model, spec, where, data=data, tokenizer=tokenizer, members=members,
            registry=registry, evaluate_after=evaluate_after, outcomes=outcomes,
            on_scoring=on_scoring,
        )  # fmt: skip
    if not (evaluate_after and in_processes):
        return model, None, None
    metrics = metrics_in_shares(
        model, data.validation, tokenizer, head=data.head, where=where, generate=generates(spec),
        outcomes=outcomes, on_scoring=on_scoring,
    )  # fmt: skip
    return model, metrics, None


def _after_sharded_training(
    model: nn.Module,
    spec: AdapterSpec,
    where: Placement,
    *,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    members: list[str],
    registry: Registry | None,
    evaluate_after: bool,
    outcomes: list[RowOutcome] | None = None,
    on_scoring: EvaluationProgress | None = None,
) -> tuple[nn.Module, dict[str, Any] | None, dict[str, Any] | None]:
    """What rank 0 saves after FSDP2 training, and the metrics (``outcomes``: each row's too)
    and golden probes when the shards measured them (None: measure them on the returned
    model). A collective: every process calls it. Other ranks get their sharded model back."""
    if not _saved_from_shards(spec, members):  # rank 0 goes on with a whole, unsharded copy
        state = gathered(pc.adapter_state_dict(model, spec.name))
        whole = _unsharded(spec, state, members, registry, where.device) if where.is_main else model
        return whole, None, None
    # Every process evaluates and runs the probes on the sharded model, in step (each forward
    # gathers one block at a time): no process ever holds the whole base.
    metrics = {}
    if evaluate_after:
        metrics = _evaluated_sharded(
            model, spec, where, data, tokenizer, outcomes=outcomes, on_scoring=on_scoring
        )
    probes = pc.probe_document(model, spec.name)
    state = gathered(pc.adapter_state_dict(model, spec.name))
    return (_weightless(spec, state) if where.is_main else model), metrics, probes


def _evaluated_sharded(
    model: nn.Module,
    spec: AdapterSpec,
    where: Placement,
    data: PreparedData,
    tokenizer: PreTrainedTokenizerBase,
    *,
    outcomes: list[RowOutcome] | None = None,
    on_scoring: EvaluationProgress | None = None,
) -> dict[str, Any]:
    """The metrics of an FSDP-sharded model, every process in step: a classifier's and a
    causal LM's (generated answers too, for exact match) in shares of the rows, added up (N
    times faster than each process scoring them all); a masked LM's seeded masks over the
    whole split in every process."""
    if data.head in SCORED_IN_SHARES:
        return metrics_in_shares(
            model, data.validation, tokenizer, head=data.head, where=where,
            generate=generates(spec), outcomes=outcomes, on_scoring=on_scoring,
        )  # fmt: skip
    tell = counted_rows(on_scoring, len(data.validation))
    return evaluate_model(
        model, data.validation, tokenizer, head=data.head, on_rows=tell, outcomes=outcomes
    )


def _saved_from_shards(spec: AdapterSpec, members: list[str]) -> bool:
    """Whether a sharded run can evaluate, probe and save without a whole copy of the base: not
    for a fusion (its members load onto a whole model), a method peft runs, or full
    fine-tuning (its "adapter" is the whole model)."""
    method = pc.method_of(spec.method.to_config())
    return not members and not method.places_itself and not method.trains_whole_model


def _weightless(spec: AdapterSpec, state: dict[str, torch.Tensor]) -> nn.Module:
    """The spec's model on the meta device (no memory for the base) with the trained adapter's
    ``state`` in CPU tensors: all that saving and measuring the adapter read (its tensors and
    targets, the base's structure and dtype)."""
    model = pc.build_on_meta(base_config(spec), spec.head.type, dtype=spec.load.torch_dtype())
    pc.add_adapter(model, spec.name, spec.method.to_config())
    record = get_record(model, spec.name)
    owners = [layer.adapters[spec.name] for _, layer in adapter_layers(model, spec.name)]
    if record.head.trainable:
        owners += [adapter_head(model, m, spec.name) for m in record.head.modules]
    for owner in owners:
        owner.to_empty(device="cpu")
    with torch.no_grad():
        for key, tensor in pc.adapter_state_dict(model, spec.name).items():
            if tensor.is_meta:  # copying into a meta tensor would silently keep nothing
                raise RuntimeError(f"{key} has no storage in the weightless copy")
            tensor.copy_(state[key])
    return model.eval()


def generates(spec: AdapterSpec) -> bool:
    """Whether evaluating ``spec`` generates responses (its metric is ``exact_match``)."""
    return spec.evaluate.metric == "exact_match"


def write_report(report: TrainReport) -> None:
    """``report.json`` beside the adapter files."""
    (Path(report.output) / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def training_precision(spec: AdapterSpec, device: torch.device) -> pc.Precision:
    """``auto``: fp16 with loss scaling on an fp16 base (GPUs without bf16: their gradients
    would vanish in float16 otherwise), else bf16 autocast on a CUDA GPU that supports it,
    else fp32."""
    wanted = spec.train.precision
    if wanted != "auto":
        return wanted
    if spec.load.dtype == "fp16":
        return "fp16"
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return "bf16" if cuda_bf16 else "fp32"


def evaluate_model(
    model: nn.Module,
    validation: Any,
    tokenizer: PreTrainedTokenizerBase,
    *,
    head: str,
    generate: bool = False,
    on_rows: RowsCallback | None = None,
    outcomes: list[RowOutcome] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` (its active adapter) on a tokenised validation split; ``generate``
    (instruction data scored by ``exact_match``) also generates every response. ``on_rows``
    and ``outcomes`` (each row's, in the split's order): :func:`flows.evaluation.evaluate`'s."""
    # A classifier's counts of (label, prediction) and a causal LM's loss summed over its
    # tokens (and its greedy answers) come out the same in any row order; a masked LM keeps
    # its rows' order, which its collator's seeded masks follow.
    order = list(range(len(validation)))
    if head in ("classification", "causal-lm"):
        order = longest_first_order(validation)
        validation = validation.select(order)
    loader = make_loader(validation, tokenizer, head=head, batch_size=64, shuffle=False)
    pad = tokenizer.pad_token_id if generate else None
    scored: list[RowOutcome] | None = None if outcomes is None else []
    metrics = evaluate(model, loader, head=head, pad_token_id=pad, on_rows=on_rows, outcomes=scored)
    if outcomes is not None and scored is not None:
        in_place = dict(zip(order, scored, strict=True))  # back to the split's own order
        outcomes.extend(in_place[row] for row in range(len(order)))
    return metrics


def evaluate_folder(
    spec: AdapterSpec,
    folder: str | Path,
    *,
    members: list[str] | None = None,
    fingerprint: str | None = None,
    registry: Registry | None = None,
    outcomes: list[RowOutcome] | None = None,
    on_scoring: EvaluationProgress | None = None,
) -> dict[str, Any]:
    """Metrics of the adapter saved in ``folder`` on ``spec``'s validation split (the flows'
    evaluate step: a fresh base model, the saved files, the cached prepared data). A fusion's
    ``members`` (exact versions) are loaded from the registry first. ``outcomes``, when given,
    receives each validation row's answer, in the split's order; ``on_scoring`` hears the
    rows as they are done."""
    model, tokenizer = load_inference_model(spec)
    load_members(model, members or [], registry)
    pc.load_adapter(model, folder, name=spec.name)
    pc.set_active(model, spec.name)
    data, _ = prepare_cached(spec, tokenizer, fingerprint=fingerprint)
    return evaluate_model(
        model, data.validation, tokenizer, head=spec.head.type, generate=generates(spec),
        on_rows=counted_rows(on_scoring, len(data.validation)), outcomes=outcomes,
    )  # fmt: skip


def _prepared_on_every_rank(
    spec: AdapterSpec,
    tokenizer: PreTrainedTokenizerBase,
    where: Placement,
    fingerprint: str | None,
) -> PreparedData:
    """Rank 0 prepares (or finds the cache entry) first; the others then read the cache. Each
    process trains on a share of the rows: fewer rows than processes is refused."""
    if where.is_main:
        data, _ = prepare_cached(spec, tokenizer, fingerprint=fingerprint)
    if where.distributed:
        torch.distributed.barrier()
    if not where.is_main:
        data, _ = prepare_cached(spec, tokenizer, fingerprint=fingerprint)
    if len(data.train) < where.world_size:
        raise DataError(
            f"data.train has {len(data.train)} row(s) after preparation, fewer than the "
            f"{where.world_size} processes of train.processes, which each train on a share of "
            "the rows: give it more rows, or train with fewer processes"
        )
    return data


def load_registered(
    spec: AdapterSpec, version: AdapterVersion, registry: Registry, *, skip_probe: bool = False
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """``spec``'s base model for inference with registry ``version`` loaded (after its golden
    probes pass, unless ``skip_probe``) and active, over the members it runs on (a fusion's),
    and the tokenizer."""
    model, tokenizer = load_inference_model(spec)
    registry.load_into(model, version.ref, name=spec.name, skip_probe=skip_probe)  # + members
    pc.set_active(model, spec.name)
    return model, tokenizer


def evaluate_registered(
    spec: AdapterSpec, ref: str, registry: Registry, *, fingerprint: str | None = None
) -> dict[str, Any]:
    """Metrics of registry version ``ref`` on ``spec``'s validation split (the gate's fair test)."""
    model, tokenizer = load_registered(spec, registry.get(ref), registry)
    data, _ = prepare_cached(spec, tokenizer, fingerprint=fingerprint)
    return evaluate_model(
        model, data.validation, tokenizer, head=spec.head.type, generate=generates(spec)
    )

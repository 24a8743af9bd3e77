"""Prepared (tokenised) data, cached by fingerprint: an unchanged dataset is prepared once.

The cache key is the dataset fingerprint (the data files' bytes and the settings that select
them) plus everything that changes tokenisation: base model, head type and columns. A cache entry
is written to a temporary folder and renamed into place, so a crash never leaves a half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from transformers import PreTrainedTokenizerBase

import peft_core as pc
from registry.settings import adapterops_home

from .data import PreparedData, load_raw, prepare
from .errors import DataError
from .inference_placement import place_for_inference
from .lineage import dataset_fingerprint
from .members import members_of_spec
from .models import base_config, load_base_config, load_base_tokenizer, resolve_base_weights
from .planning import check_max_length, check_quantized_storage
from .spec import AdapterSpec

if TYPE_CHECKING:
    from registry import Registry

__all__ = [
    "PreparedInfo",
    "cache_root",
    "check_against_registry",
    "check_inputs",
    "check_promote_alias",
    "preparation_key",
    "prepare_cached",
    "prepare_info",
]


@dataclass(frozen=True)
class PreparedInfo:
    """What the prepare step hands on: small values, never the data itself."""

    dataset_fingerprint: str
    key: str
    path: str
    train_rows: int
    validation_rows: int
    cached: bool  # True when this call found the entry already prepared

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def summary(self) -> str:
        """One line for the flow's log."""
        state = "cached" if self.cached else "prepared"
        return (
            f"data {self.dataset_fingerprint[:12]}: {self.train_rows} train / "
            f"{self.validation_rows} validation rows ({state})"
        )


def cache_root() -> Path:
    """``$ADAPTEROPS_HOME/cache/prepared``."""
    return adapterops_home() / "cache" / "prepared"


def preparation_key(spec: AdapterSpec, fingerprint: str) -> str:
    """sha256 of the dataset fingerprint and the settings that change tokenisation."""
    settings = {
        "dataset": fingerprint,
        "base_model": spec.base_model,
        "head": spec.head.type,
        "columns": [spec.data.text, spec.data.text_pair, spec.data.label],
        # added later: specs without instructions keep their earlier cache keys
        **(
            {"instructions": [spec.data.prompt, spec.data.response, spec.data.messages]}
            if spec.data.instructions
            else {}
        ),
        "max_length": spec.train.max_length,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def prepare_cached(
    spec: AdapterSpec, tokenizer: PreTrainedTokenizerBase, *, fingerprint: str | None = None
) -> tuple[PreparedData, PreparedInfo]:
    """The spec's tokenised splits, from the cache when this exact preparation was done before.

    A build passes the dataset ``fingerprint`` it computed once; otherwise it is computed here
    (reading every data file).
    """
    fingerprint = fingerprint or dataset_fingerprint(spec)
    key = preparation_key(spec, fingerprint)
    folder = cache_root() / key
    cached = (folder / "train").is_dir() and (folder / "validation").is_dir()
    if not cached:
        prepared = prepare(spec, tokenizer)
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=folder.parent))
        prepared.train.save_to_disk(str(scratch / "train"))
        prepared.validation.save_to_disk(str(scratch / "validation"))
        try:
            scratch.rename(folder)
        except OSError:  # another process prepared the same data first: use theirs
            shutil.rmtree(scratch, ignore_errors=True)
    data = PreparedData(
        train=datasets.load_from_disk(str(folder / "train")),
        validation=datasets.load_from_disk(str(folder / "validation")),
        head=spec.head.type,
    )
    info = PreparedInfo(
        dataset_fingerprint=fingerprint,
        key=key,
        path=str(folder),
        train_rows=len(data.train),
        validation_rows=len(data.validation),
        cached=cached,
    )
    return data, info


def prepare_info(spec: AdapterSpec, *, fingerprint: str | None = None) -> PreparedInfo:
    """Tokenise ``spec``'s data into the cache (or find it there): the prepare step."""
    from .train_job import load_tokenizer  # noqa: PLC0415 - train_job imports this module

    _, info = prepare_cached(spec, load_tokenizer(spec), fingerprint=fingerprint)
    return info


def check_inputs(
    spec: AdapterSpec, registry: Registry | None = None, *, evaluates_apart: bool = True
) -> None:
    """Fail now, before a flow starts, on what a user can get wrong: an unknown base model, a
    missing data file or split, missing columns, labels outside ``num_labels``, no rows, a
    ``train.max_length`` beyond the base's learned positions, fusion members that are not
    registered bottleneck adapters of the same base model, a step that cannot fit the GPU
    (without one, the machine's memory), and (``evaluates_apart``: a build, which evaluates the
    saved adapter and the champion on a freshly loaded base) a base that evaluation could not
    place."""
    resolve_base_weights(spec.base_model)
    load_base_tokenizer(spec.base_model)  # (a second of Llama's: a traceback after the data)
    pc.quantize.quantization_available(spec.load.quantization)  # torchao, before a flow starts
    _check_members(spec, registry)
    _check_method_fits(spec)
    check_max_length(spec)
    _check_processes(spec)
    _check_attention(spec)
    _, validation = load_raw(spec)
    _check_eval_rows(spec, len(validation))
    _check_step_fits(spec)
    if evaluates_apart:  # not hours of training first, then a refusal at the evaluation
        place_for_inference(spec)


def check_against_registry(spec: AdapterSpec, registry: Registry | None) -> None:
    """What registering the build would refuse, asked before it trains: the adapter name bound
    to another base model, task, language or method, a base model name that reaches another
    model than the one registered under it, and the alias the gate would move
    (:func:`check_promote_alias`). ``registry`` None: none exists yet, so nothing is bound."""
    if registry is None:
        return
    registry.check_binding(spec.name, **spec.binding, what="this spec")
    # a base folder that holds another model than the one registered under its name (updated
    # in place to a newer release): its fingerprint from the config alone, as export reads it;
    # with the vocabulary, which the digests of base models registered long ago hold
    skeleton = pc.build_on_meta(base_config(spec), spec.head.type)
    fingerprint = pc.fingerprint(skeleton, load_base_tokenizer(spec.base_model))
    registry.check_base_model(spec.base_model, fingerprint.to_dict())
    check_promote_alias(spec, registry)


def check_promote_alias(spec: AdapterSpec, registry: Registry | None) -> None:
    """The alias the gate would move (``promote.alias``), against those the adapter holds: a
    ``Champion`` beside ``champion`` was refused only after training, at the promotion.
    ``registry`` None: none exists yet, so the adapter holds no alias."""
    if registry is None:
        return
    from registry import RegistryError  # noqa: PLC0415
    from registry.names import check_alias_case  # noqa: PLC0415

    held = {alias for version in registry.find(name=spec.name) for alias in version.aliases}
    try:
        check_alias_case(spec.promote.alias, held, f"adapter {spec.name!r}")
    except RegistryError as exc:
        raise DataError(f"the spec's promote.alias: {exc}") from None


def _check_method_fits(spec: AdapterSpec) -> None:
    """Build the adapter on the meta device (no weights, as ``plan`` does): a target that matches
    nothing or a module the method cannot adapt fails here, not inside the flow."""
    if members_of_spec(spec):  # a fusion needs its members loaded; _check_members vetted them
        return
    pc.plan(base_config(spec), spec.method.to_config(), head=spec.head.type)
    check_quantized_storage(spec, _processes(spec))


def _processes(spec: AdapterSpec) -> int:
    """How many processes will train: those torchrun started, else ``train.processes``."""
    return int(os.environ.get("WORLD_SIZE", spec.train.processes))


def _check_processes(spec: AdapterSpec) -> None:
    """``train.processes`` N: one GPU per process where there are GPUs (gloo on a CPU takes
    any N), and under a torchrun the user started, as many processes as it started. FSDP in
    one process is said: it shards nothing."""
    import torch  # noqa: PLC0415 - torch is heavy

    wanted = spec.train.processes
    started = os.environ.get("WORLD_SIZE")
    if spec.train.sharding == "fsdp" and _processes(spec) == 1:
        warnings.warn(
            f"{spec.name}: train.sharding is fsdp but one process trains: nothing is sharded, "
            "the whole model is on one device (set train.processes to the number of GPUs to "
            "shard it over them)",
            RuntimeWarning,
            stacklevel=2,
        )
    if started is not None and wanted > 1 and int(started) != wanted:
        raise DataError(
            f"train.processes is {wanted} but torchrun started {started} processes: leave "
            "train.processes out under torchrun, or run without torchrun (it is started for you)"
        )
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if started is None and 0 < gpus < wanted:
        raise DataError(
            f"train.processes {wanted} trains on one GPU per process, and this machine has "
            f"{gpus}: set train.processes to {gpus} or fewer"
        )


def _check_eval_rows(spec: AdapterSpec, validation_rows: int) -> None:
    """``train.eval_rows`` above the validation split's size is said: each evaluation during
    training scores every row, which a person sizing its cost should know."""
    wanted = spec.train.eval_rows
    if wanted is not None and wanted > validation_rows:
        warnings.warn(
            f"{spec.name}: train.eval_rows is {wanted} but the validation split has "
            f"{validation_rows} rows: each evaluation during training scores all of them",
            RuntimeWarning,
            stacklevel=2,
        )


def _check_step_fits(spec: AdapterSpec) -> None:
    """A training step that needs more than the memory it will run in fails now, not with
    out-of-memory after the base has loaded. On a CUDA GPU: its free memory; under
    ``torchrun`` each process checks its own GPU (``LOCAL_RANK``) for its own share (an FSDP
    process holds 1/N of the weights). Without one: the machine's available memory, shared by
    ``train.processes`` (a step beyond it was killed by the kernel's out-of-memory killer, exit
    137 and no word: a CI runner with no GPU building an LLM); checked once, before torchrun
    starts the processes (each of them would see its siblings' loading and refuse)."""
    import torch  # noqa: PLC0415 - torch is heavy

    from .inference_placement import free_memory  # noqa: PLC0415
    from .planning import check_step_fits  # noqa: PLC0415

    processes = _processes(spec)
    if torch.cuda.is_available():
        device = int(os.environ.get("LOCAL_RANK", "0"))
        free, _ = torch.cuda.mem_get_info(device)
        where = torch.cuda.get_device_name(device)
    elif "WORLD_SIZE" in os.environ:
        return
    else:
        free = free_memory().cpu // processes
        where = "this machine (CPU memory; no CUDA GPU here)"
        if processes > 1:
            where = f"each of {processes} processes' share of {where}"
    try:
        check_step_fits(spec, free, where, processes)
    except DataError:
        raise
    except Exception as exc:  # an estimate that fails is no reason to stop: the run goes ahead
        warnings.warn(
            f"{spec.name}: the training step's memory could not be estimated "
            f"({type(exc).__name__}: {exc}); training goes ahead unchecked",
            RuntimeWarning,
            stacklevel=2,
        )


def _check_attention(spec: AdapterSpec) -> None:
    """The base must run ``load.attention`` here: its architecture supports it and what it needs
    is installed (flash-attn for flash_attention_2/3, CUDA to train with flex_attention)."""
    attention = spec.load.attn_implementation()
    if attention is None:
        return
    import torch  # noqa: PLC0415 - torch is heavy
    from transformers import AutoModel  # noqa: PLC0415

    if attention == "flex_attention" and not torch.cuda.is_available():
        raise DataError(
            "load.attention flex_attention trains on a CUDA GPU only (torch has no backward "
            "for it on a CPU): use sdpa or eager here"
        )
    config = load_base_config(spec.base_model)
    try:
        with torch.device("meta"):  # no weights: transformers checks the kernel at init
            AutoModel.from_config(config, attn_implementation=attention)
    except (ImportError, ValueError) as exc:
        reason = " ".join(str(exc).split()).rstrip(".")
        raise DataError(
            f"load.attention {attention} cannot run on {spec.base_model} here ({reason}); "
            "leave it out (auto) or choose sdpa or eager"
        ) from None


def _check_members(spec: AdapterSpec, registry: Registry | None) -> None:
    """A fusion's members must be registered bottleneck adapters of the same base model."""
    refs = members_of_spec(spec)
    if not refs:
        return
    if registry is None:
        from registry import Registry  # noqa: PLC0415 - only fusions need the registry here

        registry = Registry()
    for ref in refs:
        version = registry.get(ref)
        fusable = sorted(t for t, m in pc.all_methods().items() if m.fusable)
        if version.method not in fusable:
            raise DataError(
                f"fusion member {ref} is a {version.method} adapter; AdapterFusion combines "
                f"bottleneck adapters ({', '.join(fusable)})"
            )
        if version.base_model != spec.base_model:
            raise DataError(
                f"fusion member {ref} was trained on {version.base_model}, not {spec.base_model}"
            )

"""Export a registered version for a serving engine: ``adapterops export REF --for ENGINE``.

Engines and what they read:

- ``peft``: the Hugging Face PEFT layout (``adapter_config.json`` + ``adapter_model.safetensors``)
  that ``peft.PeftModel.from_pretrained`` loads (LoRA, DoRA, IA³, and every ``type: peft``
  method);
- ``vllm``: the same layout, for vLLM's LoRA serving, which accepts less (its ``PEFTHelper``):
  LoRA only, no DoRA, no ``modules_to_save`` (so no new heads), a rank up to the server's
  ``--max-lora-rank`` (16 unless raised), no bias unless ``--enable-lora-bias``; it drops
  ``rank_pattern`` and ``alpha_pattern`` without a word, and it serves generative models;
- ``lorax``: the same layout for LoRAX, whose loader reads less still (its ``LoraConfig``:
  ``r``, ``lora_alpha``, ``use_rslora``, ``target_modules``; and each layer's ``lora_A`` and
  ``lora_B`` weights): LoRA only; DoRA magnitudes, ``modules_to_save`` and LoRA biases are not
  loaded, a module type adapted in only some layers (``layers_to_transform``) is dropped from
  every layer, and one ``r``/``lora_alpha`` scales every module; it serves generative models;
- ``merged``: a full checkpoint with the adapter folded into the weights (and its head), for
  engines without adapters: ``AutoModel*.from_pretrained(folder)`` loads it;
- ``adapterhub``: AdapterHub's layout (``adapter_config.json`` + ``pytorch_adapter.bin``) that
  ``adapters``' ``load_adapter`` reads: Houlsby and Pfeiffer adapters, without a head.

:func:`lint` lists what the engine would refuse or silently get wrong, and :func:`export`
refuses (before writing anything into the destination) when the list is not empty, unless
forced. The files are produced in a scratch folder beside the destination and moved into place
whole.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import peft_core as pc
from peft_core.methods.hf_peft import portable_config
from peft_core.tensor_files import readable_as_new
from registry import AdapterVersion, Composition, Registry
from registry.bundles import new_folders, read_json_object

from .errors import DataError
from .export_target import (
    ENGINES,
    VLLM_DEFAULT_MAX_LORA_RANK,
    checked_export_target,
    engine_named,
)
from .files_spec import classifier_size, serving_spec, stated_head
from .spec import AdapterSpec, spec_of_version

__all__ = [
    "ENGINES",
    "ExportResult",
    "Finding",
    "export",
    "export_composition",
    "lint",
    "serving_hint",
]

ONE_RANK_ENGINES = ("vllm", "lorax")  # they read r and lora_alpha, not the per-module patterns


@dataclass(frozen=True)
class Finding:
    """One thing the engine would do with this adapter that its user would not expect."""

    engine: str
    outcome: Literal["refuses", "ignores"]  # fails to load it / loads it and serves it wrong
    message: str
    # no files for the engine can be written at all (its format has no place for the method),
    # so --force cannot write them either
    unwritable: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return f"{self.engine} {self.outcome}: {self.message}"


@dataclass
class ExportResult:
    """What ``export`` wrote (or, on refusal, would have), and why it may not serve as trained."""

    ref: str
    engine: str
    folder: str
    files: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    serve: str = ""  # how the engine takes the files: a line to run or adapt

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "findings": [str(f) for f in self.findings]}


def lint(
    engine: str,
    method: str,
    head: str | None,
    peft_config: dict[str, Any] | None,
    *,
    max_lora_rank: int = VLLM_DEFAULT_MAX_LORA_RANK,
    trained_head: bool = False,
    method_config: dict[str, Any] | None = None,
) -> list[Finding]:
    """What ``engine`` would refuse or silently get wrong for an adapter of ``method`` with a
    ``head`` (classification, masked-lm, causal-lm, none: trained on a bare body, or None: not
    known; ``trained_head``: its own, trained with it) whose PEFT configuration (when it has
    one) is ``peft_config``; ``method_config`` (the stored method configuration) decides what
    merges where the method alone does not (a peft-run prompt adapter has no weights to merge,
    a LoHa does). Per-module LoRA ranks (``rank_pattern``, which vLLM and LoRAX ignore) are no
    finding: their exports write one rank."""
    engine = engine_named(engine)  # an unknown one stays as written
    if engine not in ENGINES:
        raise DataError(f"unknown engine {engine!r}; export --for one of {', '.join(ENGINES)}")
    kind = pc.method_of(method)
    if engine == "merged":
        config = pc.config_from_dict(method_config) if method_config else None
        why_not = kind.why_not_mergeable_for(config) if config else None
        if not kind.mergeable or why_not:
            why = f"{method}: {why_not or kind.why_not_mergeable}"
            return [Finding("merged", "refuses", why, unwritable=True)]
        return []
    if engine == "adapterhub":
        return _adapterhub_findings(method, head, trained_head)
    if peft_config is None:
        return [
            Finding(
                engine,
                "refuses",
                f"peft has no equivalent of a {method} adapter (exportable: LoRA, DoRA, IA3 and "
                "type: peft methods); export --for merged if it merges",
                unwritable=True,
            )
        ]
    if engine == "vllm":
        return _vllm_findings(head, peft_config, max_lora_rank)
    return _lorax_findings(head, peft_config) if engine == "lorax" else []  # peft reads it all


def _adapterhub_findings(method: str, head: str | None, trained_head: bool) -> list[Finding]:
    if method not in ("houlsby", "pfeiffer"):
        message = f"its format holds bottleneck adapters (houlsby, pfeiffer), not {method}"
        return [Finding("adapterhub", "refuses", message, unwritable=True)]
    if trained_head:
        message = (
            f"the adapter's trained {head} head is not written (AdapterHub heads pool [CLS] "
            "themselves): the adapter loads without it"
        )
        return [Finding("adapterhub", "ignores", message)]
    return []


def _vllm_findings(head: str | None, config: dict[str, Any], max_lora_rank: int) -> list[Finding]:
    found = []

    def refuses(message: str) -> None:
        found.append(Finding("vllm", "refuses", message))

    if config.get("peft_type") != "LORA":
        refuses(f"it serves LoRA adapters only, not {config.get('peft_type')}")
    if config.get("use_dora"):
        refuses("DoRA is not supported (use_dora); export --for merged instead")
    if config.get("modules_to_save"):
        refuses(
            f"modules_to_save must be empty, here {config['modules_to_save']} (a new head cannot "
            "be served with a LoRA adapter); export --for merged instead"
        )
    rank = int(config.get("r") or 0)  # vLLM reads r alone (see the patterns below)
    if rank > max_lora_rank:
        refuses(
            f"rank {rank} is above --max-lora-rank {max_lora_rank}: start vLLM with "
            f"--max-lora-rank {rank} (and export with the same)"
        )
    if config.get("bias", "none") != "none":
        refuses(f"bias {config['bias']!r} needs vLLM's --enable-lora-bias")
    return found + _generative_findings("vllm", head)


def _lorax_findings(head: str | None, config: dict[str, Any]) -> list[Finding]:
    """LoRAX reads ``r``, ``lora_alpha``, ``use_rslora`` and ``target_modules`` from the config
    and the ``lora_A``/``lora_B`` weights of every layer of each module type (its
    ``adapters/lora.py``); anything else the adapter trained is served without a word."""
    found = []

    def ignores(message: str) -> None:
        found.append(Finding("lorax", "ignores", message))

    if config.get("peft_type") != "LORA":
        refused = f"it serves LoRA adapters only, not {config.get('peft_type')}"
        found.append(Finding("lorax", "refuses", refused))
    if config.get("use_dora"):
        ignores(
            "it reads no DoRA magnitudes (use_dora) and would serve the adapter as plain LoRA; "
            "export --for merged instead"
        )
    if config.get("modules_to_save"):
        ignores(
            f"it loads lora_A and lora_B weights only, not modules_to_save "
            f"{config['modules_to_save']} (a new head): the base's own would answer; export "
            "--for merged instead"
        )
    if config.get("bias", "none") != "none":
        bias = config["bias"]
        ignores(f"it reads no LoRA bias (bias {bias!r}): it would serve the adapter without it")
    if config.get("layers_to_transform"):
        ignores(
            f"a module type adapted in only some layers (layers_to_transform "
            f"{config['layers_to_transform']}) is dropped from every layer"
        )
    return found + _generative_findings("lorax", head)


def _generative_findings(engine: str, head: str | None) -> list[Finding]:
    """vLLM and LoRAX serve LoRA on generative models only: an adapter of another head, or of a
    bare body (whose module paths are the body's, which their models nest deeper), is refused."""
    if head == "none":
        message = (
            "it serves LoRA on generative (causal-LM) models, and this adapter was trained on a "
            "base without a head (its module paths would match nothing there): train it on "
            "the causal-LM model (`head: {type: causal-lm}` in its spec)"
        )
    elif head not in (None, "causal-lm"):
        message = f"it serves LoRA on generative (causal-LM) models; this is a {head} adapter"
    else:
        return []
    return [Finding(engine, "refuses", message)]


def export(
    registry: Registry,
    ref: str,
    engine: str,
    destination: str | Path,
    *,
    max_lora_rank: int = VLLM_DEFAULT_MAX_LORA_RANK,
    force: bool = False,
) -> ExportResult:
    """Write version ``ref`` into ``destination`` (a new or empty folder) for ``engine``.

    Raises :class:`DataError` before touching ``destination`` when it is not empty, or when
    :func:`lint` finds something and ``force`` is not given.
    """
    target = checked_export_target(destination, engine)
    engine = engine_named(engine)
    version = registry.get(ref)
    with _staging(target) as (scratch, staged):
        stored = registry.fetch(version.ref, scratch / "stored")
        method, head, trained_head, method_config = _stated(stored, version)
        peft_config = _peft_config_of(stored, engine, method)
        findings = lint(
            engine, method, head, peft_config, max_lora_rank=max_lora_rank,
            trained_head=trained_head, method_config=method_config,
        )  # fmt: skip
        _refuse_unless_forced(version.ref, engine, findings, force)
        if engine == "merged":
            _write_merged(*_load(registry, version), [version.name], staged)
        elif engine == "adapterhub":
            _convert(version, stored, staged, "adapterhub")
        elif (stored / "adapter_config.json").is_file():
            shutil.copytree(stored, staged)
        else:
            _convert(version, stored, staged, "peft")
        # the files as written: one rank, maybe above the one predicted
        if engine in ONE_RANK_ENGINES:
            findings += _one_rank_ready(
                engine, staged, version.ref, method=method, head=head,
                max_lora_rank=max_lora_rank, force=force, known=findings,
            )  # fmt: skip
    serve = serving_hint(engine, version.base_model, target, version.name, head=head)
    return ExportResult(version.ref, engine, str(target), _files(target), findings, serve)


def export_composition(
    registry: Registry,
    ref: str,
    engine: str,
    destination: str | Path,
    *,
    max_lora_rank: int = VLLM_DEFAULT_MAX_LORA_RANK,
    force: bool = False,
) -> ExportResult:
    """Write composition ``ref`` (``pt-sst2@champion``) for ``engine`` as the one adapter that
    computes what it computes (``peft_core.flatten_composition``: a stack or an average of LoRA
    or BitFit adapters on the same modules), or merged into a full checkpoint.

    Every member is loaded and checked (fingerprint, golden probes) first; what cannot flatten
    exactly is refused with the reason, and nothing is written into ``destination``."""
    target = checked_export_target(destination, engine)
    engine = engine_named(engine)
    composition = registry.composition(ref)
    if engine == "adapterhub":
        raise DataError(
            f"{composition.ref} is not exported for adapterhub: a composition flattens into one "
            "LoRA or BitFit adapter and AdapterHub's format holds bottleneck adapters; export "
            "its members one at a time instead"
        )
    _check_flattens(registry, composition)
    from .predict_job import spec_of_composition  # noqa: PLC0415
    from .train_job import load_inference_model  # noqa: PLC0415 - transformers is heavy

    spec = spec_of_composition(registry, composition, "export")
    model, tokenizer = load_inference_model(spec)  # a base too big for one GPU spreads
    block = registry.load_definition(model, composition.definition, composition.members)
    if engine == "merged":
        _mergeable(model, spec)
    members = pc.active_adapters(model)
    flat = composition.name if composition.name not in members else f"{composition.name}-flat"
    pc.flatten_composition(model, block, name=flat)
    method = registry.get(composition.members[0]).method  # flattening keeps the method
    with _staging(target) as (_, staged):
        if engine == "merged":
            findings = lint("merged", method, spec.head.type, None)
            _refuse_unless_forced(composition.ref, engine, findings, force)
            _write_merged(model, tokenizer, [*members, flat], staged, keep=flat)
        else:
            pc.save_adapter(model, flat, staged, format="peft", tokenizer=tokenizer)
            pc.record_probes(model, flat, staged)  # pushed back to a registry, it is checked too
            if engine in ONE_RANK_ENGINES:
                findings = _one_rank_ready(
                    engine, staged, composition.ref, method=method, head=spec.head.type,
                    max_lora_rank=max_lora_rank, force=force,
                )  # fmt: skip
            else:
                peft_config = json.loads((staged / "adapter_config.json").read_text())
                findings = lint(engine, method, spec.head.type, peft_config)
                _refuse_unless_forced(composition.ref, engine, findings, force)
    serve = serving_hint(engine, spec.base_model, target, composition.name, head=spec.head.type)
    return ExportResult(composition.ref, engine, str(target), _files(target), findings, serve)


_AUTO_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
}


def _check_flattens(registry: Registry, composition: Composition) -> None:
    """Refuse, from the registry's records and before any model loads, a composition that
    flattens into no single adapter (``pc.flatten_composition`` says so too, but only after
    every member loaded, and in its own words: "cannot flatten")."""
    refuse = f"{composition.ref} cannot be exported as one adapter"
    try:
        pc.leaf_weights(pc.block_from_dict(composition.definition))
    except pc.CompositionError as exc:  # a Parallel or a Fuse: outputs that do not add up
        raise DataError(f"{refuse}: {exc}; export its members one at a time instead") from None
    methods = {member: registry.get(member).method for member in composition.members}
    if len(set(methods.values())) > 1:
        used = ", ".join(f"{member} ({method})" for member, method in methods.items())
        raise DataError(
            f"{refuse}: its members use different methods ({used}) and one adapter holds one; "
            "export its members one at a time instead"
        )
    method = next(iter(methods.values()))
    if pc.methods.method_of(method).combination != "exact":
        raise DataError(
            f"{refuse}: {method} adapters' outputs do not add up, so a stack or an average of "
            "them is no single adapter (LoRA and BitFit ones are); export its members one at a "
            "time instead"
        )


def serving_hint(
    engine: str, base_model: str, folder: Path, name: str, *, head: str | None = None
) -> str:
    """How ``engine`` takes the files exported into ``folder`` (an adapter called ``name`` on
    ``base_model``, trained with ``head``): the command or call to run, or adapt."""
    where = str(folder.resolve())
    if engine == "vllm":  # the rank as written: one for every module
        rank = int(read_json_object(folder / "adapter_config.json").get("r") or 0)
        wider = f" --max-lora-rank {rank}" if rank > VLLM_DEFAULT_MAX_LORA_RANK else ""
        command = [
            "vllm",
            "serve",
            base_model,
            "--enable-lora",
            "--lora-modules",
            f"{name}={where}",
        ]
        return shlex.join(command) + wider
    if engine == "lorax":
        launch = shlex.join(["lorax-launcher", "--model-id", base_model])
        return (
            f'{launch}; each request names it: "adapter_id": "{where}", "adapter_source": "local"'
        )
    if engine == "merged":  # the checkpoint's own class: the head is part of it
        architectures = read_json_object(folder / "config.json").get("architectures") or []
        model_class = architectures[0] if architectures else "AutoModel"
        call = f"transformers.{model_class}.from_pretrained({where!r})"
        if model_class.endswith("ForCausalLM"):  # a plain checkpoint: any LLM server takes it
            return f"{shlex.join(['vllm', 'serve', where])} (or {call})"
        return call
    if engine == "peft":
        auto = _AUTO_CLASSES.get(head or "", "AutoModel")
        base = f"transformers.{auto}.from_pretrained({base_model!r})"
        return f"peft.PeftModel.from_pretrained({base}, {where!r})"
    return (  # adapterhub: the body's adapter, without a head
        f"model = transformers.AutoModel.from_pretrained({base_model!r}); adapters.init(model); "
        f"model.load_adapter({where!r}, set_active=True)"
    )


def _one_rank_ready(
    engine: str,
    folder: Path,
    ref: str,
    *,
    method: str,
    head: str | None,
    max_lora_rank: int,
    force: bool,
    known: Sequence[Finding] = (),
) -> list[Finding]:
    """Make the PEFT files in ``folder`` one rank everywhere (vLLM and LoRAX read ``r`` and
    ``lora_alpha`` alone; exact: zero padding and scalings folded into B), then lint them as
    written for ``engine``; returns the findings not in ``known`` (refused unless ``force``)."""
    config = pc.one_rank_in_place(folder)
    found = lint(engine, method, head, config, max_lora_rank=max_lora_rank)
    new = [f for f in found if f not in known]
    _refuse_unless_forced(ref, engine, new, force)
    return new


@contextmanager
def _staging(target: Path) -> Iterator[tuple[Path, Path]]:
    """A scratch folder beside ``target`` and the folder to write (``scratch/out``), moved into
    place whole when the block succeeds; on failure nothing reaches ``target``."""
    with (
        new_folders(target.parent),
        tempfile.TemporaryDirectory(prefix=".export-", dir=target.parent) as scratch,
    ):
        staged = Path(scratch) / "out"
        yield Path(scratch), staged
        if target.exists():
            target.rmdir()  # empty, checked before
        staged.rename(target)  # whole or not at all


def _refuse_unless_forced(ref: str, engine: str, findings: list[Finding], force: bool) -> None:
    """Refuse the export when there are findings, unless ``force``; when no files can be
    written at all, whether or not ``force`` (and the message does not offer it)."""
    listed = "; ".join(str(f) for f in findings)
    if any(f.unwritable for f in findings):
        raise DataError(f"{ref} cannot be exported for {engine}: {listed} (nothing written)")
    if findings and not force:
        raise DataError(
            f"{ref} is not exported for {engine}: {listed} (nothing written; --force writes it "
            "anyway)"
        )


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _stated(
    stored: Path, version: AdapterVersion
) -> tuple[str, str | None, bool, dict[str, Any] | None]:
    """``(method, head, trained head, method configuration)`` of a fetched version: as our
    metadata states them, or for a folder peft wrote (no metadata of ours) as its
    ``adapter_config.json`` does (the registry recorded the method from it)."""
    head, _, trained = stated_head(stored)
    if any((stored / name).is_file() for name in ("adapter.json", "adapterops.json")):
        method = pc.read_metadata(stored)["method"]
        return str(method["type"]), head, trained, method  # "none": trained on a bare body
    # a native method's options are in its tensors; a peft-run one's are its peft config
    config = read_json_object(stored / "adapter_config.json")
    method_config = (
        {"type": "peft", "config": portable_config(config)} if version.method == "peft" else None
    )
    # peft's task_type unset: which head the model had is not known
    return version.method, None if head == "none" else head, trained, method_config


def _peft_config_of(stored: Path, engine: str, method: str) -> dict[str, Any] | None:
    """The PEFT configuration the export would carry (None: the method has no PEFT form)."""
    if engine in ("merged", "adapterhub"):
        return None
    config_file = stored / "adapter_config.json"
    if config_file.is_file():
        config: dict[str, Any] = json.loads(config_file.read_text())
        return config
    kind = pc.method_of(method)
    if kind.peft_type is None:
        return None
    # What write_peft will say, read from our metadata (without loading the base model).
    meta = pc.read_metadata(stored)
    options = meta["method"]
    head = meta.get("head") or {}
    return {
        "peft_type": kind.peft_type,
        "r": options.get("rank"),
        "lora_alpha": options.get("alpha"),
        "use_dora": method == "dora",
        # a head of its own only: a causal LM's lm_head stays the base's, frozen and not saved
        "modules_to_save": (head.get("modules") or None) if head.get("trainable") else None,
        "rank_pattern": {k: v[0] for k, v in (meta.get("lora_overrides") or {}).items()},
        "bias": "none",
    }


def _load(registry: Registry, version: AdapterVersion) -> tuple[Any, Any]:
    """The version's base model (with its head) and tokenizer, with the adapter loaded (its
    golden probes checked on the base as it was trained), ready to merge."""
    from .train_job import load_inference_model  # noqa: PLC0415 - transformers is heavy

    spec = serving_spec(registry, version, "export")
    model, tokenizer = load_inference_model(spec)
    registry.load_into(model, version.ref, name=version.name)
    _mergeable(model, spec)
    return model, tokenizer


def _mergeable(model: Any, spec: AdapterSpec) -> None:
    """A QLoRA's 4-bit (or int8) base weights stored as the values they compute with, in the
    base's dtype: merged into them, the adapter computes what it computed when it was scored
    (peft users reload the bf16 base instead, whose weights differ from those the adapter
    trained against by the quantisation error)."""
    if spec.load.quantization != "none":
        pc.quantize.dequantize_base(model, spec.load.torch_dtype())


def _convert(
    version: AdapterVersion, stored: Path, folder: Path, format: Literal["peft", "adapterhub"]
) -> None:
    """The stored adapter (fetched and checked against its digests) rewritten in ``format``
    from the base's config alone (``pc.convert_adapter``: the same files as loading it into the
    base and saving, without loading a 70B base to do so). A version without a spec (pushed or
    imported) is converted on its base model's body."""
    import torch  # noqa: PLC0415 - torch is heavy

    from .models import base_config, load_base_config  # noqa: PLC0415
    from .train_job import load_tokenizer  # noqa: PLC0415

    if version.spec:
        spec = spec_of_version(version, "export")
        pc.convert_adapter(
            stored, folder, base_config(spec), head=spec.head.type, format=format,
            dtype=spec.load.torch_dtype(), tokenizer=load_tokenizer(spec),
        )  # fmt: skip
    else:  # in the dtype from_pretrained would give it (its checkpoint's)
        config = load_base_config(version.base_model)
        dtype = getattr(config, "dtype", None)
        dtype = dtype if isinstance(dtype, torch.dtype) else None
        # built with the head the files state: a classifier they carry trained, or the frozen
        # LM head of the model it was trained in (its modules' paths run through that model:
        # converted on the body, a causal LM's LoRA matched nothing in peft or vLLM)
        head, modules, _ = stated_head(stored)
        labels = classifier_size(stored, modules, version.ref) if head == "classification" else None
        if labels:
            config.num_labels = labels
        pc.convert_adapter(
            stored, folder, config, head=cast("pc.HeadKind", head), format=format, dtype=dtype
        )


def _write_merged(
    model: Any, tokenizer: Any, adapters: list[str], folder: Path, *, keep: str | None = None
) -> None:
    """The base with adapter ``keep`` (default: the last of ``adapters``) folded into its weights,
    saved as a plain checkpoint; every adapter is taken out first, so the model saves plain."""
    weights = pc.merged_state_dict(model, keep or adapters[-1])
    for name in adapters:
        pc.delete_adapter(model, name)
    model.load_state_dict(weights)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for written in folder.glob("*.safetensors"):  # safetensors makes them 0600 (the module)
        readable_as_new(written)

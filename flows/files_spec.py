"""The spec that predict and a merged export run a version with, read from its files when it
was registered without one.

A version pushed without ``--spec`` (an adapter peft trained elsewhere, a folder of ours) or
imported from AdapterHub records no spec. What answering with it needs is in its files: the
head they carry (``adapter.json`` / ``adapterops.json``, or peft's ``task_type``), and a
classifier's number of labels (the size of its output weight). The rest is the spec defaults:
``load.dtype: auto`` (bf16 on a GPU that has it, else float32), inputs cut at 128 tokens,
``--data`` texts in the ``sentence`` column, labels by number. Nothing else is guessed: a
version whose files carry no head it could answer with is refused, naming what to do. The spec
made here is not stored, and not a build spec: its method and data source are left unset.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

from registry import AdapterVersion, Registry
from registry.bundles import PEFT_TASK_HEADS, read_json_object

from .errors import DataError
from .spec import (
    AdapterSpec,
    DataSpec,
    EvaluateSpec,
    HeadSpec,
    LoadSpec,
    PromoteSpec,
    ScheduleSpec,
    TrainSpec,
    spec_of_version,
)

__all__ = ["SCORE_ON_A_FILE", "classifier_size", "serving_spec", "spec_from_files", "stated_head"]

# what evaluate says to do for a version or composition with no spec naming columns and a metric
SCORE_ON_A_FILE = (
    "or score it on a file: --data FILE (texts in `sentence` and labels in `label`, or the "
    "columns --text-column and --label-column name)"
)


def serving_spec(registry: Registry, version: AdapterVersion, command: str) -> AdapterSpec:
    """The spec ``command`` runs ``version`` with: the one it was built or pushed with, else the
    part of one its files tell (see the module's docstring)."""
    if version.spec:
        return spec_of_version(version, command)
    if version.head in ("causal-lm", "masked-lm"):  # read from its files when registered
        head = HeadSpec.model_validate({"type": version.head})  # (no size to read: an LM head)
    else:
        with tempfile.TemporaryDirectory(prefix="adapterops-spec-") as scratch:
            folder = registry.fetch(version.ref, Path(scratch) / "adapter")
            head = _head_of(folder, version, command)
    return _spec_with(version, head)


def spec_from_files(version: AdapterVersion, folder: Path, command: str) -> AdapterSpec:
    """:func:`serving_spec` of a version registered without a spec, from its files already in
    ``folder`` (``pull --verify`` has them)."""
    return _spec_with(version, _head_of(folder, version, command))


def _spec_with(version: AdapterVersion, head: HeadSpec) -> AdapterSpec:
    """The spec defaults around ``version``'s identity and ``head``."""
    return AdapterSpec.model_construct(
        name=version.name, base_model=version.base_model, task=version.task,
        language=version.language, description=version.description, head=head,
        data=DataSpec.model_construct(), load=LoadSpec(), train=TrainSpec(),
        evaluate=EvaluateSpec(), promote=PromoteSpec(), schedule=ScheduleSpec(),
    )  # fmt: skip


def _head_of(folder: Path, version: AdapterVersion, command: str) -> HeadSpec:
    """The head ``folder``'s adapter answers with; a classifier's size from its weights."""
    kind, modules, trained = stated_head(folder)
    if kind in ("causal-lm", "masked-lm"):
        return HeadSpec.model_validate({"type": kind})
    if kind != "classification":
        missing = "head"
    elif not trained:
        missing = "trained classifier"
    elif (labels := classifier_size(folder, modules, version.ref)) is not None:
        return HeadSpec(type="classification", num_labels=labels)
    else:
        missing = "classifier weights"
    raise DataError(
        f"{version.ref} was registered without a spec and its files carry no {missing}, so "
        f"{command} has nothing to answer with: push the folder with --spec SPEC (the spec it "
        f"was trained with; `adapterops rm {version.ref}` first), or stack a task adapter on it "
        f"(`adapterops composition save NAME {version.ref} TASK@VERSION`)"
    )


def stated_head(folder: Path) -> tuple[str, list[str], bool]:
    """``(kind, head modules, trained)`` of the head an adapter folder carries, as its metadata
    states them: ours (``adapter.json``, or ``adapterops.json`` beside a PEFT export), else
    peft's config (``task_type``; the head is trained when it names ``modules_to_save``)."""
    for name in ("adapter.json", "adapterops.json"):
        if (folder / name).is_file():
            head = read_json_object(folder / name).get("head") or {}
            return (
                str(head.get("kind", "none")),
                list(head.get("modules", [])),
                bool(head.get("trainable")),
            )
    config = read_json_object(folder / "adapter_config.json")
    kind = PEFT_TASK_HEADS.get(str(config.get("task_type")), "none")
    modules = list(config.get("modules_to_save") or [])
    return kind, modules, bool(modules)


def classifier_size(folder: Path, modules: list[str], ref: str) -> int | None:
    """The number of labels: the smallest first dimension among the head's 2-D weights (a
    classifier's output layer; RoBERTa's also holds a hidden-size ``dense`` before it)."""
    ours = folder / "adapter.safetensors"
    tensors = ours if ours.is_file() else folder / "adapter_model.safetensors"
    try:
        with safe_open(str(tensors), "pt") as weights:
            shapes = [
                weights.get_slice(key).get_shape()
                for key in weights.keys()  # noqa: SIM118 - safe_open is not a mapping
                if any(f".{module}." in f".{key}" for module in modules)
            ]
    except (SafetensorError, OSError) as exc:  # registered before push checked the file
        raise DataError(
            f"{ref}'s {tensors.name} is not a safetensors file ({exc}): push the folder as "
            "peft or adapterops wrote it"
        ) from None
    rows = [shape[0] for shape in shapes if len(shape) == 2]
    return min(rows) if rows else None

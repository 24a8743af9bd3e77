"""``save_adapter`` / ``load_adapter``: one entry point for both file formats."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import PretrainedConfig

from .adapterhub import CONFIG as ADAPTERHUB_CONFIG
from .adapterhub import WEIGHTS as ADAPTERHUB_WEIGHTS
from .adapterhub import is_adapterhub_folder, read_adapterhub, write_adapterhub
from .errors import AdapterExistsError, AdapterFormatError, ConfigError
from .heads import HeadKind
from .io import (
    ADAPTER_META,
    ADAPTER_WEIGHTS,
    metadata,
    read_ours,
    require_adapter_folder,
    write_ours,
)
from .layer import base_compute_dtype
from .peft_format import OUR_METADATA, PEFT_CONFIG, PEFT_WEIGHTS, read_peft, write_peft
from .probes import PROBES_FILE
from .state import AdapterRecord, check_model, get_record

__all__ = ["convert_adapter", "load_adapter", "save_adapter"]


def save_adapter(
    model: nn.Module,
    name: str,
    path: str | Path,
    *,
    format: Literal["adapterops", "peft", "adapterhub"] = "adapterops",
    tokenizer: Any = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write adapter ``name`` to folder ``path`` (created if needed) and return the folder.

    ``format="adapterops"`` (default) writes ``adapter.safetensors`` + ``adapter.json`` for any
    method. ``format="peft"`` (LoRA only) writes ``adapter_config.json`` +
    ``adapter_model.safetensors`` as peft, vLLM and LoRAX read them, and our metadata in a separate
    ``adapterops.json``. ``format="adapterhub"`` (Houlsby, Pfeiffer) writes what AdapterHub's
    ``adapters`` 1.x loads (no head). Give ``tokenizer`` to include its vocabulary in the
    base-model fingerprint.
    Floating tensors are written in ``dtype``, by default the base's compute dtype (as peft does:
    float32 adapters trained on a bf16 base are saved in bf16).
    """
    if format not in ("adapterops", "peft", "adapterhub"):
        raise ConfigError(
            f"unknown adapter format {format!r}; expected 'adapterops', 'peft' or 'adapterhub'"
        )
    record = get_record(model, name)
    folder = Path(path)
    file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if file is not None:  # found before anything is written, not by mkdir at the end
        raise NotADirectoryError(
            f"cannot save adapter {name!r} into {folder}: {file} is a file; give a folder (new "
            "or existing) to write the adapter's files into"
        )
    in_file = dtype if dtype is not None else base_compute_dtype(model)
    # Written beside the folder first (in its nearest existing parent: the same filesystem, and
    # no new folder yet): a writer that refuses the adapter (a format without its method) or
    # fails half-way leaves the folder as it was, and makes no empty folders.
    beside = next(p for p in (folder.parent, *folder.parent.parents) if p.exists())
    with tempfile.TemporaryDirectory(dir=beside, prefix=f".{folder.name}.saving-") as tmp:
        staged = Path(tmp)
        if format == "adapterhub":
            write_adapterhub(model, record, staged, dtype=in_file)
        else:
            writer = write_peft if format == "peft" else write_ours
            writer(model, record, staged, metadata(model, record, tokenizer), dtype=in_file)
        _replace_adapter_files(staged, folder)
    return folder


# What any format or an earlier save leaves in an adapter folder (probes.json: golden probes of
# the adapter that was there). Saving again removes those the new files do not replace: an
# adapter.json left from an earlier save would be what load_adapter reads first.
_ADAPTER_FILES = frozenset(
    {ADAPTER_META, ADAPTER_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS, OUR_METADATA, PROBES_FILE}
    | {ADAPTERHUB_CONFIG, *ADAPTERHUB_WEIGHTS}
)


def _replace_adapter_files(staged: Path, folder: Path) -> None:
    """Move the staged files into ``folder``, and remove the adapter files they do not replace
    (other files, a user's notes, stay)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {p.name for p in staged.iterdir()}
    for name in sorted(_ADAPTER_FILES - written):
        (folder / name).unlink(missing_ok=True)
    for name in sorted(written):
        os.replace(staged / name, folder / name)


def load_adapter(
    model: nn.Module,
    path: str | Path,
    *,
    name: str | None = None,
    tokenizer: Any = None,
    force: bool = False,
) -> AdapterRecord:
    """Load a saved adapter into ``model`` and activate it: our format, the PEFT layout, or an
    AdapterHub (``adapters`` 1.x) bottleneck adapter (:mod:`peft_core.adapterhub`).

    Refuses, before changing the model, an adapter whose base-model fingerprint differs from
    ``model``'s (``force=True`` loads it anyway), and a folder with missing or unexpected tensors.
    """
    check_model(model)
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"load_adapter takes a folder, not {type(path).__name__} {path!r:.40}")
    folder = Path(path)
    require_adapter_folder(folder)
    if (folder / ADAPTER_META).is_file() and (folder / PEFT_CONFIG).is_file():
        raise AdapterFormatError(  # which one the user meant is not ours to guess
            f"{folder} holds two adapters' files: {ADAPTER_META} (peft_core's format) and "
            f"{PEFT_CONFIG} (PEFT or AdapterHub); keep one adapter per folder (move the other's "
            "files out) and load again"
        )
    try:
        if (folder / ADAPTER_META).is_file():
            return read_ours(model, folder, name=name, tokenizer=tokenizer, force=force)
        if is_adapterhub_folder(folder):
            return read_adapterhub(model, folder, name=name, force=force)
        if (folder / PEFT_CONFIG).is_file():
            return read_peft(model, folder, name=name, tokenizer=tokenizer, force=force)
    except AdapterExistsError as clash:  # the saved name is taken: the fix is name=
        raise AdapterExistsError(
            f"model already has an adapter {clash.name!r}; load this one under another name "
            f"(peft_core.load_adapter(model, {str(folder)!r}, name='...')) or "
            "peft_core.delete_adapter the one there first",
            clash.name,
        ) from None
    raise AdapterFormatError(
        f"{folder} is not an adapter folder: expected {ADAPTER_META} (peft_core) or "
        f"{PEFT_CONFIG} (a PEFT or AdapterHub adapter)"
    )


def convert_adapter(
    path: str | Path,
    out: str | Path,
    base: PretrainedConfig,
    *,
    head: HeadKind = "none",
    format: Literal["adapterops", "peft", "adapterhub"] = "peft",
    dtype: torch.dtype | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write the adapter saved (in our format) at ``path`` in another ``format``, without the
    base model's weights: ``base`` is its ``PretrainedConfig``, and the model is built on the
    meta device, so a 70B base costs seconds and no memory. ``dtype``: the base's dtype (the
    files are written in it, as :func:`save_adapter` does). The same files as loading it into
    the real base and saving; methods peft runs and full fine-tuning need the real base.
    The base-model fingerprint is checked as :func:`load_adapter` checks it (``tokenizer``:
    with its vocabulary)."""
    from .plan import build_on_meta  # noqa: PLC0415 - plan imports the methods

    folder = Path(path)
    require_adapter_folder(folder)
    if not (folder / ADAPTER_META).is_file():
        raise AdapterFormatError(
            f"{folder} has no {ADAPTER_META}: convert_adapter reads our format"
        )
    if Path(out).exists() and Path(out).resolve() == folder.resolve():
        # a save replaces the destination's files: the source adapter was deleted for its copy
        raise ConfigError(
            f"convert_adapter would write into {folder}, the folder it reads, replacing the "
            "adapter there; give another destination folder"
        )
    skeleton = build_on_meta(base, head, dtype=dtype)
    record = read_ours(skeleton, folder, tokenizer=tokenizer, weightless=True)
    return save_adapter(skeleton, record.name, out, format=format, tokenizer=tokenizer)

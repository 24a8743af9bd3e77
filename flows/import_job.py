"""``adapterops import``: an AdapterHub adapter becomes a registry version, checked on its base.

The folder is loaded onto the named base model by :mod:`peft_core.adapterhub` (which refuses what
our modules would not compute the same), saved in our format with the base's fingerprint and
golden probes, and registered with where it came from in the lineage. From then on it is a
version like any other: a member of fusions and stacks, verified by its probes when loaded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import AutoModel

import peft_core as pc
from peft_core.adapterhub import adapterhub_method, is_adapterhub_folder
from registry import AdapterVersion, Registry
from registry.names import check_language, check_name

from .errors import DataError
from .models import load_base_tokenizer, resolve_base_weights
from .push_job import RegistryOrOpener, opened

__all__ = ["import_adapterhub"]


def import_adapterhub(
    folder: Path,
    *,
    registry: RegistryOrOpener,
    base_model: str,
    name: str,
    task: str,
    language: str,
    metrics: dict[str, float] | None = None,
    description: str = "",
) -> AdapterVersion:
    """Register the AdapterHub adapter in ``folder`` as ``name``'s next version (``registry``:
    one, or what opens it once the adapter converted)."""
    check_name(name)  # before the base model loads
    check_name(task, "task")
    check_language(language)
    if not folder.exists():
        raise DataError(f"{folder} does not exist: give the folder the `adapters` library saved")
    if not folder.is_dir() or not is_adapterhub_folder(folder):
        raise DataError(
            f"{folder} is not an AdapterHub adapter folder (adapter_config.json written by the "
            "`adapters` library, with its weights); folders written by peft_core or peft are "
            "registered with `adapterops push`"
        )
    if isinstance(registry, Registry):  # a name bound elsewhere: said before the base loads
        registry.check_binding(
            name, base_model=base_model, task=task, language=language,
            method=adapterhub_method(folder), what=str(folder),
        )  # fmt: skip
    path = resolve_base_weights(base_model)
    tokenizer = load_base_tokenizer(base_model)
    model = AutoModel.from_pretrained(path).eval()  # the body: AdapterHub heads are not read
    record = pc.load_adapter(model, folder, name=name)
    source = json.loads((folder / "adapter_config.json").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        saved = pc.save_adapter(model, name, Path(scratch) / "adapter", tokenizer=tokenizer)
        pc.record_probes(model, name, saved)
        return opened(registry).register(
            saved,
            name=name,
            base_model=base_model,
            task=task,
            language=language,
            metrics=metrics,
            lineage={
                "imported_from": "adapterhub",
                "adapterhub_version": str(source.get("version", "")),
                "adapterhub_name": str(source.get("name", "")),
                "method": record.config.type,
            },
            description=description,
            origin="import",
        )

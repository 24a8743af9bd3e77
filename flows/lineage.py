"""Where a version came from: the data it saw and the code that trained it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from . import __version__ as package_version
from .spec import AdapterSpec

__all__ = ["code_version", "dataset_fingerprint", "spec_lineage"]


def spec_lineage(spec: AdapterSpec) -> dict[str, str]:
    """What a build of ``spec`` here would record as its lineage, before its identity (the
    build key): the data's fingerprint, the code's version, and what ``load.dtype: auto``
    becomes on this machine (and the quantization, if any)."""
    lineage = {
        "dataset_fingerprint": dataset_fingerprint(spec),
        "code_version": code_version(),
        "base_dtype": str(spec.load.torch_dtype()).removeprefix("torch."),
    }
    if spec.load.quantization != "none":
        lineage["base_quantization"] = spec.load.quantization
    return lineage


def dataset_fingerprint(spec: AdapterSpec) -> str:
    """sha256 over the data files' bytes and the data settings that select and read them."""
    digest = hashlib.sha256()
    settings = spec.data.model_dump(exclude={"train", "validation"})
    digest.update(
        json.dumps(
            {**settings, "seed": spec.train.seed, "max_length": spec.train.max_length},
            sort_keys=True,
        ).encode()
    )
    if spec.data.dataset is not None:
        from .data import load_raw  # noqa: PLC0415 - datasets loads only when a dataset id is used

        for split in load_raw(spec):  # datasets' own content fingerprints of the selected rows
            digest.update(split._fingerprint.encode())
        return digest.hexdigest()
    for location in (spec.data.train, spec.data.validation):
        if location is None:
            continue
        path = Path(location)
        if path.is_file():
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        else:
            digest.update(location.encode())  # a dataset id: its name is all we know offline
    return digest.hexdigest()


def code_version() -> str:
    """The git commit of this checkout (``+dirty`` with local changes), else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return f"adapterops-{package_version}"
    return f"{commit}{'+dirty' if dirty else ''}"

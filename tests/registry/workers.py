"""Code that runs in separate processes during the concurrency tests (importable, no fixtures)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_fake_adapter(
    folder: Path,
    seed: int,
    *,
    method: str = "lora",
    head: str = "classification",
    fingerprint: str = "f" * 64,
) -> Path:
    """An adapter folder in our format whose tensor file holds one tensor of seeded random
    bytes (a whole safetensors file, as push requires; nothing loads it as an adapter)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "adapterops.adapter",
        "format_version": 1,
        "method": {"type": method},
        "head": {"kind": head},
        "fingerprint": {"digest": fingerprint},
    }
    (folder / "adapter.json").write_text(json.dumps(meta))
    values = np.frombuffer(random.Random(seed).randbytes(2048), dtype=np.uint8)
    save_file({"weights": values}, str(folder / "adapter.safetensors"))
    return folder


def register_many(
    database_url: str, artifacts_url: str, folders: list[str], name: str
) -> list[int]:
    """Register each folder as a version of ``name``; returns the version numbers obtained."""
    from registry import Registry

    registry = Registry(database_url, artifacts_url)
    try:
        return [
            registry.register(
                folder, name=name, base_model="tiny-bert", task="sst2", language="en"
            ).version
            for folder in folders
        ]
    finally:
        registry.close()


def gate_once(database_url: str, artifacts_url: str, ref: str, pause: float) -> bool:
    """A promotion gate in miniature, under the adapter's alias lock: read who holds champion,
    wait ``pause`` (a build re-evaluates the champion here), make ``ref`` champion if it scores
    higher. Returns whether it did."""
    import time

    from registry import Registry

    registry = Registry(database_url, artifacts_url)
    try:
        candidate = registry.get(ref)
        with registry.alias_lock(candidate.name):
            held = [v for v in registry.find(name=candidate.name) if "champion" in v.aliases]
            time.sleep(pause)
            if held and held[0].metrics["accuracy"] >= candidate.metrics["accuracy"]:
                return False
            registry.set_alias(ref, "champion")
            return True
    finally:
        registry.close()

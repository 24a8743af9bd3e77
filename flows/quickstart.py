"""The specs behind ``adapterops quickstart``: several methods on MiniLM, same data and budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .spec import AdapterSpec, parse_spec

__all__ = [
    "METHOD_RECIPES",
    "QUICKSTART_METHODS",
    "minilm_sst2_spec",
    "quickstart_specs",
    "write_spec_file",
]

MINILM = "sentence-transformers/all-MiniLM-L6-v2"

# Each method at a learning rate that suits it (small adapters and biases need larger steps).
METHOD_RECIPES: dict[str, tuple[dict[str, Any], float]] = {
    "lora": ({"type": "lora", "rank": 8, "alpha": 16, "targets": ["q", "v"]}, 1e-3),
    "pissa": (
        {"type": "lora", "rank": 8, "alpha": 16, "targets": ["q", "v"], "init": "pissa"},
        1e-3,
    ),
    "bitfit": ({"type": "bitfit"}, 5e-3),
    "houlsby": ({"type": "houlsby", "reduction_factor": 16}, 1e-3),
    "pfeiffer": ({"type": "pfeiffer", "reduction_factor": 16}, 1e-3),
    "full": ({"type": "full"}, 1e-4),
}
QUICKSTART_METHODS = ("lora", "bitfit", "pfeiffer")


def minilm_sst2_spec(
    method: str,
    data: Path,
    *,
    steps: int,
    batch_size: int = 16,
    name: str | None = None,
    language: str = "en",
    seed: int = 0,
) -> AdapterSpec:
    """SST-2 on MiniLM with one of :data:`METHOD_RECIPES`, ``steps`` x ``batch_size`` examples."""
    fields, learning_rate = METHOD_RECIPES[method]
    document = {
        "name": name or f"minilm-sst2-{language}-{method}",
        "base_model": MINILM,
        "task": "sst2" if name is None else name.split("-")[1],
        "language": language,
        "head": {"type": "classification", "label_names": ["negative", "positive"]},
        "method": fields,
        "data": {
            "train": str((data / "train.tsv").resolve()),
            "validation": str((data / "validation.tsv").resolve()),
            "max_train_samples": steps * batch_size,
        },
        "train": {
            "max_steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_length": 64,
            "seed": seed,
        },
    }
    return parse_spec(document, source=f"{method} on {data}")


def quickstart_specs(data: Path, *, steps: int, task: str = "sentiment") -> list[AdapterSpec]:
    """One spec per quickstart method over ``data/{train,validation}.tsv``."""
    return [
        minilm_sst2_spec(method, data, steps=steps, name=f"quickstart-{task}-en-{method}")
        for method in QUICKSTART_METHODS
    ]


def write_spec_file(spec: AdapterSpec, folder: Path) -> Path:
    """``spec`` as ``folder/NAME.yaml`` (flows and deployments take spec files)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return path

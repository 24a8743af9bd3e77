"""The specs behind ``adapterops quickstart``: a few methods on MiniLM, same data and budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .spec import AdapterSpec, parse_spec

__all__ = ["QUICKSTART_METHODS", "quickstart_specs"]

# Each method at a learning rate that suits it (small adapters and biases need larger steps).
QUICKSTART_METHODS: dict[str, tuple[dict[str, Any], float]] = {
    "lora": ({"type": "lora", "rank": 8, "alpha": 16, "targets": ["q", "v"]}, 1e-3),
    "bitfit": ({"type": "bitfit"}, 5e-3),
    "pfeiffer": ({"type": "pfeiffer", "reduction_factor": 16}, 1e-3),
}


def quickstart_specs(data: Path, *, steps: int) -> list[AdapterSpec]:
    """One spec per quickstart method over ``data/{train,validation}.tsv``."""
    specs = []
    for method, (fields, learning_rate) in QUICKSTART_METHODS.items():
        document = {
            "name": f"quickstart-sst2-en-{method}",
            "base_model": "sentence-transformers/all-MiniLM-L6-v2",
            "task": "sst2",
            "language": "en",
            "head": {"type": "classification", "num_labels": 2},
            "method": fields,
            "data": {
                "train": str((data / "train.tsv").resolve()),
                "validation": str((data / "validation.tsv").resolve()),
                "max_train_samples": steps * 16,
            },
            "train": {
                "max_steps": steps,
                "batch_size": 16,
                "learning_rate": learning_rate,
                "max_length": 64,
            },
        }
        specs.append(parse_spec(document, source=f"quickstart:{method}"))
    return specs

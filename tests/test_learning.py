"""Learning on real data: every method, trained briefly on SST-2 with the real MiniLM, beats the
majority class on the full validation set by a clear margin.

Same data budget and seed for every method (200 steps x 16 examples); each method at a learning
rate that suits it. Results are written to ``test-artifacts/learning.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.spec import parse_spec
from flows.train_job import train_from_spec

STEPS, BATCH = 200, 16
MARGIN = 0.15  # over the majority class: a clear margin, far beyond seed noise
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

METHODS = {
    "lora": ({"type": "lora", "rank": 8, "alpha": 16, "targets": ["q", "v"]}, 1e-3),
    "bitfit": ({"type": "bitfit"}, 5e-3),
    "houlsby": ({"type": "houlsby", "reduction_factor": 16}, 1e-3),
    "pfeiffer": ({"type": "pfeiffer", "reduction_factor": 16}, 1e-3),
    "full": ({"type": "full"}, 1e-4),
}

RESULTS: dict[str, dict[str, float]] = {}


def majority_share(path: Path) -> float:
    labels = [line.rsplit("\t", 1)[1].strip() for line in path.read_text().splitlines()[1:]]
    return max(labels.count(value) for value in set(labels)) / len(labels)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_method_learns_sst2(method, sst2_dir, tmp_path):
    fields, learning_rate = METHODS[method]
    spec = parse_spec(
        {
            "name": f"learning-{method}",
            "base_model": "sentence-transformers/all-MiniLM-L6-v2",
            "task": "sst2",
            "language": "en",
            "head": {"type": "classification", "num_labels": 2},
            "method": fields,
            "data": {
                "train": str(sst2_dir / "en" / "train.tsv"),
                "validation": str(sst2_dir / "en" / "validation.tsv"),
                "max_train_samples": STEPS * BATCH,
            },
            "train": {
                "max_steps": STEPS,
                "batch_size": BATCH,
                "learning_rate": learning_rate,
                "max_length": 64,
                "seed": 0,
            },
        }
    )
    report = train_from_spec(spec, tmp_path / method)
    majority = majority_share(sst2_dir / "en" / "validation.tsv")
    accuracy = report.metrics["accuracy"]
    RESULTS[method] = {
        "accuracy": accuracy,
        "macro_f1": report.metrics["macro_f1"],
        "majority": majority,
        "median_step_seconds": report.median_step_seconds,
        "trainable_params": report.trainable_params,
        "adapter_bytes": report.adapter_bytes,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "learning.json").write_text(json.dumps(RESULTS, indent=2) + "\n")
    assert report.metrics["examples"] == 872  # the whole validation set
    assert accuracy >= majority + MARGIN, f"{method}: {accuracy:.3f} vs majority {majority:.3f}"

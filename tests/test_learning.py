"""Learning on real data: every method, trained briefly on SST-2 with the real MiniLM, beats the
majority class on the full validation set by a clear margin.

Same data budget and seed for every method (150 steps x 16 examples); each method at a learning
rate that suits it (``flows.quickstart.METHOD_RECIPES``). Results go to
``test-artifacts/learning.json``: a row per method, from its latest run.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from flows.quickstart import METHOD_RECIPES, minilm_sst2_spec
from flows.train_job import train_from_spec

STEPS, BATCH = 150, 16  # the weakest, BitFit, reaches 0.78 (threshold 0.66); 100 is too few
MARGIN = 0.15  # over the majority class: a clear margin, far beyond seed noise
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def record(method: str, row: dict[str, float]) -> None:
    """Add ``method``'s row to learning.json. The methods run on several pytest-xdist workers,
    each its own process: each merges its row into the file under a lock (a worker that wrote
    only what it ran would drop the other's rows)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "learning.json"
    with (ARTIFACTS / ".learning.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.is_file() else {}
        results[method] = row
        path.write_text(json.dumps(results, indent=2) + "\n")


def majority_share(path: Path) -> float:
    labels = [line.rsplit("\t", 1)[1].strip() for line in path.read_text().splitlines()[1:]]
    return max(labels.count(value) for value in set(labels)) / len(labels)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD_RECIPES))
def test_method_learns_sst2(method, sst2_dir, tmp_path):
    spec = minilm_sst2_spec(method, sst2_dir / "en", steps=STEPS, batch_size=BATCH)
    report = train_from_spec(spec, tmp_path / method)
    majority = majority_share(sst2_dir / "en" / "validation.tsv")
    accuracy = report.metrics["accuracy"]
    record(
        method,
        {
            "accuracy": accuracy,
            "macro_f1": report.metrics["macro_f1"],
            "majority": majority,
            "median_step_seconds": report.median_step_seconds,
            "trainable_params": report.trainable_params,
            "adapter_bytes": report.adapter_bytes,
        },
    )
    assert report.metrics["examples"] == 872  # the whole validation set
    assert accuracy >= majority + MARGIN, f"{method}: {accuracy:.3f} vs majority {majority:.3f}"


def test_gradient_checkpointing_through_the_spec_gives_the_same_run(
    sst2_dir, tmp_path, monkeypatch
):
    """``train.gradient_checkpointing: true`` reaches the training loop and changes nothing but
    memory: the same losses, step for step, on the real MiniLM."""
    import peft_core as pc

    asked, real_train = [], pc.train

    def train_and_note(*args, **kwargs):  # the real loop; we only note what it was asked
        asked.append(kwargs["gradient_checkpointing"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pc, "train", train_and_note)
    losses = {}
    for checkpointing in (False, True):
        spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=4, batch_size=8)
        spec = spec.model_copy(
            update={
                "train": spec.train.model_copy(update={"gradient_checkpointing": checkpointing}),
                "data": spec.data.model_copy(update={"max_eval_samples": 8}),
            }
        )
        report = train_from_spec(spec, tmp_path / str(checkpointing))
        losses[checkpointing] = report.losses
    assert asked == [False, True]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)

"""A spec whose training step cannot fit the GPU's free memory is refused before the model is
loaded (``check_inputs`` asks ``check_step_fits`` with the free memory of the GPU it runs on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.errors import DataError
from flows.planning import check_step_fits, plan_step
from flows.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm-sst2-en-lora.yaml"


def test_a_step_that_fits_passes_and_one_that_does_not_says_what_to_change():
    spec = load_spec(EXAMPLE)
    step = plan_step(spec)
    assert step is not None
    check_step_fits(spec, step.peak_bytes)  # exactly enough
    with pytest.raises(DataError) as refused:
        check_step_fits(spec, step.peak_bytes - 1, "NVIDIA T4")
    message = str(refused.value)
    gib = step.peak_bytes / 2**30
    assert f"needs about {gib:.1f} GiB (32 rows x 64 tokens" in message
    assert "NVIDIA T4 has" in message and "lower train.batch_size" in message
    # the advice works: half the rows and checkpointing need less than the memory refused above
    smaller = spec.model_copy(update={"train": spec.train.model_copy(update={"batch_size": 16})})
    smaller_step = plan_step(smaller)
    assert smaller_step is not None and smaller_step.peak_bytes < step.peak_bytes - 1
    check_step_fits(smaller, step.peak_bytes - 1)

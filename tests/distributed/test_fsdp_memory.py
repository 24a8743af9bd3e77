"""``adapterops plan --processes N`` under FSDP: the per-process figure of
``pc.estimate_step_memory(processes=N)`` against what FSDP2 really allocates in each of two
gloo processes on a CPU (every allocation and free, counted by the profiler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.test_fsdp import BIN, HERE, run


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("fsdp-memory")
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    run([*torchrun, str(HERE / "fsdp_memory_worker.py"), str(out)], out)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_process_holds_its_shard_and_what_the_estimate_says_it_gathers(measured, method):
    for rank in measured:
        result = rank[method]
        estimate = result["estimate"]
        assert estimate["processes"] == 2
        # its shard of every weight, to the byte (dim 0 split in two, padded)
        assert estimate["weights_bytes"] - estimate["gathered_bytes"] == result["held"]
        real = result["held"] + result["step"]
        # FSDP2's gathering modelled, not traced: LoRA 8.6% over, full fine-tuning 2.2% over
        # here (7% under to 15% over across the shapes and process counts tried)
        assert 0.93 < estimate["peak_bytes"] / real < 1.15, (estimate, result)


def test_sharding_divides_the_weights_and_the_full_fine_tunes_optimizer_state(measured):
    """The same steps in one process hold more: the sharded estimate is not the whole one."""
    import torch  # noqa: PLC0415

    import peft_core as pc  # noqa: PLC0415
    from tests.distributed.fsdp_memory_worker import CONFIG, LENGTH, METHODS, ROWS  # noqa: PLC0415

    whole = pc.estimate_step_memory(
        CONFIG, METHODS["full"], head="causal-lm", batch_size=ROWS, sequence_length=LENGTH,
        dtype=torch.bfloat16, precision="bf16",
    )  # fmt: skip
    sharded = measured[0]["full"]["estimate"]
    # AdamW's two moments and the gradients (all of the model's weights) are halved
    assert sharded["step_bytes"] < 0.6 * whole.step_bytes
    assert sharded["weights_bytes"] - sharded["gathered_bytes"] == whole.weights_bytes // 2

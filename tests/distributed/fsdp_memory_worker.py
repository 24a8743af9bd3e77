"""One process of the FSDP2 memory test (``tests/distributed/test_fsdp_memory.py``).

Under ``torchrun``, shards a small random Llama with ``flows.distributed.shard``, trains two
steps of a LoRA and of a full fine-tune on it, and counts what this process allocated on the
way: every allocation and free the PyTorch profiler records (FSDP2 frees a block's gathered
weights by resizing their storage, which only the allocator sees). Writes, per method, what it
held of the weights, the step's peak on top, and ``pc.estimate_step_memory``'s figures for one
of this many processes to ``$OUT/rank<r>.json``.

``torchrun --nproc_per_node N fsdp_memory_worker.py OUT``
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import transformers as T
from torch.distributed.tensor import DTensor
from torch.profiler import ProfilerActivity, profile

import peft_core as pc
from flows.distributed import placement, shard

CONFIG = T.LlamaConfig(
    hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=2000, pad_token_id=0,
)  # fmt: skip
ROWS, LENGTH = 2, 64
METHODS = {
    "lora": pc.LoRA(rank=8, targets=("q", "k", "v", "o", "ffn_in", "ffn_out")),
    "full": pc.FullFineTune(),
}


def allocated_peak(run: Callable[[], object]) -> int:
    """The most ``run()`` had allocated at once on top of what existed before, from the
    profiler's record of every allocation and free."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        run()
    events = [e for e in recorded.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def main(out: Path) -> None:
    """Measure both methods, then write what the test compares."""
    results = {}
    with placement() as where:
        for name, method in METHODS.items():
            torch.manual_seed(0)
            model = T.LlamaForCausalLM._from_config(CONFIG, dtype=torch.bfloat16)
            pc.add_adapter(model, name, method)
            model = shard(model, where)
            held = sum(
                (p.to_local() if isinstance(p, DTensor) else p).nbytes for p in model.parameters()
            )
            ids = torch.randint(1, CONFIG.vocab_size, (ROWS, LENGTH))
            batch = {"input_ids": ids, "labels": ids}

            def two_steps(model: torch.nn.Module = model, batch: dict = batch) -> None:
                pc.train(model, [batch], max_steps=2, learning_rate=1e-3, precision="bf16")

            step = allocated_peak(two_steps)
            estimate = pc.estimate_step_memory(
                CONFIG, method, head="causal-lm", batch_size=ROWS, sequence_length=LENGTH,
                dtype=torch.bfloat16, precision="bf16", processes=where.world_size,
            )  # fmt: skip
            results[name] = {"held": held, "step": step, "estimate": estimate.to_dict()}
        (out / f"rank{where.rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

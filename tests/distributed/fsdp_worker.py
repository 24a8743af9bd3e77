"""One process of the FSDP2 equivalence test (``tests/distributed/test_fsdp.py``).

Trains a LoRA on a tiny random Llama for a few steps over fixed batches: alone (``WORLD_SIZE``
unset) on each whole batch, or under ``torchrun`` sharded by ``flows.distributed.shard`` with each
of the N processes taking every N-th row. Writes the losses, the gathered adapter tensors and
what this process held of one base weight to ``$OUT/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers as T

import peft_core as pc
from flows.distributed import gathered, is_sharded, placement, shard

STEPS, ROWS, LENGTH = 4, 8, 16


def main(out: Path) -> None:
    """Train, then save what the test compares."""
    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = T.AutoModelForCausalLM.from_config(config)
    pc.add_adapter(model, "l", pc.LoRA(rank=4, targets=("q", "v", "ffn_out")))
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (ROWS, LENGTH), generator=generator) for _ in range(STEPS)]
    with placement() as where:
        if where.distributed:
            model = shard(model, where)
        mine = [b[where.rank :: where.world_size] for b in batches]
        result = pc.train(
            model,
            [{"input_ids": b, "labels": b} for b in mine],
            max_steps=STEPS,
            learning_rate=1e-2,
            warmup_ratio=0.0,
        )
        losses = torch.tensor(result.losses)
        if where.distributed:  # each process's loss is its half's mean: average them
            torch.distributed.all_reduce(losses)
            losses /= where.world_size
        adapter = gathered(pc.adapter_state_dict(model, "l"))
        weight = model.model.layers[0].mlp.up_proj.weight
        local = weight.to_local() if is_sharded(model) else weight
        torch.save(
            {
                "losses": losses,
                "adapter": {k: v.detach().clone() for k, v in adapter.items()},
                "sharded": is_sharded(model),
                "local_rows": int(local.shape[0]),
            },
            out / f"rank{where.rank}.pt",
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""One process of the FSDP2 equivalence test (``tests/distributed/test_fsdp.py``).

Trains a LoRA on a tiny random Llama for a few steps over fixed batches: alone (``WORLD_SIZE``
unset) on each whole batch, or under ``torchrun`` sharded by ``flows.distributed.shard`` with each
of the N processes taking every N-th row. Writes the losses, the gathered adapter tensors and
what this process held of one base weight to ``$OUT/rank<r>.pt``.

``python fsdp_worker.py OUT [CHECKPOINTS [CRASH_AT]]``: checkpoint after every step into
CHECKPOINTS (resuming from what is there); with CRASH_AT the run dies in the step after it
checkpointed step CRASH_AT, as a crashed one would, and writes only ``$OUT/crashed<r>``.
With ``FSDP_WORKER_INIT=pissa`` the LoRA starts from the weights (half of each module held at
its start) and trains with a weight decay, which would move the held half if it were not put
back after every step. With ``FSDP_WORKER_EVALUATE=1`` it measures a validation loss after every
step (each process scores its share of 5 rows, the sums added up) and keeps the best step's
weights (``keep_best``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import transformers as T

import peft_core as pc
from flows.distributed import Placement, gathered, is_sharded, placement, shard, summed

STEPS, ROWS, LENGTH = 4, 8, 16


class Crash(Exception):
    """The simulated crash."""


def validation(model: torch.nn.Module, rows: torch.Tensor, where: Placement) -> dict:
    """``pc.train``'s settings for a validation loss after every step over ``rows``, this
    process scoring its share (one forward each: under FSDP every process runs as many)."""
    mine = rows[where.rank :: where.world_size]

    def evaluate() -> float:
        loss = float(model(input_ids=mine, labels=mine).loss) * len(mine)  # a mean per row
        total, count = summed([loss, len(mine)], where)
        return total / count

    return {"evaluate": evaluate, "evaluate_every": 1, "keep_best": True}


def main(out: Path, checkpoints: Path | None = None, crash_at: int | None = None) -> None:
    """Train, then save what the test compares."""
    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = T.AutoModelForCausalLM.from_config(config)
    init = os.environ.get("FSDP_WORKER_INIT", "default")
    pc.add_adapter(model, "l", pc.LoRA(rank=4, targets=("q", "v", "ffn_out"), init=init))
    initial = {k: v.detach().clone() for k, v in pc.adapter_state_dict(model, "l").items()}
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (ROWS, LENGTH), generator=generator) for _ in range(STEPS)]
    held_out = torch.randint(0, 256, (5, LENGTH), generator=generator)
    evaluating = os.environ.get("FSDP_WORKER_EVALUATE") == "1"
    with placement() as where:
        if where.distributed:
            model = shard(model, where)
        mine = [b[where.rank :: where.world_size] for b in batches]

        def crash(step: int, loss: float, learning_rate: float) -> None:
            if step == crash_at:  # zero-based: the step after the checkpoint of step CRASH_AT
                raise Crash

        try:
            result = pc.train(
                model,
                [{"input_ids": b, "labels": b} for b in mine],
                max_steps=STEPS,
                learning_rate=1e-2,
                weight_decay=0.1 if init != "default" else 0.0,
                warmup_ratio=0.0,
                checkpoint_dir=checkpoints,
                checkpoint_every=1,
                on_step=crash,
                **(validation(model, held_out, where) if evaluating else {}),
            )
        except Crash:
            (out / f"crashed{where.rank}").touch()
            return
        losses = torch.tensor(result.losses)  # under torchrun: the mean of the processes'
        adapter = gathered(pc.adapter_state_dict(model, "l"))
        weight = model.model.layers[0].mlp.up_proj.weight
        local = weight.to_local() if is_sharded(model) else weight
        torch.save(
            {
                "losses": losses,
                "adapter": {k: v.detach().clone() for k, v in adapter.items()},
                "initial": initial,
                "sharded": is_sharded(model),
                "local_rows": int(local.shape[0]),
                "resumed_from": result.resumed_from,
                "evaluations": result.evaluations,
                "best_step": result.best_step,
            },
            out / f"rank{where.rank}.pt",
        )


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(
        Path(arguments[0]),
        Path(arguments[1]) if len(arguments) > 1 else None,
        int(arguments[2]) if len(arguments) > 2 else None,
    )
    # Leave as the CLI does (flows.cli.quick_exit), without the interpreter's teardown: under
    # load in the full suite a rank aborted once about a second after starting to resume
    # ("terminate called without an active exception", SIGABRT); freeing gloo's objects module
    # by module at exit is the suspect, not proven (alone the test passed 12 times of 12).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

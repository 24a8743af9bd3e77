"""Exact match scored in shares: two processes, each generating the answers of every other
row, find the hits (and each row's answer) one process finds on the whole split, FSDP-sharded
or not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from flows.evaluation import greedy_continuations
from tests.distributed.test_fsdp import BIN, HERE, run
from tests.helpers import save_tiny_llama

ROWS = 129  # shares of 65 and 64 rows: two batches of 64 and one, so one filler generation
RIGHT = 80  # rows whose response is the base's own greedy answer; the rest end one token off


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("generating-base"))


def answered_rows(base: Path) -> list[dict]:
    """Prompts of 2 to 9 tokens with responses of 1 to 5: the first RIGHT are what the base
    answers greedily (each generated alone), the others end one token off; the last row has
    no response (nothing scored, nothing generated)."""
    model = LlamaForCausalLM.from_pretrained(base).eval()
    pad = model.config.pad_token_id
    generator = torch.Generator().manual_seed(1)
    rows = []
    for row in range(ROWS):
        prompt = torch.randint(1000, 29000, (2 + row % 8,), generator=generator)
        length = 1 + row % 5
        with torch.no_grad():
            (answer,) = greedy_continuations(model, [prompt], length, pad)
        answer = answer[:length].clone()
        if row >= RIGHT:
            answer[-1] = (answer[-1] + 1) % 28000 + 1000
        if row == ROWS - 1:
            answer = answer[:0]
        ids = [*prompt.tolist(), *answer.tolist()]
        labels = [-100] * len(prompt) + answer.tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return rows


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_two_processes_generate_in_shares_the_hits_one_process_finds(base, tmp_path, sharding):
    """Under FSDP every forward is a collective: the processes' generations of different
    lengths run in step, and the process with a batch fewer generates a filler."""
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(answered_rows(base)))
    worker = str(HERE / "shares_worker.py")
    alone, shared = tmp_path / "alone.json", tmp_path / "shared.json"
    run([sys.executable, worker, str(base), str(rows), str(alone), sharding], tmp_path)
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    run([*torchrun, worker, str(base), str(rows), str(shared), sharding], tmp_path)
    one, two = json.loads(alone.read_text()), json.loads(shared.read_text())
    assert one["metrics"]["generated"] == two["metrics"]["generated"] == ROWS - 1
    assert one["metrics"]["exact_match"] == pytest.approx(RIGHT / (ROWS - 1))
    assert two["metrics"]["exact_match"] == one["metrics"]["exact_match"]
    assert two["metrics"]["tokens"] == one["metrics"]["tokens"]
    assert two["metrics"]["eval_loss"] == pytest.approx(one["metrics"]["eval_loss"], rel=1e-5)
    # each row's outcome, gathered from the shares into the split's order
    exact = [row["exact"] for row in two["rows"]]
    assert exact == [True] * RIGHT + [False] * (ROWS - RIGHT - 1) + [None]
    assert [row["generated"] for row in two["rows"]] == [row["generated"] for row in one["rows"]]
    losses = [row["loss"] for row in two["rows"]]
    assert losses[:-1] == pytest.approx([row["loss"] for row in one["rows"]][:-1], rel=1e-5)
    assert losses[-1] is None  # no token scored

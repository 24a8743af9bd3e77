"""``bench/llm_train_check.py`` at tiny shapes on a CPU (its 1.1B shapes need a GPU): the LLM
example's recipe trains through ``adapterops train`` in a fresh process, on a bf16 base and on
an NF4 base with checkpointing and packing, and writes bf16 adapter files."""

from __future__ import annotations

import json
import math

from tests.helpers import run_quick_bench


def test_both_recipes_train_through_the_command(tmp_path):
    run_quick_bench("llm_train_check", tmp_path)
    data = json.loads((tmp_path / "llm_train_smoke.json").read_text())
    rows = {row["variant"]: row for row in data["rows"]}
    assert list(rows) == ["bf16 base, float32 LoRA", "NF4 base (QLoRA), checkpointing, packing"]
    vocabulary = 4 + 9 + 41  # special tokens, the question's words, the numbers 0-40
    for row in rows.values():
        assert row["ok"] is True and row["steps"] == 20 and row["file_dtypes"] == ["BF16"]
        # r=16 on q, k, v, o (128 -> 128), gate, up (128 -> 256), down (256 -> 128); 2 blocks
        assert row["trainable_params"] == 2 * 16 * (4 * 256 + 2 * 384 + 384)
        # below a uniform guess over the vocabulary: it learned from the answers
        assert row["final_loss"] < math.log(vocabulary) - 0.1
        assert row["metrics"]["tokens"] == 2 * 23  # each validation answer and its end token

"""One process of the test that generated answers are scored in shares
(``tests/distributed/test_shares.py``).

``python shares_worker.py BASE ROWS OUT SHARDING``: evaluates the causal LM saved in BASE on
the tokenised rows in the JSON file ROWS (``input_ids``, ``attention_mask``, ``labels``) by
``flows.shares.metrics_in_shares`` with generation (exact match): alone (``WORLD_SIZE`` unset),
or under ``torchrun`` with each process scoring its share, the model FSDP2-sharded when
SHARDING is ``fsdp`` (whole in every process when ``ddp``). Rank 0 writes the metrics and each
row's outcome (its loss, answer and whether it was exact) to OUT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
from transformers import AutoTokenizer, LlamaForCausalLM

from flows.distributed import placement, shard
from flows.evaluation import RowOutcome
from flows.shares import metrics_in_shares


def main(base: Path, rows: Path, out: Path, sharding: str) -> None:
    """Score, then write what rank 0 found."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = LlamaForCausalLM.from_pretrained(base).eval()
    split = datasets.Dataset.from_list(json.loads(rows.read_text()))
    with placement() as where:
        if where.distributed and sharding == "fsdp":
            model = shard(model, where)
        outcomes: list[RowOutcome] = []
        metrics = metrics_in_shares(
            model, split, tokenizer, head="causal-lm", where=where, generate=True,
            outcomes=outcomes,
        )  # fmt: skip
        if where.is_main:
            rows_out = [
                {"loss": o.loss, "exact": o.exact, "generated": o.generated} for o in outcomes
            ]
            out.write_text(json.dumps({"metrics": metrics, "rows": rows_out}))


if __name__ == "__main__":
    base, rows, out, sharding = sys.argv[1:]
    main(Path(base), Path(rows), Path(out), sharding)

"""A split scored across torchrun's processes: each scores every N-th row, and the sums are
added up, so N processes score it N times faster than each scoring all of it, and every
process gets the same numbers.

Under FSDP every forward is a collective (the shards gather each block's weights), so every
process must run as many: one whose share has fewer batches than its peers' runs the rest on
a filler batch (the split's first row), whose result is not counted; and every generation
runs until its peers' are done (transformers' ``synced_gpus``).
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import torch
import torch.distributed as dist
from torch import nn
from transformers import PreTrainedTokenizerBase

from .data import longest_first_order, make_loader
from .distributed import Placement, is_sharded, summed
from .evaluation import (
    EvaluationProgress,
    RowOutcome,
    counted_rows,
    evaluate,
    exact_match,
    greedy_continuations,
    language_model_metrics,
    metrics_from_confusion,
    on_device,
    with_answers,
)

__all__ = ["BATCH", "filler_forwards", "metrics_in_shares", "share"]

BATCH = 64  # rows per forward when scoring a split


def share(rows: datasets.Dataset, where: Placement, *, head: str) -> datasets.Dataset:
    """This process's share of ``rows``: every world_size-th row from its rank's (empty when
    there are fewer rows than processes). A classifier's and a causal LM's rows are taken
    longest first (:func:`flows.data.longest_first`: batches of like lengths pad little, and
    the shares get like token counts); a masked LM's in their order (its seeded masks follow
    the rows a loader sees)."""
    return rows.select(_share_rows(rows, where, head=head))


def _share_rows(rows: datasets.Dataset, where: Placement, *, head: str) -> list[int]:
    """The row numbers of this process's :func:`share`, in the order it scores them."""
    order = list(range(len(rows)))
    if head in ("classification", "causal-lm"):
        order = longest_first_order(rows)
    return order[where.rank :: where.world_size]


def filler_forwards(
    model: nn.Module,
    rows: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    head: str,
    done: int,
    where: Placement,
    generating: bool = False,
) -> None:
    """After this process ran ``done`` batches of its share of ``rows``, the uncounted
    forwards (``generating``: generations, in step with its peers') that bring it to the
    largest share's count, when ``model`` is FSDP-sharded."""
    if not is_sharded(model):
        return
    most = math.ceil(math.ceil(len(rows) / where.world_size) / BATCH)
    filler = make_loader(rows.select([0]), tokenizer, head=head, batch_size=1, shuffle=False)
    pad = tokenizer.pad_token_id
    for batch in on_device(model, [next(iter(filler))] * (most - done)):
        if generating:
            greedy_continuations(model, [batch["input_ids"][0]], 1, pad, in_step=True)
        else:
            model(**batch)


def metrics_in_shares(
    model: nn.Module,
    rows: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    head: str,
    where: Placement,
    generate: bool = False,
    outcomes: list[RowOutcome] | None = None,
    on_scoring: EvaluationProgress | None = None,
) -> dict[str, Any]:
    """:func:`flows.evaluation.evaluate`'s metrics over ``rows``, each process scoring its
    share: a classifier's confusion matrix, or a causal LM's loss summed over its tokens (and,
    with ``generate``, its exact answers and answered rows), added up across the processes. A
    collective: every process calls it. Not for a masked LM (its seeded masks follow the rows a
    loader sees). On an FSDP-sharded model the shares' generations run in step (each runs as
    many forwards as the longest of them; see :func:`flows.evaluation.exact_match`).
    ``outcomes``, when given, receives every row's outcome, in the order of ``rows``, in every
    process; ``on_scoring`` hears this process's rows of its share as they are done."""
    if head not in ("classification", "causal-lm"):
        raise ValueError(f"a {head} head is not scored here")
    numbers = _share_rows(rows, where, head=head)
    loader = make_loader(
        rows.select(numbers), tokenizer, head=head, batch_size=BATCH, shuffle=False
    )
    scored: list[RowOutcome] | None = None if outcomes is None else []
    whose = f" in share {where.rank + 1} of {where.world_size}"
    tell = counted_rows(on_scoring, len(numbers), whose=whose)
    mine = evaluate(model, loader, head=head, on_rows=tell, outcomes=scored)
    filler_forwards(model, rows, tokenizer, head=head, done=len(loader), where=where)
    if generate:  # after every process's scoring forwards: its generations are collectives too
        answers: list[RowOutcome] | None = None if outcomes is None else []
        pad, in_step = tokenizer.pad_token_id, is_sharded(model)
        mine |= exact_match(
            model, loader, pad_token_id=pad, in_step=in_step, on_rows=tell, outcomes=answers
        )
        with_answers(scored, answers)
        filler_forwards(
            model, rows, tokenizer, head=head, done=len(loader), where=where, generating=True
        )
    if outcomes is not None and scored is not None:
        outcomes += _every_share(scored, numbers, where)
    if head == "classification":
        side = len(mine["confusion_matrix"])
        counts = summed([float(c) for row in mine["confusion_matrix"] for c in row], where)
        matrix = [[int(c) for c in counts[i * side : (i + 1) * side]] for i in range(side)]
        return {
            **metrics_from_confusion(torch.tensor(matrix)),
            "confusion_matrix": matrix,
            "examples": sum(map(sum, matrix)),
        }
    sums = [mine["eval_loss"] * mine["tokens"], mine["tokens"]]
    if generate:
        sums += [mine["exact_match"] * mine["generated"], mine["generated"]]
    totals = summed(sums, where)
    metrics = language_model_metrics(totals[0], int(totals[1]))
    if generate:
        hits, answered = round(totals[2]), int(totals[3])
        metrics |= {"exact_match": hits / max(answered, 1), "generated": answered}
    return metrics


def _every_share(mine: list[RowOutcome], numbers: list[int], where: Placement) -> list[RowOutcome]:
    """Every process's outcomes (``mine``: those of rows ``numbers``) in the split's order. A
    collective: every process calls it."""
    shares: list[list[tuple[int, RowOutcome]]] = [list(zip(numbers, mine, strict=True))]
    if where.distributed:
        shares = [[] for _ in range(where.world_size)]
        dist.all_gather_object(shares, list(zip(numbers, mine, strict=True)))
    in_place = dict(pair for part in shares for pair in part)
    return [in_place[row] for row in range(len(in_place))]

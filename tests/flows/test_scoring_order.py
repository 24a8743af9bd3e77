"""Scoring a classifier batches rows of like lengths (less padding), longest first, and counts
exactly what scoring the rows in their own order counts."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from flows.data import longest_first, make_loader
from flows.evaluation import RowOutcome, evaluate, validation_loss
from flows.predict_job import answer_texts
from flows.quickstart import minilm_sst2_spec
from flows.train_job import evaluate_model, load_base_model

LENGTHS = [3, 40, 5, 38, 4, 39, 6, 37] * 20  # ragged, as real sentences are


def ragged_rows() -> datasets.Dataset:
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 90, (length,), generator=generator).tolist() for length in LENGTHS]
    return datasets.Dataset.from_dict(
        {
            "input_ids": ids,
            "attention_mask": [[1] * len(row) for row in ids],
            "labels": [row[0] % 3 for row in ids],
        }
    )


def test_rows_come_longest_first_and_ties_keep_their_order():
    rows = ragged_rows()
    ordered = longest_first(rows)
    widths = [len(ids) for ids in ordered["input_ids"]]
    assert widths == sorted(LENGTHS, reverse=True)
    # the four 40-token rows are rows 1, 9, 17, 25 of the input, in that order
    assert ordered["input_ids"][:4] == [rows["input_ids"][i] for i in (1, 9, 17, 25)]


def test_a_classifier_is_scored_on_batches_of_like_lengths_with_the_same_counts(
    tiny_model, minilm_dir
):
    model = tiny_model("bert", "classification")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    rows = ragged_rows()
    in_their_order = evaluate(
        model,
        make_loader(rows, tokenizer, head="classification", batch_size=64, shuffle=False),
        head="classification",
    )

    seen: list[tuple[int, int]] = []  # (rows, width) of each batch the model ran
    model.register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    heard: list[tuple[str, int]] = []
    scored = evaluate_model(
        model, rows, tokenizer, head="classification", on_rows=lambda *n: heard.append(n)
    )
    assert heard == [("score", 64), ("score", 128), ("score", 160)]

    assert scored["confusion_matrix"] == in_their_order["confusion_matrix"]
    assert scored["examples"] == len(LENGTHS) == 160
    # 20 rows each of 40, 39, 38, 37, 6, 5, 4 and 3 tokens: in their own order every batch
    # of 64 pads to 40 tokens (6,400 in all); longest first, 5,056
    assert seen == [(64, 40), (64, 37), (32, 4)]

    # each row's answer comes back in the rows' own order, as scoring them in order gives it
    own: list[RowOutcome] = []
    evaluate(
        model,
        make_loader(rows, tokenizer, head="classification", batch_size=64, shuffle=False),
        head="classification",
        outcomes=own,
    )
    outcomes: list[RowOutcome] = []
    evaluate_model(model, rows, tokenizer, head="classification", outcomes=outcomes)
    assert [o.predicted for o in outcomes] == [o.predicted for o in own]
    assert [o.probability for o in outcomes] == pytest.approx([o.probability for o in own])
    right = sum(o.predicted == label for o, label in zip(outcomes, rows["labels"], strict=True))
    assert right == sum(scored["confusion_matrix"][k][k] for k in range(3))
    assert {o.predicted for o in outcomes} <= {0, 1, 2} and len(outcomes) == 160


def test_a_causal_lm_is_scored_longest_first_with_the_same_loss_and_tokens(tiny_model, minilm_dir):
    """Each batch's mean loss is weighted by the tokens it averages (a row's first token is
    never predicted), so batching rows otherwise changes nothing."""
    model = tiny_model("llama", "causal-lm")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)  # pads with 0
    rows = ragged_rows().remove_columns("labels")  # a causal LM's labels are its inputs
    in_their_order = evaluate(
        model,
        make_loader(rows, tokenizer, head="causal-lm", batch_size=64, shuffle=False),
        head="causal-lm",
    )
    seen: list[tuple[int, int]] = []
    model.register_forward_pre_hook(
        lambda _module, _args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    scored = evaluate_model(model, rows, tokenizer, head="causal-lm")

    assert scored["tokens"] == in_their_order["tokens"] == sum(LENGTHS) - len(LENGTHS)
    assert scored["eval_loss"] == pytest.approx(in_their_order["eval_loss"], rel=1e-5)
    assert seen == [(64, 40), (64, 37), (32, 4)]

    # each row's own loss, in the rows' order: its tokens are all but its first, and the
    # token-weighted mean of the rows' losses is the split's
    outcomes: list[RowOutcome] = []
    evaluate_model(model, rows, tokenizer, head="causal-lm", outcomes=outcomes)
    assert [o.tokens for o in outcomes] == [length - 1 for length in LENGTHS]
    weighted = sum(o.loss * o.tokens for o in outcomes) / scored["tokens"]
    assert weighted == pytest.approx(scored["eval_loss"], rel=1e-5)
    alone = evaluate(
        model,
        make_loader(rows.select([1]), tokenizer, head="causal-lm", batch_size=1, shuffle=False),
        head="causal-lm",
    )
    assert outcomes[1].loss == pytest.approx(alone["eval_loss"], rel=1e-4)
    assert outcomes[1].loss != pytest.approx(outcomes[0].loss, rel=1e-3)  # rows differ


def test_predict_batches_texts_of_like_lengths_and_answers_in_their_order(sst2_dir):
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=1)
    model, tokenizer = load_base_model(spec, torch.device("cpu"))
    texts = ["fine .", "a long , winding and ultimately rewarding film about memory", "dull"]
    texts += ["it is a charming , funny little movie", "bad", "the cast is superb throughout"]
    alone = [answer_texts(model, tokenizer, [text], [spec], batch_size=1)[0][0] for text in texts]

    widths: list[int] = []
    model.register_forward_pre_hook(
        lambda _module, _args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
        with_kwargs=True,
    )
    answers = answer_texts(model, tokenizer, texts, [spec], batch_size=2)[0]

    assert [answer.text for answer in answers] == texts
    for answer, own in zip(answers, alone, strict=True):
        assert answer.probabilities == pytest.approx(own.probabilities, abs=1e-4)
    # longest first: (the long film, the charming movie), (the cast, fine .), (dull, bad)
    assert widths == [13, 7, 3]  # in their own order: 13, 10, 7


@pytest.mark.parametrize("head", ["classification", "causal-lm"])
def test_the_validation_loss_during_training_does_not_depend_on_the_batching(
    tiny_model, minilm_dir, head
):
    """train.eval_every's loss: a classifier's mean cross-entropy over rows (computed here
    row by row), a language model's over its scored tokens, in batches of any size."""
    model = tiny_model("bert" if head == "classification" else "gpt2", head)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    rows = ragged_rows()
    if head == "causal-lm":
        rows = rows.map(lambda row: {"labels": row["input_ids"]})
    losses = [
        validation_loss(
            model, make_loader(rows, tokenizer, head=head, batch_size=size, shuffle=False),
            head=head,
        )
        for size in (7, 64)
    ]  # fmt: skip
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    if head == "classification":
        with torch.no_grad():
            one_by_one = [
                torch.nn.functional.cross_entropy(
                    model(input_ids=torch.tensor([ids])).logits, torch.tensor([label])
                ).item()
                for ids, label in zip(rows["input_ids"], rows["labels"], strict=True)
            ]
        assert losses[1] == pytest.approx(sum(one_by_one) / len(one_by_one), rel=1e-5)


def test_a_batch_with_no_scored_token_leaves_the_language_models_loss_as_it_is(
    tiny_model, minilm_dir
):
    """Instruction rows truncated before their response score nothing: a batch of only such
    rows adds nothing (its own loss, a mean over no tokens, is NaN)."""
    model = tiny_model("gpt2", "causal-lm")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    rows = ragged_rows().map(lambda row: {"labels": row["input_ids"]})
    unscored = rows.select(range(7)).map(lambda row: {"labels": [-100] * len(row["labels"])})
    both = datasets.concatenate_datasets([rows, unscored])
    scored, with_unscored = (
        evaluate(
            model, make_loader(split, tokenizer, head="causal-lm", batch_size=len(rows),
                               shuffle=False),
            head="causal-lm",
        )
        for split in (rows, both)
    )  # fmt: skip
    assert with_unscored["tokens"] == scored["tokens"] == sum(n - 1 for n in LENGTHS)
    assert with_unscored["eval_loss"] == pytest.approx(scored["eval_loss"], rel=1e-6)

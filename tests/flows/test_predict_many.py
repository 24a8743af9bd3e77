"""``adapterops predict A B C --text ...``: several versions over one base model answer in one
batch per text (a row per version, ``per_row``), exactly as each answers alone; over several
base models, each base loads once for its versions."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from flows.build_job import build_from_spec
from flows.errors import DataError
from flows.predict_job import predict, predict_many, predict_stream
from flows.quickstart import minilm_sst2_spec
from registry import Registry
from tests.helpers import run_cli

TEXTS = ["a gripping, funny film", "dull and far too long", "not bad at all"]


@pytest.fixture
def three_versions(embedded_home, sst2_dir, tmp_path) -> list[str]:
    refs = []
    for method, seed in (("lora", 0), ("lora", 1), ("pfeiffer", 0)):
        spec = minilm_sst2_spec(method, sst2_dir / "en", steps=3, seed=seed, name=f"many-{method}")
        spec = spec.model_copy(
            update={"data": spec.data.model_copy(update={"max_eval_samples": 8})}
        )
        refs.append(build_from_spec(spec, Registry(), tmp_path / f"{method}-{seed}").ref)
    return refs


def assert_each_answers_as_alone(refs: list[str]) -> None:
    """predict_many's answers, in the order asked, are what each version answers alone."""
    together = predict_many(Registry(), refs, TEXTS)
    assert [ref for ref, _ in together] == refs
    for ref, predictions in together:
        _, alone = predict(Registry(), ref, TEXTS)
        for mixed, single in zip(predictions, alone, strict=True):
            assert mixed.probabilities == pytest.approx(single.probabilities, abs=1e-4)
            assert (mixed.label, mixed.label_name) == (single.label, single.label_name)


def test_several_versions_answer_in_one_batch_as_each_does_alone(three_versions):
    assert three_versions == ["many-lora@1", "many-lora@2", "many-pfeiffer@1"]
    assert_each_answers_as_alone(three_versions)

    # the first texts one per line on standard input (a blank line skipped), the last as given
    lines = "\n".join(TEXTS[:-1]) + "\n\n"
    result = run_cli("predict", *three_versions, "--text", "-", "--text", TEXTS[-1], "--json", env={**os.environ}, stdin=lines)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert [r["ref"] for r in document["results"]] == three_versions
    assert [[p["text"] for p in r["predictions"]] for r in document["results"]] == [TEXTS] * 3

    table = run_cli("predict", *three_versions, "--text", TEXTS[0], env={**os.environ, "COLUMNS": "60"})  # fmt: skip
    lines = table.stdout.splitlines()
    header = lines[lines.index(next(x for x in lines if x.startswith("┏"))) + 1 :]
    header = header[: header.index(next(x for x in header if x.startswith("┡")))]
    cells = [[cell.strip() for cell in line.split("┃")[1:-1]] for line in header]
    # a column per version, headed by its whole ref folded over lines (cut, two refs of one
    # adapter both read "many-lo…")
    assert ["".join(column) for column in zip(*cells, strict=True)] == ["text", *three_versions]


def test_answers_do_not_depend_on_how_many_rows_share_a_batch(three_versions):
    """Six rows a batch: two texts of three versions each, then the last text; one row a batch
    still takes a whole text (its three rows). Progress is heard after each batch."""
    heard: list[tuple[int, int]] = []
    steps: list[str] = []
    by_two = predict_many(
        Registry(), three_versions, TEXTS, batch_size=6, on_progress=lambda *n: heard.append(n),
        on_phase=steps.append,
    )  # fmt: skip
    assert heard == [(2, 3), (3, 3)]
    assert steps == ["load the base model and 3 versions", "answer 3 texts"]
    heard.clear()
    by_one = predict_many(
        Registry(), three_versions, TEXTS, batch_size=1, on_progress=lambda *n: heard.append(n)
    )
    assert heard == [(1, 3), (2, 3), (3, 3)]
    for (ref, two), (same_ref, one) in zip(by_two, by_one, strict=True):
        assert ref == same_ref
        assert [p.text for p in two] == TEXTS
        for a, b in zip(two, one, strict=True):
            assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
            assert (a.label, a.label_name) == (b.label, b.label_name)
    refused = run_cli("predict", three_versions[0], "--text", "x", "--batch-size", "0", env={**os.environ})  # fmt: skip
    assert refused.returncode == 2 and "--batch-size" in refused.stderr
    # a causal LM's continuation length, asked of classifiers: said to change nothing
    with pytest.warns(RuntimeWarning) as said:
        _, same = predict(Registry(), three_versions[0], TEXTS, max_new_tokens=5)
    assert [str(w.message) for w in said] == [
        "max_new_tokens (--max-new-tokens) changes nothing for many-lora@1: it sets the length "
        "of a causal LM's continuation, and this is a classification adapter"
    ]
    for answer, before in zip(same, by_one[0][1], strict=True):
        assert answer.probabilities == pytest.approx(before.probabilities, abs=1e-4)


def test_a_stream_hands_on_each_window_before_answering_the_next(three_versions, tmp_path):
    """A window of two texts, then the last: each window's answers of the three versions
    (loaded together) come before the next window is answered, and equal predict_many's.
    ``--out`` writes them a line per text and version."""
    heard: list[tuple[int, int]] = []
    runs = [
        (ref, first, [a.text for a in answers], len(heard))
        for ref, first, answers in predict_stream(
            Registry(), three_versions, TEXTS, window=2, on_progress=lambda *n: heard.append(n)
        )
    ]
    assert runs == [(ref, 0, TEXTS[:2], 1) for ref in three_versions] + [
        (ref, 2, TEXTS[2:], 2) for ref in three_versions
    ]
    assert heard == [(2, 3), (3, 3)]

    out = tmp_path / "answers.jsonl"
    texts = [a for t in TEXTS for a in ("--text", t)]
    done = run_cli("predict", *three_versions, *texts, "--out", str(out), "--json", env={**os.environ})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "ok": True, "texts": 3, "out": str(out), "lines": 9, "refs": three_versions,
    }  # fmt: skip
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for ref, predictions in predict_many(Registry(), three_versions, TEXTS):
        mine = sorted((line for line in lines if line["ref"] == ref), key=lambda x: x["row"])
        assert [line["text"] for line in mine] == TEXTS
        for line, prediction in zip(mine, predictions, strict=True):
            assert line["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-4)
            assert line["label_name"] == prediction.label_name

    again = run_cli("predict", three_versions[0], "--text", "x", "--out", str(out), env={**os.environ})  # fmt: skip
    assert again.returncode == 2
    assert f"--out {out} exists: give --force to replace it" in again.stderr
    assert len(out.read_text().splitlines()) == 9  # untouched


def test_a_version_without_a_spec_is_refused_before_any_model_loads(three_versions, tmp_path):
    from tests.registry.workers import write_fake_adapter

    pushed = Registry().register(
        write_fake_adapter(tmp_path / "pushed", 1), name="pushed", base_model="b", task="t",
        language="en",
    )  # fmt: skip
    result = run_cli("predict", three_versions[0], pushed.ref, "--text", "x", env={**os.environ})
    assert result.returncode == 2
    assert (
        "pushed@1 was registered without a spec and its files carry no trained classifier, "
        "so predict has nothing to answer with: push the folder with --spec SPEC" in result.stderr
    )


def test_a_composition_predicts_as_its_members_stacked_by_hand(three_versions, tmp_path):
    import torch
    import transformers as T

    import peft_core as pc
    from flows.predict_job import predict_composition
    from tests.helpers import minilm_path

    registry = Registry()
    registry.register_composition("duo", {"type": "stack"}, ["many-lora@1", "many-pfeiffer@1"])
    registry.set_composition_alias("duo@1", "champion")
    steps: list[str] = []
    ref, answers = predict_composition(registry, "duo@champion", TEXTS, on_phase=steps.append)
    assert ref == "duo@1"
    assert steps == ["load the base model and the 2 members of duo@1", "answer 3 texts"]

    model = T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    registry.load_into(model, "many-lora@1", name="many-lora")
    registry.load_into(model, "many-pfeiffer@1", name="many-pfeiffer")
    pc.set_active(model, pc.Stack("many-lora", "many-pfeiffer"))
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    with torch.no_grad():
        expected = model.eval()(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    got = torch.tensor([a.probabilities for a in answers])
    torch.testing.assert_close(got, expected.softmax(-1), atol=1e-4, rtol=0)

    texts = [a for t in TEXTS for a in ("--text", t)]
    result = run_cli("composition", "predict", "duo", *texts, "--json", env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert document["ref"] == "duo@1"
    assert [p["label"] for p in document["predictions"]] == [a.label for a in answers]
    missing = run_cli("composition", "predict", "nope", "--text", "x", env={**os.environ})
    assert missing.returncode == 2 and "no composition 'nope'" in missing.stderr

    out = tmp_path / "duo.csv"
    written = run_cli("composition", "predict", "duo", *texts, "--out", str(out), env={**os.environ})  # fmt: skip
    assert written.returncode == 0, written.stderr[-2000:]
    assert f"Wrote 3 answers (3 texts, by duo@1) to {out}" in written.stdout
    with out.open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["row", "ref", "text", "label", "label_name", "probability", "probabilities"]
    assert [row[:3] for row in rows[1:]] == [[str(i), "duo@1", t] for i, t in enumerate(TEXTS)]
    for row, answer in zip(rows[1:], answers, strict=True):
        assert json.loads(row[6]) == pytest.approx(answer.probabilities, abs=1e-4)


def test_a_composition_is_scored_on_a_file_as_it_predicts_its_rows(
    three_versions, sst2_dir, tmp_path
):
    from flows.data import load_split
    from flows.evaluate_job import evaluate_composition
    from flows.predict_job import predict_composition

    registry = Registry()
    registry.register_composition("duo", {"type": "stack"}, ["many-lora@1", "many-pfeiffer@1"])
    file = sst2_dir / "en" / "validation.tsv"
    scored = evaluate_composition(registry, "duo", data=file, max_samples=24)
    rows = load_split(str(file), max_samples=24, seed=0)  # the same seeded subset
    _, answers = predict_composition(registry, "duo", list(rows["sentence"]))
    right = sum(a.label == label for a, label in zip(answers, rows["label"], strict=True))
    assert (scored.ref, scored.metrics["examples"]) == ("duo@1", 24)
    assert scored.metrics["accuracy"] == pytest.approx(right / 24)
    out = tmp_path / "duo.tsv"  # each row with the composition's answer
    result = run_cli("composition", "evaluate", "duo", "--data", str(file), "--max-samples", "24", "--out", str(out), "--json", env={**os.environ})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert document["metrics"]["accuracy"] == pytest.approx(right / 24)
    with out.open(newline="") as opened:
        lines = list(csv.DictReader(opened, delimiter="\t"))
    answer_of = {a.text: a.label for a in answers}
    assert sorted(int(line["predicted"]) for line in lines) == sorted(answer_of.values())
    assert all(int(line["predicted"]) == answer_of[line["text"]] for line in lines)
    assert (document["missed"], len(lines)) == (24 - right, 24)
    assert sum(line["correct"] == "false" for line in lines) == 24 - right


def test_a_version_peft_runs_answers_beside_the_mixed_batch(three_versions, sst2_dir, tmp_path):
    """peft's layers take one adapter per batch: a LoHa version answers in a batch of its own,
    on the same loaded model, and the other versions still share theirs."""
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=3, name="many-loha")
    loha = {"type": "peft", "config": {"peft_type": "LOHA", "r": 4, "target_modules": ["query"]}}
    spec = spec.model_copy(
        update={
            "method": type(spec).model_validate({**spec.model_dump(), "method": loha}).method,
            "data": spec.data.model_copy(update={"max_eval_samples": 8}),
        }
    )
    loha_ref = build_from_spec(spec, Registry(), tmp_path / "loha").ref
    refs = [three_versions[0], loha_ref, three_versions[2]]
    assert_each_answers_as_alone(refs)


def test_a_parallel_composition_answers_once_per_member_and_is_never_scored(three_versions):
    """A Parallel block's output is its members' side by side: predict shows them as predict
    A B does; evaluation and the cascade's gate, which need one answer, refuse it in one line
    (they crashed on the doubled batch)."""
    from flows.errors import DataError
    from flows.evaluate_job import evaluate_composition
    from flows.predict_job import predict_composition
    from registry import InvalidCompositionError

    registry = Registry()
    members = ["many-lora@1", "many-pfeiffer@1"]
    registry.register_composition("both", {"type": "parallel"}, members)
    texts = [a for t in TEXTS for a in ("--text", t)]
    result = run_cli("composition", "predict", "both", *texts, "--json", env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert [r["ref"] for r in document["results"]] == members
    for answered, (_, alone) in zip(document["results"], predict_many(registry, members, TEXTS), strict=True):  # fmt: skip
        assert [p["label"] for p in answered["predictions"]] == [a.label for a in alone]
        for shown, single in zip(answered["predictions"], alone, strict=True):
            assert shown["probabilities"] == pytest.approx(single.probabilities, abs=1e-4)

    with pytest.raises(DataError, match=r"both@1 is a Parallel composition, which answers once"):
        predict_composition(registry, "both", TEXTS)
    with pytest.raises(DataError, match=r"no one answer to score; evaluate each member"):
        evaluate_composition(registry, "both")
    refused = run_cli("composition", "evaluate", "both", env={**os.environ})
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: both@1 is a Parallel composition: it answers once per member (many-lora@1, "
        "many-pfeiffer@1), so there is no one answer to score; evaluate each member "
        "(`adapterops evaluate many-lora@1`)"
    )
    spec = minilm_sst2_spec("lora", Path("unused"), steps=1).model_dump(mode="json")
    with pytest.raises(InvalidCompositionError, match="no one score for the cascade to gate on"):
        registry.register_composition("both", {"type": "parallel"}, members, evaluation=spec)
    assert [c.ref for c in registry.compositions()] == ["both@1"]  # nothing saved


def test_a_version_named_twice_is_refused_in_one_line(three_versions):
    """Its answers would come twice under one name (it was 'model already has an adapter
    many-lora-v1; ... peft_core.delete_adapter it first', after the base model loaded)."""
    from flows.errors import DataError

    Registry().set_alias("many-lora@1", "champion")
    for refs, says in (
        (["many-lora@1", "many-lora@1"], "many-lora@1 is given twice: give each version once"),
        (
            ["many-lora@champion", "many-pfeiffer@1", "many-lora@1"],
            "many-lora@champion and many-lora@1 name the same version (many-lora@1): give each "
            "version once",
        ),
    ):
        for answer in (predict_many, lambda *a: list(predict_stream(*a))):
            with pytest.raises(DataError) as refused:
                answer(Registry(), refs, TEXTS)
            assert str(refused.value) == says


def test_versions_over_several_base_models_share_a_load_per_base(embedded_home, tmp_path):
    """``predict A B C`` over two base models was refused ("predict several versions at once
    over one base model and head"): each base now loads once for its versions, which share its
    batches, and a version alone on its base loads its own; each answers as it does alone.
    Versions that read texts differently (chat messages beside single texts) are refused."""
    from bench.probes_bench import llama_base, register_lora_versions
    from flows import predict_job

    registry = Registry()
    first = llama_base(tmp_path / "first", layers=1, width=64)
    second = llama_base(tmp_path / "second", layers=1, width=64, seed=1)
    refs = register_lora_versions(registry, first, ["lm-a", "lm-b"], tmp_path / "folders")
    refs.insert(1, register_lora_versions(registry, second, ["lm-c"], tmp_path / "folders")[0])
    shared, alone = [], []
    real_shared, real_alone = predict_job.load_inference_model, predict_job.load_registered

    def sharing(spec):
        shared.append(spec.base_model)
        return real_shared(spec)

    def loading_one(spec, version, *args, **kwargs):
        alone.append(version.ref)
        return real_alone(spec, version, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict_job, "load_inference_model", sharing)
        patch.setattr(predict_job, "load_registered", loading_one)
        together = predict_many(registry, refs, TEXTS, max_new_tokens=4)
    assert (shared, alone) == ([str(first)], ["lm-c@1"])
    assert [ref for ref, _ in together] == ["lm-a@1", "lm-c@1", "lm-b@1"]
    for ref, predictions in together:
        _, single = predict(registry, ref, TEXTS, max_new_tokens=4)
        assert [p.continuation for p in predictions] == [p.continuation for p in single]

    chat = {"train": "t.jsonl", "messages": "conversation"}
    chatty = register_lora_versions(registry, first, ["lm-chat"], tmp_path / "f", data=chat)
    with pytest.raises(DataError) as refused:
        predict_many(registry, [refs[0], *chatty], TEXTS)
    assert str(refused.value) == (
        "lm-chat@1 reads chat messages and lm-a@1 reads single texts: predict them apart, each "
        "on its own inputs"
    )

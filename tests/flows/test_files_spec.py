"""An adapter peft trained elsewhere, pushed without a spec, answers ``predict`` from its files:
the head its config states, a classifier's size from its weights, as peft computes with it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import peft
import pytest
import torch
import transformers as T

from flows.errors import DataError
from flows.evaluate_job import evaluate_composition
from flows.export_job import export
from flows.predict_job import NEW_TOKENS, gather_inputs, predict, predict_composition
from flows.push_job import push_folder
from registry import BaseModelMismatchError, Registry, bundles
from tests.helpers import minilm_path, run_cli, save_tiny_llama

TEXTS = ["a gripping, funny film", "dull and far too long", "not bad at all"]


def save_by_peft(model: T.PreTrainedModel, config: peft.PeftConfig, folder: Path) -> peft.PeftModel:
    """``model`` with a peft adapter whose weights are not a no-op, saved as peft saves it."""
    torch.manual_seed(0)
    adapted = peft.get_peft_model(model, config).eval()
    adapted.save_pretrained(folder)
    (folder / "README.md").unlink()  # peft's model card
    return adapted


def test_a_classifier_peft_trained_elsewhere_answers_as_peft_computes(embedded_home, tmp_path):
    base = T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=3)
    config = peft.LoraConfig(
        task_type="SEQ_CLS", r=4, target_modules=["query", "value"], init_lora_weights=False
    )
    adapted = save_by_peft(base, config, tmp_path / "elsewhere")
    version = Registry().register(
        tmp_path / "elsewhere", name="elsewhere", base_model=str(minilm_path()), task="sst2",
        language="en",
    )  # fmt: skip
    assert (version.method, version.head, version.spec) == ("lora", "classification", {})

    ref, answers = predict(Registry(), "elsewhere", TEXTS)
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    with torch.no_grad():
        logits = adapted(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    got = torch.tensor([a.probabilities for a in answers])
    assert ref == "elsewhere@1" and got.shape == (3, 3)  # three labels, from the head's weights
    torch.testing.assert_close(got, logits.softmax(-1), atol=1e-4, rtol=0)
    assert [(a.label, a.label_name) for a in answers] == [(int(x), "") for x in logits.argmax(-1)]

    # a file of texts: the column `sentence` unless --text-column names another
    reviews = tmp_path / "reviews.csv"
    reviews.write_text("review\n" + "\n".join(f'"{t}"' for t in TEXTS) + "\n")
    with pytest.raises(DataError, match=r"The adapter reads \['sentence'\] \(its spec's data "
                       r"columns, or `sentence` for a version pushed without one; --text-column"):  # fmt: skip
        gather_inputs(Registry(), "elsewhere", [], reviews)
    assert gather_inputs(Registry(), "elsewhere", [], reviews, text_column="review") == (
        TEXTS,
        None,
    )

    # as a composition's last member: it answers the same; scored on a file, not on a
    # validation split nothing names
    Registry().register_composition("solo", {"type": "stack"}, ["elsewhere@1"])
    _, stacked = predict_composition(Registry(), "solo", TEXTS)
    assert [a.probabilities for a in stacked] == [a.probabilities for a in answers]
    with pytest.raises(DataError, match=r"solo@1 was saved without --evaluation and its last "
                       r"member elsewhere@1 without a spec, so evaluate cannot tell .* or score "
                       r"it on a file: --data FILE"):  # fmt: skip
        evaluate_composition(Registry(), "solo")
    gold = [int(x) for x in logits.argmax(-1)]
    gold[0] = (gold[0] + 1) % 3  # one of three wrong: accuracy 2/3, whatever the weights say
    labelled = tmp_path / "labelled.tsv"
    rows = "".join(f"{text}\t{label}\n" for text, label in zip(TEXTS, gold, strict=True))
    labelled.write_text("text\ty\n" + rows)
    scored = evaluate_composition(
        Registry(), "solo", data=labelled, text_column="text", label_column="y"
    )
    assert (scored.metrics["examples"], scored.metrics["accuracy"]) == (3, pytest.approx(2 / 3))

    # a merged export too: a plain checkpoint that computes what peft computed
    export(Registry(), "elsewhere@1", "merged", tmp_path / "merged")
    merged = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.num_labels == 3
    with torch.no_grad():
        plain = merged(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(plain, logits, atol=1e-4, rtol=0)
    with pytest.raises(DataError, match="modules_to_save"):  # vLLM serves no new head
        export(Registry(), "elsewhere@1", "vllm", tmp_path / "vllm")
    assert not (tmp_path / "vllm").exists()


def test_a_causal_lm_lora_continues_as_peft_generates(embedded_home, tmp_path, monkeypatch):
    save_tiny_llama(tmp_path / "base")
    tokenizer = T.AutoTokenizer.from_pretrained(tmp_path / "base")
    config = peft.LoraConfig(
        task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    base = T.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    adapted = save_by_peft(base, config, tmp_path / "chat")
    identity = {"name": "chat", "base_model": None, "task": "chat", "language": "en"}
    pushed = push_folder(Registry(), tmp_path / "chat", identity=identity, mirror=False)
    # no --base-model: the base peft wrote into adapter_config.json
    assert pushed.version.base_model == str(tmp_path / "base")
    assert pushed.warnings == [
        f"no --base-model: registered under {str(tmp_path / 'base')!r}, the base "
        "adapter_config.json names"
    ]

    # a BERT adapter pushed as this Llama's: its modules are not the base's, nothing is stored
    body = T.AutoModel.from_pretrained(minilm_path())
    save_by_peft(body, peft.LoraConfig(r=2, target_modules=["query"]), tmp_path / "bert-lora")
    misfit = {**identity, "name": "misfit", "base_model": str(tmp_path / "base")}
    with pytest.raises(BaseModelMismatchError) as refused:
        push_folder(Registry(), tmp_path / "bert-lora", identity=misfit, mirror=False)
    assert str(refused.value) == (
        f"{tmp_path / 'bert-lora'} does not fit base model {str(tmp_path / 'base')!r}: it adapts "
        f"'encoder.layer.0.attention.self.query', which that base has no module for (its "
        f"adapter_config.json names {str(minilm_path())!r} as its base): give the base model it "
        "was trained on"
    )
    assert [v.ref for v in Registry().find()] == ["chat@1"]

    registry, fetched = Registry(), []
    get_file = registry.artifacts.get_file
    monkeypatch.setattr(
        registry.artifacts,
        "get_file",
        lambda digest, to, on_bytes=None: (fetched.append(digest), get_file(digest, to, on_bytes)),
    )
    _, answers = predict(registry, "chat@1", TEXTS)
    # its files are fetched once, to load: the head the registry recorded has no size to read
    assert len(fetched) == 1 + len(list((tmp_path / "chat").iterdir()))  # manifest + files
    for text, answer in zip(TEXTS, answers, strict=True):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = adapted.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                do_sample=False, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        assert answer.continuation == tokenizer.decode(out[0, ids.shape[1] :])
    assert len({a.continuation for a in answers}) == 3  # the inputs matter: not one fixed text

    # peft's own prompt tuning (run by peft) continues as peft's model does token by token
    # without a cache (peft 0.21's generate drifts from that after a few tokens here)
    base = T.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    prompted = save_by_peft(
        base, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), tmp_path / "pt"
    )
    push_folder(Registry(), tmp_path / "pt", identity={**identity, "name": "pt"}, mirror=False)
    _, (answer,) = predict(Registry(), "pt", TEXTS[:1])
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    grown = ids
    with torch.no_grad():
        for _ in range(NEW_TOKENS):  # (the tiny model never says its end token here)
            logits = prompted(input_ids=grown, attention_mask=torch.ones_like(grown)).logits
            grown = torch.cat([grown, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert answer.continuation == tokenizer.decode(grown[0, ids.shape[1] :])
    # an OFT: peft trips a transformers deprecation on every run; the command line says nothing
    oft = peft.get_peft_config(
        {"peft_type": "OFT", "oft_block_size": 4, "target_modules": ["q_proj"],
         "task_type": "CAUSAL_LM"}
    )  # fmt: skip
    save_by_peft(T.AutoModelForCausalLM.from_pretrained(tmp_path / "base"), oft, tmp_path / "oft")
    push_folder(Registry(), tmp_path / "oft", identity={**identity, "name": "oft"}, mirror=False)
    result = run_cli("predict", "oft", "--text", TEXTS[0], "--json", env={**os.environ})
    assert (result.returncode, result.stderr) == (0, ""), result.stderr[-2000:]
    assert json.loads(result.stdout)["ref"] == "oft@1"

    served = export(Registry(), "chat@1", "vllm", tmp_path / "vllm")  # peft's files, as written
    assert served.findings == [] and sorted(served.files) == sorted(
        p.name for p in (tmp_path / "chat").iterdir()
    )
    for name in served.files:
        assert (tmp_path / "vllm" / name).read_bytes() == (tmp_path / "chat" / name).read_bytes()


def test_files_without_a_head_to_answer_with_are_refused_naming_what_to_do(
    embedded_home, tmp_path, monkeypatch
):
    body = T.AutoModel.from_pretrained(minilm_path())  # peft's feature extraction: no head
    config = peft.LoraConfig(r=2, target_modules=["query"], init_lora_weights=False)
    save_by_peft(body, config, tmp_path / "body")
    Registry().register(
        tmp_path / "body", name="body", base_model=str(minilm_path()), task="sst2", language="en"
    )
    with pytest.raises(DataError) as refused:
        predict(Registry(), "body@1", TEXTS)
    assert str(refused.value) == (
        "body@1 was registered without a spec and its files carry no head, so predict has "
        "nothing to answer with: push the folder with --spec SPEC (the spec it was trained "
        "with; `adapterops rm body@1` first), or stack a task adapter on it (`adapterops "
        "composition save NAME body@1 TASK@VERSION`)"
    )
    garbled = tmp_path / "garbled"  # a classifier's config beside bytes that are no tensors
    garbled.mkdir()
    (garbled / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "task_type": "SEQ_CLS", "modules_to_save": ["classifier"]}'
    )
    (garbled / "adapter_model.safetensors").write_bytes(b"\xff" * 64)
    with monkeypatch.context() as old_registry:  # push refuses such bytes now; older code did not
        old_registry.setattr(bundles, "_check_contents", lambda folder, tensors: None)
        Registry().register(garbled, name="garbled", base_model="b", task="sst2", language="en")
    with pytest.raises(DataError, match=r"^garbled@1's adapter_model.safetensors is not a "):
        predict(Registry(), "garbled", TEXTS)

    result = run_cli("predict", "body", "--text", "x", "--json", env={**os.environ})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "its files carry no head" in result.stdout  # --json: the error as JSON

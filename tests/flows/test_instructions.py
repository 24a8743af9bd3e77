"""Instruction data for causal LMs: prompt/response columns or chat messages (through the
tokenizer's chat template), the loss on response tokens only, bad rows refused before training.

The base is a small Llama-shaped model with random weights and MiniLM's vocabulary (a real
tokenizer, given a chat template), saved to a local folder as a user's base model would be.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import peft_core as pc
from flows.data import DataError, load_raw, make_loader, prepare
from flows.prepare_job import check_inputs
from flows.spec import SpecError, parse_spec
from flows.train_job import (
    evaluate_folder,
    evaluate_model,
    load_base_model,
    load_tokenizer,
    train_from_spec,
)
from flows.validation_during_training import evaluation_sample
from tests.helpers import minilm_path, run_cli, save_tiny_llama

TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
ROWS = [
    ("translate to French: cat", "chat"),
    ("translate to French: dog", "chien"),
    ("translate to French: house", "maison"),
    ("translate to French: water", "eau"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("instruct-base"), chat_template=TEMPLATE)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def spec_for(base: Path, tmp_path: Path, rows: list[dict], **data) -> object:
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    return parse_spec(
        {
            "name": "instruct", "base_model": str(base), "task": "translate", "language": "en",
            "head": {"type": "causal-lm"}, "method": {"type": "lora", "rank": 4},
            "data": {"train": str(train), "validation": str(train), **data},
            "train": {"max_steps": 3, "batch_size": 2, "max_length": 32},
        }
    )  # fmt: skip


def pairs() -> list[dict]:
    return [{"prompt": p, "response": r} for p, r in ROWS]


def chats() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
        for p, r in ROWS
    ]


def test_prompt_tokens_are_masked_and_the_response_ends_with_eos(base, tmp_path):
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    tokenizer = load_tokenizer(spec)
    prepared = prepare(spec, tokenizer)
    for example, (prompt, response) in zip(prepared.train, ROWS, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer = tokenizer(response, add_special_tokens=False)["input_ids"]
        assert example["input_ids"] == [*prompt_ids, *answer, tokenizer.eos_token_id]
        assert example["labels"] == [-100] * len(prompt_ids) + [*answer, tokenizer.eos_token_id]


def test_chat_messages_go_through_the_chat_template(base, tmp_path):
    spec = spec_for(base, tmp_path, chats(), messages="messages")
    tokenizer = load_tokenizer(spec)
    example = prepare(spec, tokenizer).train[0]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": ROWS[0][0]}], add_generation_prompt=True, tokenize=True,
        return_dict=False,
    )  # fmt: skip
    assert example["input_ids"][: len(prompt)] == list(prompt)
    assert example["labels"][: len(prompt)] == [-100] * len(prompt)
    assert tokenizer.decode(example["input_ids"][len(prompt) :]).strip() == ROWS[0][1]


def test_sharegpt_turns_are_read_as_the_roles_they_stand_for(base, tmp_path):
    """{from: human/gpt, value} (ShareGPT's turns, as axolotl and many chat data sets write
    them) were "must be a list of {role, content}"; rows of both kinds may share a file."""
    speakers = [
        {"conversation": [{"from": "system", "value": "Be brief."}, *turns]}
        for turns in ([{"from": "human", "value": p}, {"from": "gpt", "value": r}] for p, r in ROWS)
    ]
    roles = [
        {"conversation": [{"role": "system", "content": "Be brief."}, *turns]}
        for turns in (
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in ROWS
        )
    ]
    read = {}
    for kind, rows in (
        ("speakers", speakers),
        ("roles", roles),
        ("both", speakers[:2] + roles[2:]),
    ):
        folder = tmp_path / kind
        folder.mkdir()
        spec = spec_for(base, folder, rows, messages="conversation")
        train, _ = load_raw(spec)
        assert [turn["role"] for turn in train[0]["conversation"]] == [
            "system",
            "user",
            "assistant",
        ]
        read[kind] = prepare(spec, load_tokenizer(spec)).train
    for kind in ("speakers", "both"):
        assert read[kind]["input_ids"] == read["roles"]["input_ids"]
        assert read[kind]["labels"] == read["roles"]["labels"]


def alpaca() -> list[dict]:
    """Alpaca's layout: an instruction, an input that is often empty, an output."""
    inputs = ["", "a pet", "", "to drink"]
    return [
        {"instruction": p, "input": i, "output": r} for (p, r), i in zip(ROWS, inputs, strict=True)
    ]


def test_alpacas_instruction_and_input_are_one_prompt_with_a_blank_line_between(base, tmp_path):
    """data.prompt: [instruction, input]: the input follows the instruction after a blank
    line, an empty one is left out; predict reads a file's prompts the same way."""
    from flows.predict_job import inputs_from_file

    spec = spec_for(base, tmp_path, alpaca(), prompt=["instruction", "input"], response="output")
    tokenizer = load_tokenizer(spec)
    prompts = [
        p if not i else f"{p}\n\n{i}" for p, i in ((r["instruction"], r["input"]) for r in alpaca())
    ]
    for example, prompt, (_, response) in zip(
        prepare(spec, tokenizer).train, prompts, ROWS, strict=True
    ):
        prompt_ids = tokenizer(prompt)["input_ids"]
        answer = tokenizer(response, add_special_tokens=False)["input_ids"]
        assert example["input_ids"] == [*prompt_ids, *answer, tokenizer.eos_token_id]
        assert example["labels"][: len(prompt_ids)] == [-100] * len(prompt_ids)
    texts, _ = inputs_from_file(spec, tmp_path / "train.jsonl")
    assert list(texts) == prompts and prompts[1] == "translate to French: dog\n\na pet"
    for wrong in ([], ["instruction", ""], 5):
        told = "data.prompt: give a column's name, or a list of column names joined into the prompt"
        with pytest.raises(SpecError, match=re.escape(told)):
            spec_for(base, tmp_path, alpaca(), prompt=wrong, response="output")


@pytest.mark.parametrize(
    ("rows", "told"),
    [
        (alpaca(), "These are Alpaca's columns: set data.prompt: [instruction, input] and "
         "data.response: output."),
        ([{"conversations": c["messages"]} for c in chats()],
         "For its chat turns set data.messages: conversations."),
        ([{"prompt": p, "completion": r} for p, r in ROWS],
         "For instructions set data.prompt: prompt and data.response: completion."),
        ([{"question": p} for p, _ in ROWS], "Set data.text (plain text), data.prompt and "
         "data.response (instructions), or data.messages (chat) in the spec."),
    ],
)  # fmt: skip
def test_a_causal_lm_read_without_its_columns_is_told_the_fields_its_file_needs(
    base, tmp_path, rows, told
):
    """A causal LM spec naming no columns read `sentence` and said "Set data.text /
    data.label", a classifier's advice, whatever the file held."""
    spec = spec_for(base, tmp_path, rows)
    with pytest.raises(DataError) as caught:
        prepare(spec, load_tokenizer(spec))
    assert str(caught.value).endswith(told)


def test_training_minimises_the_response_loss_and_reports_its_perplexity(base, tmp_path):
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    report = train_from_spec(spec, tmp_path / "out")
    tokenizer = load_tokenizer(spec)
    response_tokens = sum(
        len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for _, r in ROWS
    )
    assert report.metrics["tokens"] == response_tokens  # the prompts are not scored
    assert report.metrics["perplexity"] == pytest.approx(
        torch.tensor(report.metrics["eval_loss"]).exp().item(), rel=1e-6
    )


def overfitting_spec(base: Path, tmp_path: Path, **train: object):
    """8 steps at a learning rate of 1 on the pairs, validated on other answers to the same
    prompts: learning the training ones overfits."""
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    swapped = [
        {"prompt": p, "response": r}
        for (p, _), (_, r) in zip(ROWS, ROWS[1:] + ROWS[:1], strict=True)
    ]
    other = write_jsonl(tmp_path / "validation.jsonl", swapped)
    data = spec.data.model_copy(update={"validation": str(other)})
    settings = spec.train.model_copy(update={"max_steps": 8, "learning_rate": 1.0, **train})
    return spec.model_copy(update={"data": data, "train": settings})


def test_eval_every_keeps_the_weights_whose_validation_loss_was_lowest(base, tmp_path):
    """train.eval_every: 1 measures the validation loss after each step; with keep_best the
    adapter saved (and evaluated after training) is the best step's, whose loss it has."""
    spec = overfitting_spec(base, tmp_path, eval_every=1, keep_best=True)
    phases, heard = [], []
    report = train_from_spec(spec, tmp_path / "out", on_phase=phases.append,
                             on_evaluation=lambda step, loss: heard.append([step, loss]))  # fmt: skip
    assert [step for step, _ in report.evaluations] == list(range(1, 9))
    assert heard == report.evaluations
    best_step, lowest = min(report.evaluations, key=lambda point: point[1])
    assert report.best_step == best_step < 8  # (step 5 here: 10.1835, step 8: 10.1849)
    assert report.metrics["eval_loss"] == pytest.approx(lowest, rel=1e-5)
    assert f"keep the weights of step {best_step} of 8 (the lowest validation loss, " in (
        " ".join(phases)
    )
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (saved["evaluations"], saved["best_step"]) == (report.evaluations, best_step)


def test_patience_stops_training_when_the_validation_loss_stops_falling(base, tmp_path):
    spec = overfitting_spec(base, tmp_path, eval_every=1, patience=1, keep_best=True)
    phases: list[str] = []
    report = train_from_spec(spec, tmp_path / "out", on_phase=phases.append)
    # step 2 lowered the loss (10.195 from 10.249), step 3 did not (10.224): stop there
    assert [step for step, _ in report.evaluations] == [1, 2, 3]
    assert (report.stopped_at, report.best_step, len(report.losses)) == (3, 2, 3)
    assert "stop after step 3 of 8: the last evaluation found no lower validation loss" in phases
    assert any(line.startswith("keep the weights of step 2 of 3 (") for line in phases)
    assert phases.index(next(p for p in phases if p.startswith("keep"))) < phases.index(
        next(p for p in phases if p.startswith("evaluate on"))
    )
    assert json.loads((tmp_path / "out" / "report.json").read_text())["stopped_at"] == 3


def test_eval_rows_validates_on_one_sample_during_training_and_on_every_row_after(base, tmp_path):
    """train.eval_rows: 2 of the 4 validation rows, the same at every evaluation; the lowest
    loss is the saved (best) adapter's on those 2 rows, the evaluation after training all 4."""
    spec = overfitting_spec(base, tmp_path, eval_every=2, keep_best=True, eval_rows=2)
    report = train_from_spec(spec, tmp_path / "out")
    assert [step for step, _ in report.evaluations] == [2, 4, 6, 8]
    lowest = min(loss for _, loss in report.evaluations)
    model, tokenizer = load_base_model(spec, torch.device("cpu"))
    pc.load_adapter(model, tmp_path / "out", name=spec.name)
    pc.set_active(model, spec.name)
    validation = prepare(spec, tokenizer).validation
    sample = evaluation_sample(validation, 2, seed=spec.train.seed)
    rows = [tuple(ids) for ids in validation["input_ids"]]
    assert len({tuple(ids) for ids in sample["input_ids"]} & set(rows)) == 2
    on_sample = evaluate_model(model, sample, tokenizer, head="causal-lm")
    assert on_sample["eval_loss"] == pytest.approx(lowest, rel=1e-5)
    on_all = evaluate_model(model, validation, tokenizer, head="causal-lm")
    assert report.metrics["eval_loss"] == pytest.approx(on_all["eval_loss"], rel=1e-5)
    assert report.metrics["tokens"] == on_all["tokens"] > on_sample["tokens"]


@pytest.mark.parametrize(
    ("sharding", "rows", "metric"),
    [
        ("ddp", 3, "perplexity"),  # shares of 2 and 1 rows
        ("ddp", 3, "exact_match"),  # each replica generates its share's answers
        ("fsdp", 1, "perplexity"),  # shares of 1 and none: a filler forward
        ("fsdp", 1, "exact_match"),  # a share of none: a filler generation, in step
    ],
)
def test_two_processes_measure_the_validation_loss_in_shares_that_add_up(
    base, tmp_path, sharding, rows, metric
):
    """Under torchrun each process scores its share of the validation rows and the sums are
    added up, during training and after it: the lowest loss measured, and the evaluation
    after training, are what one process finds on the whole split with the weights kept."""
    spec = overfitting_spec(
        base, tmp_path, eval_every=2, keep_best=True, processes=2, sharding=sharding
    )
    spec = spec.model_copy(update={"evaluate": spec.evaluate.model_copy(update={"metric": metric})})
    validation = Path(spec.data.validation).read_text().splitlines()[:rows]
    Path(spec.data.validation).write_text("\n".join(validation) + "\n")
    scored: list[tuple[str, int, int]] = []
    report = train_from_spec(spec, tmp_path / "out", on_scoring=lambda *told: scored.append(told))
    assert (report.world_size, report.sharding) == (2, sharding)
    mine = (rows + 1) // 2  # rank 0's share: every other row, from the first
    relayed = [("rows scored in share 1 of 2", mine, mine)]
    if metric == "exact_match":
        relayed.append(("answers generated in share 1 of 2", mine, mine))
    assert scored == relayed  # after training only: the evaluations during it are not counted
    assert [step for step, _ in report.evaluations] == [2, 4, 6, 8]
    best_step, lowest = min(report.evaluations, key=lambda point: point[1])
    assert report.best_step == best_step
    assert report.metrics["eval_loss"] == pytest.approx(lowest, rel=1e-5)
    alone = evaluate_folder(spec, tmp_path / "out")  # this process, every row
    assert alone["tokens"] == report.metrics["tokens"]
    assert alone["eval_loss"] == pytest.approx(report.metrics["eval_loss"], rel=1e-5)
    if metric == "exact_match":
        assert report.metrics["generated"] == alone["generated"] == rows
        assert report.metrics["exact_match"] == alone["exact_match"]


def test_the_specs_learning_rate_schedule_is_the_one_training_follows(base, tmp_path):
    """train.lr_schedule: cosine (LLM fine-tuning's usual) and constant, after the warm-up."""
    rates = {}
    for schedule in ("cosine", "constant"):
        spec = overfitting_spec(base, tmp_path, lr_schedule=schedule, warmup_ratio=0.25)
        rates[schedule] = train_from_spec(spec, tmp_path / schedule).learning_rates
    warm = [0.0, 0.5]  # 2 of the 8 steps warm up, at a learning rate of 1
    assert rates["constant"] == pytest.approx([*warm, *[1.0] * 6])
    falling = [0.5 * (1 + math.cos(math.pi * (step - 2) / 6)) for step in range(2, 8)]
    assert rates["cosine"] == pytest.approx([*warm, *falling])


def test_packing_lays_a_batch_end_to_end_and_keeps_its_loss_and_gradients(base, tmp_path):
    """One row of four examples (no padding), attention kept inside each by the restarting
    position ids: the loss and every adapter gradient are the padded batch's."""
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    tokenizer = load_tokenizer(spec)
    prepared = prepare(spec, tokenizer)
    lengths = [len(example["input_ids"]) for example in prepared.train]
    assert len(set(lengths)) > 1  # the padded batch has padding to avoid
    batches = {
        packing: next(iter(make_loader(prepared.train, tokenizer, head="causal-lm",
                                       batch_size=4, shuffle=False, packing=packing)))
        for packing in (False, True)
    }  # fmt: skip
    packed = batches[True]
    assert packed["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in packed
    assert packed["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    model = LlamaForCausalLM.from_pretrained(base)
    pc.add_adapter(model, "l", pc.LoRA(rank=4, targets=("q", "v", "ffn_out")))
    with torch.no_grad():  # B starts at zero; random values give every weight a gradient
        for weight in (p for p in model.parameters() if p.requires_grad):
            weight.normal_(std=0.05)
    results = {}
    for packing, batch in batches.items():
        model.zero_grad()
        loss = model(**batch, use_cache=False).loss  # as pc.train runs it
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[packing] = (loss.detach(), grads)
    (padded_loss, padded_grads), (packed_loss, packed_grads) = results[False], results[True]
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-6, rtol=0)
    assert packed_grads.keys() == padded_grads.keys() and len(padded_grads) == 12
    for name, grad in padded_grads.items():
        assert float(grad.abs().max()) > 0
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-6, rtol=1e-5)


def test_packing_trains_through_the_flow_and_is_for_causal_lms_only(base, tmp_path):
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    document = spec.model_dump(mode="json")
    packed = parse_spec({**document, "train": {**document["train"], "packing": True}})
    padded_report = train_from_spec(spec, tmp_path / "padded")
    packed_report = train_from_spec(packed, tmp_path / "packed")
    assert packed_report.final_loss == pytest.approx(padded_report.final_loss, abs=1e-5)
    classifier = {
        **document,
        "head": {"type": "classification", "num_labels": 2},
        "data": {"train": document["data"]["train"], "text": "prompt"},
        "evaluate": {"metric": "accuracy"},
        "train": {**document["train"], "packing": True},
    }
    with pytest.raises(SpecError, match=r"train\.packing lays causal-lm examples end to end"):
        parse_spec(classifier)


def test_fsdp_in_one_process_is_said_to_shard_nothing(base, tmp_path, monkeypatch):
    """``train.sharding: fsdp`` without ``train.processes`` (or a torchrun around) trained the
    whole model in one process without a word."""
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    document = spec.model_dump(mode="json")

    def sharded(**train) -> object:
        return parse_spec({**document, "train": {**document["train"], "sharding": "fsdp", **train}})

    with pytest.warns(RuntimeWarning, match=rf"^{spec.name}: train\.sharding is fsdp but one process trains: "
                      r"nothing is sharded, .*set train\.processes to the number of GPUs"):  # fmt: skip
        check_inputs(sharded())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two processes (or a user's torchrun of two): no word
        check_inputs(sharded(processes=2))
        monkeypatch.setenv("WORLD_SIZE", "2")
        check_inputs(sharded())


def test_eval_rows_above_the_validation_splits_size_is_said(base, tmp_path):
    """``train.eval_rows`` larger than the validation split silently scored every row."""
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    document = spec.model_dump(mode="json")
    rows = len(load_raw(spec)[1])

    def sampled(eval_rows: int) -> object:
        return parse_spec({**document, "train": {**document["train"], "eval_every": 2, "eval_rows": eval_rows}})  # fmt: skip

    with pytest.warns(RuntimeWarning) as said:
        check_inputs(sampled(rows + 1))
    assert [str(w.message) for w in said] == [
        f"{spec.name}: train.eval_rows is {rows + 1} but the validation split has {rows} rows: "
        "each evaluation during training scores all of them"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as many rows as the split holds: no word
        check_inputs(sampled(rows))


def test_the_spec_chooses_the_attention_kernel_and_an_unusable_one_is_refused_first(base, tmp_path):
    """``load.attention`` reaches transformers (a packed eager run ends where the default sdpa
    run ends); a kernel this machine or base cannot run is one line from ``check_inputs``."""
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    document = spec.model_dump(mode="json")

    def with_load(**load) -> object:
        return parse_spec({**document, "load": {**document["load"], **load},
                           "train": {**document["train"], "packing": True}})  # fmt: skip

    eager, default = with_load(attention="eager"), with_load()
    assert load_base_model(eager)[0].config._attn_implementation == "eager"
    assert load_base_model(default)[0].config._attn_implementation == "sdpa"
    check_inputs(eager)
    eager_report = train_from_spec(eager, tmp_path / "eager")
    default_report = train_from_spec(default, tmp_path / "sdpa")
    assert eager_report.final_loss == pytest.approx(default_report.final_loss, abs=1e-5)
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(DataError, match=r"load\.attention flash_attention_2 cannot run on .*"
                           r"FlashAttention2.* choose sdpa or eager"):  # fmt: skip
            check_inputs(with_load(attention="flash_attention_2"))
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="flex_attention trains on a CUDA GPU only"):
            check_inputs(with_load(attention="flex_attention"))
    with pytest.raises(SpecError, match=r"load\.attention.*'sdpa'"):
        with_load(attention="flash")


def test_adapterops_build_trains_a_qlora_on_a_bf16_nf4_llama_with_checkpointing_and_packing(
    tmp_path, prefect_server
):
    """The whole GPU recipe, at tiny shapes on a CPU, through the command users run: a bf16
    Llama-shaped base stored in NF4, float32 LoRA on every linear layer, gradient checkpointing,
    packed instruction data; registered with what it was trained on."""
    folder = tmp_path / "llama-base"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.eos_token = "[SEP]"
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip  # every body weight a multiple of NF4's 64 x 256 blocks
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    train = write_jsonl(tmp_path / "train.jsonl", pairs())
    spec = tmp_path / "qlora.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "llama-qlora", "base_model": str(folder), "task": "translate",
                "language": "en", "head": {"type": "causal-lm"},
                "method": {"type": "lora", "rank": 8,
                           "targets": ["q", "k", "v", "o", "ffn_in", "ffn_out"]},
                "data": {"train": str(train), "validation": str(train),
                         "prompt": "prompt", "response": "response"},
                "load": {"dtype": "bf16", "quantization": "nf4"},
                "train": {"max_steps": 3, "batch_size": 2, "max_length": 32,
                          "gradient_checkpointing": True, "packing": True},
            }
        )
    )  # fmt: skip
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
    env |= {"ADAPTEROPS_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    result = run_cli("build", str(spec), "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    built = json.loads(result.stdout)
    assert (built["ref"], built["alias"]) == ("llama-qlora@1", "champion")
    shown = json.loads(run_cli("show", "llama-qlora@1", "--json", env=env).stdout)
    assert shown["lineage"]["base_dtype"] == "bfloat16"
    assert shown["lineage"]["base_quantization"] == "nf4"
    assert shown["spec"]["train"]["gradient_checkpointing"] is True
    assert shown["spec"]["train"]["packing"] is True
    assert shown["metrics"]["perplexity"] > 1
    pulled = json.loads(
        run_cli("pull", "llama-qlora@1", str(tmp_path / "got"), "--json", env=env).stdout
    )
    tensors = load_file(Path(pulled["path"]) / "adapter.safetensors")
    assert len(tensors) == 2 * 7 * 2  # A and B on 7 linear layers in 2 blocks
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}  # the base's compute dtype
    # what a QLoRA is for: vLLM serves it on the base (the causal LM's own head, frozen and not
    # saved, was taken for a new one: "modules_to_save must be empty, here ['lm_head']")
    exported = run_cli("export", "llama-qlora@1", "--for", "vllm", "--out", str(tmp_path / "vllm"), "--json", env=env)  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert json.loads(exported.stdout)["findings"] == []
    written = json.loads((tmp_path / "vllm" / "adapter_config.json").read_text())
    assert (written["task_type"], written["modules_to_save"], written["r"]) == ("CAUSAL_LM", None, 8)  # fmt: skip
    # and engines without adapters take it merged into the base's NF4 values, stored in bf16
    # (merging into 4-bit weights was refused: "load the base unquantised", which export
    # gave no way to do)
    merged = run_cli("export", "llama-qlora@1", "--for", "merged", "--out", str(tmp_path / "merged"), env=env)  # fmt: skip
    assert merged.returncode == 0, merged.stderr[-2000:]
    checkpoint = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in checkpoint and checkpoint["dtype"] == "bfloat16"
    weights = load_file(tmp_path / "merged" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert "model.layers.0.self_attn.q_proj.weight" in weights  # a plain Llama checkpoint
    # readable by the engine's own user as the files beside them are (safetensors made them
    # 0600 whatever the umask)
    for folder in ("vllm", "merged"):
        assert len({(p.stat().st_mode & 0o777) for p in (tmp_path / folder).iterdir()}) == 1


class TestBadRows:
    def test_an_empty_response(self, base, tmp_path):
        rows = [*pairs(), {"prompt": "say nothing", "response": " "}]
        spec = spec_for(base, tmp_path, rows, prompt="prompt", response="response")
        with pytest.raises(DataError, match="train split, row 5: the response is empty"):
            load_raw(spec)

    def test_a_chat_that_does_not_end_with_the_assistant(self, base, tmp_path):
        rows = [*chats(), {"messages": [{"role": "user", "content": "hello?"}]}]
        spec = spec_for(base, tmp_path, rows, messages="messages")
        with pytest.raises(
            DataError, match="row 5: the last message must be a non-empty assistant"
        ):
            load_raw(spec)

    def test_a_chat_that_ends_with_another_role_names_it(self, base, tmp_path):
        rows = [
            *chats(),
            {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hey"}]},
        ]
        spec = spec_for(base, tmp_path, rows, messages="messages")
        with pytest.raises(DataError) as raised:
            load_raw(spec)
        assert str(raised.value) == (
            "train split, row 5: the last message must be a non-empty assistant answer, not a "
            "'bot' message"
        )

    def test_a_sharegpt_turn_from_an_unknown_speaker(self, base, tmp_path):
        rows = [{"c": [{"from": "human", "value": "hi"}, {"from": "model", "value": "hey"}]}]
        spec = spec_for(base, tmp_path, rows, messages="c")
        with pytest.raises(DataError) as raised:
            load_raw(spec)
        assert str(raised.value) == (
            "train split, row 1: a turn from 'model'; ShareGPT's speakers are system, human, "
            "user, gpt, assistant, tool"
        )

    def test_a_prompt_longer_than_max_length(self, base, tmp_path):
        rows = [*pairs(), {"prompt": "word " * 64, "response": "short"}]
        spec = spec_for(base, tmp_path, rows, prompt="prompt", response="response")
        with pytest.raises(
            DataError, match=r"leaves no room for its response within train\.max_length 32"
        ):
            prepare(spec, load_tokenizer(spec))

    def test_instructions_need_a_causal_lm_head_and_both_columns(self, base, tmp_path):
        spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
        document = spec.model_dump(mode="json")
        with pytest.raises(SpecError, match=r"data\.prompt and data\.response together"):
            parse_spec({**document, "data": {**document["data"], "response": None}})
        classifier = {**document, "head": {"type": "classification", "num_labels": 2}}
        with pytest.raises(SpecError, match="instruction data for a causal-lm head"):
            parse_spec({**classifier, "evaluate": {"metric": "accuracy"}})


def test_predict_answers_a_chat_adapter_inside_its_chat_template(base, tmp_path, embedded_home):
    """Prompts of different lengths, left-padded into one batch (and one per batch): each is
    continued as generating it alone continues it."""
    from flows.build_job import build_from_spec
    from flows.predict_job import predict
    from flows.train_job import load_base_model
    from registry import Registry

    spec = spec_for(base, tmp_path, chats(), messages="messages")
    ref = build_from_spec(spec, Registry(), tmp_path / "built").ref
    texts = ["translate to French: cat", "hi", "translate to French: the small grey cat sleeps"]
    _, answers = predict(Registry(), ref, texts)
    _, one_by_one = predict(Registry(), ref, texts, batch_size=1)

    model, tokenizer = load_base_model(spec)
    Registry().load_into(model, ref, name=spec.name)
    for text, answer, alone in zip(texts, answers, one_by_one, strict=True):
        turn = [{"role": "user", "content": text}]
        prompt = tokenizer.apply_chat_template(
            turn, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt = {k: prompt[k] for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            output = model.eval().generate(
                **prompt, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        expected = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])
        assert (answer.continuation, alone.continuation) == (expected, expected), text

    # a whole answer, not 20 tokens of it: the command takes the length (the tiny random model
    # never says its end token, so each continuation takes every token it may)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    longer = run_cli("predict", ref, "--text", texts[1], "--max-new-tokens", "32", "--json", env=env)  # fmt: skip
    assert longer.returncode == 0, longer.stderr[-2000:]
    [answered] = json.loads(longer.stdout)["predictions"]
    _, [expected] = predict(Registry(), ref, texts[1:2], max_new_tokens=32)
    assert answered["continuation"] == expected.continuation
    assert len(tokenizer(expected.continuation, add_special_tokens=False)["input_ids"]) > 20
    assert expected.continuation.startswith(answers[1].continuation)  # greedy: 20 come first
    with pytest.raises(DataError, match="max_new_tokens must be a whole number of at least 1"):
        predict(Registry(), ref, texts, max_new_tokens=0)


def test_predict_continues_each_conversation_of_a_file_after_its_earlier_turns(
    base, tmp_path, embedded_home
):
    """``predict --data`` on a chat adapter: each row's turns through the chat template, a
    last assistant turn (the file's reference answer) left out; ShareGPT's turns read as
    their roles. A row that does not end with the user is named, exit 2, before any model
    loads."""
    from flows.build_job import build_from_spec
    from flows.train_job import load_base_model
    from registry import Registry

    spec = spec_for(base, tmp_path, chats(), messages="messages")
    ref = build_from_spec(spec, Registry(), tmp_path / "built").ref
    system = {"role": "system", "content": "answer in French"}
    talks = [
        [
            system,
            {"role": "user", "content": "translate: dog"},
            {"role": "assistant", "content": "chien"},
            {"role": "user", "content": "and cat?"},
        ],
        [
            {"role": "user", "content": "translate: water"},
            {"role": "assistant", "content": "eau"},
        ],
        [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"}],
    ]
    file = write_jsonl(tmp_path / "talks.jsonl", [{"messages": t} for t in talks])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = run_cli("predict", ref, "--data", str(file), "--json", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    answered = json.loads(result.stdout)["predictions"]

    model, tokenizer = load_base_model(spec)
    Registry().load_into(model, ref, name=spec.name)
    asked = [talks[0], talks[1][:1], [system | {"content": "be brief"}, {"role": "user", "content": "hi"}]]  # fmt: skip
    expected = []
    for turns in asked:
        prompt = tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt = {k: prompt[k] for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            output = model.eval().generate(
                **prompt, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        expected.append(tokenizer.decode(output[0, prompt["input_ids"].shape[1] :]))
    assert [a["continuation"] for a in answered] == expected
    assert [a["text"] for a in answered] == ["and cat?", "translate: water", "hi"]
    # the first user turn alone is another prompt: the earlier turns did reach the model
    alone = run_cli("predict", ref, "--text", "and cat?", "--json", env=env)
    assert json.loads(alone.stdout)["predictions"][0]["continuation"] != expected[0]

    talks.append([system, {"role": "assistant", "content": "bonjour"}])
    write_jsonl(file, [{"messages": t} for t in talks])
    refused = run_cli("predict", ref, "--data", str(file), env=env)
    assert (refused.returncode, refused.stderr) == (2, (
        "error: talks.jsonl, row 4: 'messages' ends with 'system'; a chat to answer ends with the user's "
        "turn (or with the assistant's answer after it, which predict answers anew)\n"
    ))  # fmt: skip


def test_several_chat_versions_continue_in_one_batch_as_each_does_alone(
    base, tmp_path, embedded_home
):
    """Two versions, prompts of two lengths: four rows left-padded into one generation, each
    row through its version's LoRA (per_row), each continued as that version alone does."""
    from flows.build_job import build_from_spec
    from flows.predict_job import predict, predict_many
    from registry import Registry

    refs = []
    for seed in (0, 1):
        spec = spec_for(base, tmp_path, chats(), messages="messages")
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
        refs.append(build_from_spec(spec, Registry(), tmp_path / f"built{seed}").ref)
    assert refs == ["instruct@1", "instruct@2"]
    texts = ["translate to French: cat", "hi"]
    together = predict_many(Registry(), refs, texts)
    first, second = ([a.continuation for a in answers] for _, answers in together)
    assert first != second  # the rows did run through different adapters
    for ref, answers in together:
        _, alone = predict(Registry(), ref, texts)
        assert [a.continuation for a in answers] == [a.continuation for a in alone], ref


class Parrot(torch.nn.Module):
    """A stand-in causal LM whose greedy continuation of each known prompt is fixed."""

    def __init__(self, continuations: dict[tuple[int, ...], list[int]]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.continuations = continuations
        self.calls: list[torch.Tensor] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **_):
        self.calls.append(input_ids)
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = tuple(ids[mask.bool()].tolist())
            new = self.continuations.get(prompt, []) + [pad_token_id] * max_new_tokens
            rows.append(torch.cat([ids, torch.tensor(new[:max_new_tokens])]))
        return torch.stack(rows)


def test_exact_match_generates_from_the_prompt_and_compares_the_whole_response():
    from flows.evaluation import exact_match

    pad, eos = 0, 9
    # rows: prompt tokens (label -100) then the response (labelled), right-padded
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, eos], [5, 3, 4, eos, pad], [2, 2, 8, 8, eos]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
        "labels": torch.tensor(
            [[-100, -100, 7, 8, eos], [-100, 3, 4, eos, -100], [-100, -100, 8, 8, eos]]
        ),
    }
    parrot = Parrot({(5, 6): [7, 8, eos], (5,): [3, 4, 1], (2, 2): [8, 8, eos, 4]})
    heard: list[tuple[str, int]] = []
    result = exact_match(
        parrot, [batch, batch], pad_token_id=pad, on_rows=lambda *n: heard.append(n)
    )
    # row 1 misses the end of sequence; row 3 may run on after its response
    assert result == {"exact_match": pytest.approx(2 / 3), "generated": 6}
    assert heard == [("generate", 3), ("generate", 6)]  # after each batch
    prompts = parrot.calls[0]
    assert prompts.tolist() == [[5, 6], [0, 5], [2, 2]]  # left-padded to one width

    # each row's answer, cut to its response's length, and whether it was exact; a row whose
    # response was cut away by truncation answers nothing
    from flows.evaluation import RowOutcome

    cut = {k: v[:2] for k, v in batch.items()}
    cut["labels"] = torch.tensor([[-100, -100, 7, 8, eos], [-100, -100, -100, -100, -100]])
    outcomes: list[RowOutcome] = []
    exact_match(parrot, [batch, cut], pad_token_id=pad, outcomes=outcomes)
    assert [(o.generated, o.exact) for o in outcomes] == [
        ([7, 8, eos], True), ([3, 4, 1], False), ([8, 8, eos], True), ([7, 8, eos], True),
        (None, None),
    ]  # fmt: skip


def test_a_continuation_ends_at_its_first_end_token_as_it_would_alone(base, tmp_path):
    """In a batch, a row that ended goes on with padding (and a model may run on past its end):
    each continuation is cut after its first end token, as generating it alone stops there."""
    from types import SimpleNamespace

    from flows.predict_job import answer_texts

    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    tokenizer = load_tokenizer(spec)
    eos, yes, no = tokenizer.sep_token_id, *tokenizer.convert_tokens_to_ids(["yes", "no"])
    texts = ["a cat", "the small grey dog"]
    prompts = [tuple(tokenizer(t)["input_ids"]) for t in texts]
    parrot = Parrot({prompts[0]: [yes, eos, no, no], prompts[1]: [no] * 20})  # 20 new at most
    parrot.generation_config = SimpleNamespace(eos_token_id=eos)
    (answers,) = answer_texts(parrot, tokenizer, texts, [spec], batch_size=8)
    assert [a.continuation for a in answers] == [
        f"yes {tokenizer.sep_token}",
        " ".join(["no"] * 20),
    ]
    assert parrot.calls[0].shape[0] == 2  # one batch
    # a longer or shorter continuation, when asked (predict --max-new-tokens)
    (three,) = answer_texts(parrot, tokenizer, texts, [spec], batch_size=8, max_new_tokens=3)
    assert [a.continuation for a in three] == [f"yes {tokenizer.sep_token}", "no no no"]


def test_predict_reads_an_instruction_files_prompts_and_a_chat_files_conversations(base, tmp_path):
    from flows.predict_job import inputs_from_file

    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    assert inputs_from_file(spec, tmp_path / "train.jsonl") == ([p for p, _ in ROWS], None)
    chat = spec_for(base, tmp_path, chats(), messages="messages")
    texts, pairs_read = inputs_from_file(chat, tmp_path / "train.jsonl")
    # the training file's conversations without their answers, each shown as its user turn
    assert (list(texts), pairs_read) == ([p for p, _ in ROWS], None)
    assert [t.turns for t in texts] == [[{"role": "user", "content": p}] for p, _ in ROWS]


def test_a_bad_row_of_a_file_to_score_is_named_by_the_file_and_its_place_in_it(base, tmp_path):
    """What evaluate --data reads: the file's name (not "talks.jsonl split") and the row's
    number in the file, also when --max-samples draws a shuffled few."""
    from flows.data import read_file

    chat = spec_for(base, tmp_path, chats(), messages="messages")
    talks = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(6)]  # fmt: skip
    talks[4]["messages"].pop()  # the fifth row has no answer to score
    file = write_jsonl(tmp_path / "talks.jsonl", talks)
    message = "talks.jsonl, row 5: the last message must be a non-empty assistant answer"
    for max_samples in (None, 5, 6):
        with pytest.raises(DataError, match=message):
            read_file(chat, file, max_samples=max_samples)


def test_an_exact_match_spec_needs_instruction_data(base, tmp_path):
    rows = [{"text": "plain text"}]
    with pytest.raises(SpecError, match="exact_match generates responses"):
        parse_spec(
            {
                "name": "plain", "base_model": str(base), "task": "lm", "language": "en",
                "head": {"type": "causal-lm"}, "method": {"type": "lora", "rank": 4},
                "data": {"train": str(write_jsonl(tmp_path / "t.jsonl", rows)), "text": "text"},
                "evaluate": {"metric": "exact_match"},
            }
        )  # fmt: skip


def test_training_with_exact_match_generates_every_validation_response(base, tmp_path):
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    spec = spec.model_copy(
        update={"evaluate": spec.evaluate.model_copy(update={"metric": "exact_match"})}
    )
    report = train_from_spec(spec, tmp_path / "out")
    assert report.metrics["generated"] == len(ROWS)
    # a random 2-layer model reproduces none of the French words
    assert report.metrics["exact_match"] == 0.0
    assert "perplexity" in report.metrics


@pytest.mark.parametrize("shape", ["prompt and response", "chat messages"])
def test_evaluate_out_writes_each_prompt_with_its_generated_answer_and_loss(
    base, tmp_path, embedded_home, shape
):
    """``evaluate --out`` on instruction data: each row's prompt and expected response beside
    the greedy answer (decoded), whether it was exact, and the row's own loss."""
    from flows.build_job import build_from_spec
    from flows.evaluate_job import evaluate_version
    from flows.predict_job import predict
    from registry import Registry

    if shape == "chat messages":
        spec = spec_for(base, tmp_path, chats(), messages="messages")
    else:
        spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    spec = spec.model_copy(
        update={"evaluate": spec.evaluate.model_copy(update={"metric": "exact_match"})}
    )
    built = build_from_spec(spec, Registry(), tmp_path / "out")
    ref = built.ref
    out = tmp_path / "answers.jsonl"
    result = evaluate_version(Registry(), ref, data=tmp_path / "train.jsonl", out=out)

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    if shape == "chat messages":  # JSON Lines keep the turns; a CSV cell holds their JSON
        prompts = [[{"role": "user", "content": p}] for p, _ in ROWS]
    else:
        prompts = [p for p, _ in ROWS]
    expected = [(row, prompts[row], ROWS[row][1]) for row in range(len(ROWS))]
    assert [(line["row"], line["prompt"], line["response"]) for line in lines] == expected
    if shape == "chat messages":
        expected = [(row, json.dumps(prompt), response) for row, prompt, response in expected]
    # a random 2-layer model reproduces none of the French words
    assert [line["exact"] for line in lines] == [False] * 4 and result.missed == 4
    tokens = [line["tokens"] for line in lines]
    assert sum(tokens) == result.metrics["tokens"] and min(tokens) >= 1  # each scores its answer
    weighted = sum(line["loss"] * line["tokens"] for line in lines) / sum(tokens)
    assert weighted == pytest.approx(result.metrics["eval_loss"], rel=1e-5)
    # the build's run keeps the same answers on its validation split (here the same file)
    from flows import tracking

    kept = tracking.client().download_artifacts(built.run_id, "validation_answers.csv")
    with open(kept, newline="") as opened:
        rows = list(csv.DictReader(opened))
    assert [(int(r["row"]), r["prompt"], r["response"]) for r in rows] == expected
    assert [r["generated"] for r in rows] == [line["generated"] for line in lines]
    assert [float(r["loss"]) for r in rows] == pytest.approx([line["loss"] for line in lines])
    if shape == "chat messages":  # its columns cannot be renamed: no option is offered
        rows_elsewhere = [{"conversation": chat["messages"]} for chat in chats()]
        with pytest.raises(DataError) as missing:
            evaluate_version(
                Registry(), ref, data=write_jsonl(tmp_path / "elsewhere.jsonl", rows_elsewhere)
            )
        assert str(missing.value).endswith(
            "its columns are ['conversation']. The adapter reads ['messages'] (its spec's data "
            "section): give a file with them"
        )
    if shape == "prompt and response":  # predict generates from the same prompts, further
        _, answers = predict(Registry(), ref, [p for p, _ in ROWS])
        for line, answer in zip(lines, answers, strict=True):
            assert line["generated"] and answer.continuation.startswith(line["generated"])


PREFIX = {"type": "peft", "config": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}}
PROMPT = {"type": "peft", "config": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}}


def test_a_prefix_tuned_adapter_trains_and_generates_its_validation_answers(base, tmp_path):
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    document = spec.model_dump(mode="json")
    prefix = parse_spec({**document, "method": PREFIX, "evaluate": {"metric": "exact_match"}})
    report = train_from_spec(prefix, tmp_path / "out")
    assert report.metrics["generated"] == len(ROWS)
    assert report.metrics["exact_match"] == 0.0  # a random 2-layer model learns no French


@pytest.mark.parametrize(
    ("method", "train", "words"),
    [
        (PREFIX, {"packing": True}, r"virtual tokens would come before the first"),
        (PROMPT, {"packing": True}, r"PROMPT_TUNING adapter's virtual tokens"),
        (PREFIX, {"gradient_checkpointing": True}, r"remove train\.gradient_checkpointing"),
    ],
)
def test_prompt_adapters_refuse_packing_and_prefixes_refuse_checkpointing(
    base, tmp_path, method, train, words
):
    spec = spec_for(base, tmp_path, pairs(), prompt="prompt", response="response")
    document = spec.model_dump(mode="json")
    with pytest.raises(SpecError, match=words):
        parse_spec({**document, "method": method, "train": {**document["train"], **train}})

"""Any Hugging Face peft method through ``pc.AnyPeft``: peft runs the layers, peft_core keeps the
lifecycle (activation, training flags, files both ways, removal, refusals)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
import transformers as T
from peft import PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

import peft_core as pc
from tests.helpers import TINY_CONFIGS, batch, logits, trainable_names

TARGETS = ["query", "value"]
# One of each kind: additive low-rank products (LoHa, LoKr), a multiplicative rotation (OFT),
# Householder reflections (HRA), an adaptive-rank SVD (AdaLoRA), learned input tokens (prompt tuning, P-tuning).
KINDS: dict[str, dict[str, object]] = {
    "LOHA": {"r": 4, "alpha": 8, "target_modules": TARGETS},
    "LOKR": {"r": 4, "target_modules": TARGETS},
    "OFT": {"oft_block_size": 8, "target_modules": TARGETS},
    "HRA": {"r": 4, "target_modules": TARGETS},
    "ADALORA": {"init_r": 4, "target_r": 2, "total_step": 20, "target_modules": TARGETS},
    "PROMPT_TUNING": {"num_virtual_tokens": 5},
    "P_TUNING": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
    # state shared by every layer, kept on one peft tuner for all adapters of the kind:
    # random projections (VeRA), a vector bank (VB-LoRA), a decomposition of the base (FRoD)...
    "VERA": {"r": 8, "target_modules": TARGETS},
    "VBLORA": {"r": 4, "num_vectors": 16, "vector_length": 8, "target_modules": TARGETS},
    "UNILORA": {"target_modules": TARGETS},
    "TINYLORA": {"target_modules": TARGETS},
    "FROD": {"target_modules": TARGETS},
    "RANDLORA": {"r": 4, "target_modules": TARGETS},
    "LILY": {"target_modules": TARGETS},  # one tensor listed under several layers in its files
}
SHARED_STATE = ["VERA", "VBLORA", "UNILORA", "TINYLORA", "FROD", "RANDLORA"]


def classifier(seed: int = 0) -> T.BertForSequenceClassification:
    torch.manual_seed(seed)
    return T.BertForSequenceClassification(TINY_CONFIGS["bert"]()).eval()


def config(kind: str) -> pc.AnyPeft:
    return pc.AnyPeft({"peft_type": kind, **KINDS[kind]})


@torch.no_grad()
def scramble(model: torch.nn.Module, name: str, seed: int = 5) -> None:
    """Non-trivial adapter and head weights (many peft methods start as the identity)."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in pc.adapter_state_dict(model, name).values():
        if tensor.is_floating_point():  # not FRoD's sparse indices
            tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator))


@pytest.mark.parametrize("kind", list(KINDS))
class TestEveryKind:
    def test_placed_switched_and_removed_cleanly(self, kind: str) -> None:
        model = classifier()
        inputs = batch(model)
        base = logits(model, inputs)
        before = pc.fingerprint(model).digest
        pc.add_adapter(model, "a", config(kind))
        scramble(model, "a")
        assert not torch.allclose(logits(model, inputs), base, atol=1e-3)
        assert pc.fingerprint(model).digest == before  # peft's layers are seen through
        pc.set_active(model, None)
        torch.testing.assert_close(logits(model, inputs), base)
        pc.set_active(model, "a")
        pc.delete_adapter(model, "a")
        torch.testing.assert_close(logits(model, inputs), base)
        assert pc.list_adapters(model) == []
        assert sum(p.numel() for p in model.parameters()) == sum(
            p.numel() for p in classifier().parameters()
        )

    @pytest.mark.parametrize("fmt", ["adapterops", "peft"])
    def test_files_load_back_to_the_same_logits(self, kind: str, fmt: str, tmp_path: Path) -> None:
        model = classifier()
        pc.add_adapter(model, "a", config(kind))
        scramble(model, "a")
        inputs = batch(model)
        expected = logits(model, inputs)
        pc.save_adapter(model, "a", tmp_path, format=fmt)  # type: ignore[arg-type]
        fresh = classifier()
        pc.load_adapter(fresh, tmp_path)
        torch.testing.assert_close(logits(fresh, inputs), expected)

    def test_only_the_adapter_and_its_head_train(self, kind: str) -> None:
        model = classifier()
        pc.add_adapter(model, "a", config(kind))
        names = trainable_names(model)
        assert names, "nothing trains"
        assert all(
            ".classifier." in n or "peft_core_prompts" in n or ".base_layer." not in n
            for n in names
        )
        assert not any(n.startswith("bert.embeddings.word_embeddings") for n in names)
        assert {n for n in names if "classifier" in n} == {
            "classifier.heads.a.weight",
            "classifier.heads.a.bias",
        }


def test_training_lowers_the_loss_of_a_loha_adapter() -> None:
    model = classifier()
    pc.add_adapter(model, "a", config("LOHA"))
    inputs = batch(model, rows=8, length=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loader = [{**inputs, "labels": labels}] * 30
    result = pc.train(model.train(), loader, max_steps=30, learning_rate=5e-2)
    assert result.losses[-1] < 0.5 * result.losses[0]


@pytest.mark.filterwarnings("ignore:.*`past_key_values`.*:FutureWarning")  # SHADOW's, in BERT
def test_a_config_peft_accepts_but_cannot_run_fails_on_the_first_batch_saying_so() -> None:
    model = classifier()
    # SHADOW wraps whole decoder blocks; on BERT's linear layers peft fails inside attention
    pc.add_adapter(model, "a", pc.AnyPeft({"peft_type": "SHADOW", "target_modules": TARGETS}))
    inputs = batch(model, rows=2, length=6)
    loader = [{**inputs, "labels": torch.tensor([0, 1])}]
    with pytest.raises(pc.ConfigError) as caught:
        pc.train(model.train(), loader, max_steps=1, learning_rate=1e-3)
    message = str(caught.value)
    assert message.startswith("peft could not run adapter 'a' on the first batch (AttributeError")
    assert "check config.target_modules" in message


def test_adalora_trains_with_its_regulariser_and_prunes_ranks(tmp_path: Path) -> None:
    model = classifier()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    model = T.BertForSequenceClassification(model.config)  # no dropout: train-mode loss is exact
    model.load_state_dict(classifier().state_dict())
    fields = {**KINDS["ADALORA"], "tinit": 2, "tfinal": 4, "deltaT": 2, "orth_reg_weight": 0.5}
    pc.add_adapter(model, "ada", pc.AnyPeft({"peft_type": "ADALORA", **fields}))
    inputs = {**batch(model, rows=8, length=6), "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}
    tuner = model.peft_core_peft_models["ada"].base_model
    with torch.no_grad():
        plain, regularised = model(**inputs).loss, tuner(**inputs).loss
    assert regularised > plain  # the tuner's forward adds the orthogonal regulariser
    result = pc.train(model, [inputs], max_steps=20, learning_rate=1e-2, warmup_ratio=0.0)
    torch.testing.assert_close(torch.tensor(result.losses[0]), regularised)
    pattern = model.peft_config["ada"].rank_pattern  # set by the rank allocator during training
    assert pattern is not None and sum(sum(mask) for mask in pattern.values()) < 4 * len(pattern)
    assert 0 in [sum(mask) for mask in pattern.values()]  # a module pruned to rank 0
    expected = logits(model.eval(), batch(model))
    fresh = classifier()
    with warnings.catch_warnings():  # no false alarm from peft about AdaLoRA's own pattern
        warnings.simplefilter("error", UserWarning)  # peft's PeftWarning among them
        warnings.simplefilter("error", RuntimeWarning)
        pc.save_adapter(model, "ada", tmp_path, format="peft")
        pc.load_adapter(fresh, tmp_path)
    saved = safetensors.torch.load_file(str(tmp_path / "adapter_model.safetensors"))
    ranks = [t.shape[0] for k, t in saved.items() if k.endswith("lora_E")]
    assert sorted(ranks) == sorted(sum(mask) for mask in pattern.values())
    torch.testing.assert_close(logits(fresh, batch(fresh)), expected)
    with warnings.catch_warnings():  # peft's own load raises its rank_pattern false alarm
        warnings.filterwarnings("ignore", "The following rank_pattern keys", RuntimeWarning)
        theirs = PeftModel.from_pretrained(classifier(), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, batch(fresh)), expected)


def test_loha_files_match_peft_both_ways(tmp_path: Path) -> None:
    ours = classifier()
    pc.add_adapter(ours, "a", config("LOHA"))
    scramble(ours, "a")
    inputs = batch(ours)
    expected = logits(ours, inputs)
    pc.save_adapter(ours, "a", tmp_path / "ours", format="peft")
    theirs = PeftModel.from_pretrained(classifier(), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(theirs, inputs), expected)

    made = get_peft_model(
        classifier(),
        PEFT_TYPE_TO_CONFIG_MAPPING["LOHA"](
            task_type="SEQ_CLS", r=4, alpha=8, target_modules=TARGETS, init_weights=False
        ),
    ).eval()
    made.save_pretrained(tmp_path / "theirs")
    loaded = classifier()
    record = pc.load_adapter(loaded, tmp_path / "theirs", name="theirs")
    assert record.config.type == "peft"
    torch.testing.assert_close(logits(loaded, inputs), logits(made, inputs))


DECODERS = {"gpt2": T.GPT2LMHeadModel, "llama": T.LlamaForCausalLM}  # Llama: grouped-query heads
PROMPTS_ON_DECODERS = {
    "prompt": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 5},
    "prefix": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 5},
    "prefix-mlp": {
        "peft_type": "PREFIX_TUNING",
        "num_virtual_tokens": 4,
        "prefix_projection": True,
        "encoder_hidden_size": 16,
    },
}
# peft's own forward passes the cache under its pre-5.24 name; not our code.
PEFTS_CACHE_NAME = "ignore:.*`past_key_values`.*:FutureWarning"


def decoder(family: str, seed: int = 0) -> T.PreTrainedModel:
    torch.manual_seed(seed)
    return DECODERS[family](TINY_CONFIGS[family]()).eval()


def prompted(family: str, kind: str) -> T.PreTrainedModel:
    model = decoder(family)
    pc.add_adapter(model, "p", pc.AnyPeft(PROMPTS_ON_DECODERS[kind]))
    scramble(model, "p")
    pc.set_active(model, "p")
    return model


@pytest.mark.parametrize("kind", list(PROMPTS_ON_DECODERS))
@pytest.mark.parametrize("family", list(DECODERS))
class TestPromptsOnDecoders:
    @pytest.mark.filterwarnings(PEFTS_CACHE_NAME)
    def test_logits_and_loss_match_peft_both_ways(
        self, family: str, kind: str, tmp_path: Path
    ) -> None:
        ours = prompted(family, kind)
        inputs = batch(ours)
        labels = inputs["input_ids"].clone()
        with torch.no_grad():
            our_out = ours(**inputs, labels=labels)
        if family == "llama":  # its forward takes (input_ids, attention_mask, ...); GPT-2's not
            with torch.no_grad():
                positional = ours(inputs["input_ids"], inputs["attention_mask"])
            torch.testing.assert_close(positional.logits, our_out.logits)  # row 0 is padded
        virtual = PROMPTS_ON_DECODERS[kind]["num_virtual_tokens"] if kind == "prompt" else 0
        assert our_out.logits.shape[1] == inputs["input_ids"].shape[1] + virtual
        pc.save_adapter(ours, "p", tmp_path / "ours", format="peft")
        theirs = PeftModel.from_pretrained(decoder(family), tmp_path / "ours").eval()
        with torch.no_grad():
            their_out = theirs(**inputs, labels=labels)
        torch.testing.assert_close(our_out.logits, their_out.logits)
        torch.testing.assert_close(our_out.loss, their_out.loss)
        # and back: peft's own files load into ours and compute what peft computes
        theirs.save_pretrained(tmp_path / "theirs")
        again = decoder(family)
        pc.load_adapter(again, tmp_path / "theirs", name="theirs")
        torch.testing.assert_close(logits(again, inputs), their_out.logits)

    def test_generating_with_the_cache_equals_recomputing_every_step(
        self, family: str, kind: str
    ) -> None:
        model = prompted(family, kind)
        ids = batch(model, rows=3, length=6)["input_ids"]
        mask = torch.ones_like(ids)
        mask[0, :2] = mask[1, :1] = 0  # left padding
        for use_cache in (True, False):
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                pad_token_id=0, use_cache=use_cache, output_scores=True,
                return_dict_in_generate=True,
            )  # fmt: skip
            whole = out.sequences
            whole_mask = torch.cat([mask, torch.ones(3, 4, dtype=mask.dtype)], dim=1)
            recomputed = logits(model, {"input_ids": whole, "attention_mask": whole_mask})
            virtual = recomputed.shape[1] - whole.shape[1]  # prompt tuning's extra positions
            for step, scores in enumerate(out.scores):
                expected = recomputed[:, virtual + ids.shape[1] - 1 + step]
                torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)

    def test_training_moves_only_the_prompt(self, family: str, kind: str) -> None:
        model = prompted(family, kind)
        inputs = batch(model, rows=4, length=6)
        before = {n: p.clone() for n, p in model.named_parameters()}
        # one answer for every position: something a prompt alone can teach a random model,
        # a little (its loss would not move at all if the prompt got no gradient)
        labels = torch.full_like(inputs["input_ids"], 7)
        loader = [{**inputs, "labels": labels}] * 20
        result = pc.train(model, loader, max_steps=20, learning_rate=0.3, warmup_ratio=0.0)
        assert result.losses[-1] < 0.98 * result.losses[0]
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert moved and all(n.startswith("peft_core_prompts.p.") for n in moved)


def test_prefix_tuning_is_refused_with_gradient_checkpointing() -> None:
    model = prompted("llama", "prefix")
    inputs = batch(model, rows=2, length=5)
    with pytest.raises(pc.ConfigError, match="without gradient checkpointing"):
        pc.train(
            model, [{**inputs, "labels": inputs["input_ids"]}], max_steps=1,
            learning_rate=1e-2, gradient_checkpointing=True,
        )  # fmt: skip


def test_prefix_tuning_is_refused_on_a_model_without_a_cache() -> None:
    model = classifier()
    inputs = batch(model)
    base = logits(model, inputs)
    with pytest.raises(pc.TargetError, match="BertForSequenceClassification takes none"):
        pc.add_adapter(model, "a", pc.AnyPeft(PROMPTS_ON_DECODERS["prefix"]))
    assert pc.list_adapters(model) == []
    torch.testing.assert_close(logits(model, inputs), base)


def test_two_peft_adapters_switch_and_survive_removal() -> None:
    model = classifier()
    pc.add_adapter(model, "loha", config("LOHA"))
    scramble(model, "loha", seed=1)
    pc.add_adapter(model, "prompt", config("PROMPT_TUNING"))
    scramble(model, "prompt", seed=2)
    inputs = batch(model)
    pc.set_active(model, "loha")
    only_loha = logits(model, inputs)
    assert pc.active_adapters(model) == ["loha"]
    pc.set_active(model, pc.Stack("loha", "prompt"))
    assert pc.active_adapters(model) == ["loha", "prompt"]
    assert not torch.allclose(logits(model, inputs), only_loha, atol=1e-3)
    pc.delete_adapter(model, "prompt")
    pc.set_active(model, "loha")
    torch.testing.assert_close(logits(model, inputs), only_loha)


@pytest.mark.parametrize("kind", SHARED_STATE)
def test_adapters_of_a_kind_with_shared_state_coexist_and_leave_cleanly(
    kind: str, tmp_path: Path
) -> None:
    model = classifier()
    inputs = batch(model)
    base = logits(model, inputs)
    for name, seed in (("a", 1), ("b", 2)):  # the second joins the first's peft tuner
        pc.add_adapter(model, name, config(kind))
        scramble(model, name, seed=seed)
    pc.set_active(model, "a")
    only_a = logits(model, inputs)
    pc.set_active(model, "b")
    assert not torch.allclose(logits(model, inputs), only_a, atol=1e-4)
    pc.save_adapter(model, "a", tmp_path, format="peft")
    theirs = PeftModel.from_pretrained(classifier(), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, inputs), only_a)  # the shared state is in the file
    pc.delete_adapter(model, "b")
    pc.set_active(model, "a")
    torch.testing.assert_close(logits(model, inputs), only_a)
    pc.delete_adapter(model, "a")
    torch.testing.assert_close(logits(model, inputs), base)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in classifier().parameters()
    )


def test_a_prompt_tuned_classifier_with_its_head_goes_both_ways_with_peft(tmp_path: Path) -> None:
    from peft import PromptTuningConfig

    made = get_peft_model(
        classifier(), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)
    ).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in made.parameters():
            if param.requires_grad:  # the prompt and the head
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    made.save_pretrained(tmp_path)  # its head's keys: base_model.classifier.* (no tuner)
    saved = safetensors.torch.load_file(str(tmp_path / "adapter_model.safetensors"))
    assert "base_model.classifier.weight" in saved
    ours = classifier()
    pc.load_adapter(ours, tmp_path)
    inputs = batch(ours)
    torch.testing.assert_close(logits(ours, inputs), logits(made, inputs))
    # and our file of it: the head again under base_model.classifier, where peft looks
    pc.save_adapter(ours, tmp_path.name, tmp_path / "ours", format="peft")
    theirs = PeftModel.from_pretrained(classifier(), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(theirs, inputs), logits(made, inputs))


def test_a_native_adapter_cannot_wrap_a_peft_layer() -> None:
    model = classifier()
    pc.add_adapter(model, "loha", config("LOHA"))
    with pytest.raises(pc.TargetError, match="already runs a peft adapter's layer"):
        pc.add_adapter(model, "native", pc.LoRA(rank=2, targets=("q",)))
    assert pc.list_adapters(model) == ["loha"]


def test_a_peft_adapter_cannot_wrap_a_native_layer() -> None:
    model = classifier()
    pc.add_adapter(model, "native", pc.LoRA(rank=2, targets=("q",)))
    inputs = batch(model)
    expected = logits(model, inputs)
    with pytest.raises(pc.TargetError, match=r"attention.self.query already runs native adapters"):
        pc.add_adapter(model, "loha", config("LOHA"))
    assert pc.list_adapters(model) == ["native"]
    torch.testing.assert_close(logits(model, inputs), expected)


def test_a_native_adapter_stacks_with_a_peft_one() -> None:
    model = classifier()
    pc.add_adapter(model, "native", pc.LoRA(rank=2, targets=("ffn_in",)))
    pc.add_adapter(model, "loha", config("LOHA"))
    pc.set_active(model, pc.Stack("native", "loha"))
    assert pc.active_adapters(model) == ["native", "loha"]


class TestRefusals:
    @pytest.mark.parametrize(
        ("fields", "words"),
        [
            ({"peft_type": "NOPE"}, "'NOPE' is not a peft method"),
            (["LOHA"], "config must be a mapping"),
            ({"peft_type": "LOHA", "rank": 4, "target_modules": TARGETS}, "rank"),
            ({"peft_type": "LOHA", "r": 4}, "needs config.target_modules"),
            ({"peft_type": "POLY", "target_modules": TARGETS}, "task id passed to every forward"),
            (
                {"peft_type": "LOHA", "target_modules": TARGETS, "modules_to_save": ["x"]},
                "config.modules_to_save",
            ),
            (
                {"peft_type": "MULTITASK_PROMPT_TUNING", "num_virtual_tokens": 4},
                "PeftModel wrapper",
            ),
            (
                {"peft_type": "LORA", "init_lora_weights": "pissa", "target_modules": TARGETS},
                "init_lora_weights 'pissa' rewrites the base model's weights",
            ),
            (
                {"peft_type": "LORA", "init_lora_weights": "olora", "target_modules": TARGETS},
                "init_lora_weights 'olora' rewrites",
            ),
            (
                {"peft_type": "TRAINABLE_TOKENS", "target_modules": ["word_embeddings"]},
                "TRAINABLE_TOKENS needs config.token_indices",
            ),
        ],
    )
    def test_bad_configs_fail_when_made(self, fields: dict[str, object], words: str) -> None:
        with pytest.raises(pc.ConfigError, match=words):
            pc.AnyPeft(fields)

    def test_targets_that_match_nothing_leave_the_model_alone(self) -> None:
        model = classifier()
        inputs = batch(model)
        base = logits(model, inputs)
        with pytest.raises(pc.TargetError, match="nowhere"):
            pc.add_adapter(
                model, "a", pc.AnyPeft({"peft_type": "LOHA", "target_modules": ["nowhere"]})
            )
        assert pc.list_adapters(model) == []
        torch.testing.assert_close(logits(model, inputs), base)

    def test_per_row_and_average_are_refused(self) -> None:
        model = classifier()
        pc.add_adapter(model, "a", config("LOHA"))
        pc.add_adapter(model, "b", pc.LoRA(rank=2, targets=("ffn_in",)))
        with (
            pytest.raises(pc.ConfigError, match="per_row cannot route 'a'"),
            pc.per_row(model, ["a", "b", None]),
        ):
            pass
        with pytest.raises(pc.CompositionError, match="plain Stack"):
            pc.set_active(model, pc.Average("a", "b"))

    def test_files_that_do_not_fit_leave_the_model_alone(self, tmp_path: Path) -> None:
        model = classifier()
        pc.add_adapter(
            model, "a", pc.AnyPeft({"peft_type": "LOHA", "r": 8, "target_modules": TARGETS})
        )
        pc.save_adapter(model, "a", tmp_path)
        meta = (tmp_path / "adapter.json").read_text().replace('"r": 8', '"r": 4')
        (tmp_path / "adapter.json").write_text(meta)
        fresh = classifier()
        inputs = batch(fresh)
        base = logits(fresh, inputs)
        with pytest.raises(pc.AdapterFormatError, match="shapes"):
            pc.load_adapter(fresh, tmp_path)
        assert pc.list_adapters(fresh) == []
        torch.testing.assert_close(logits(fresh, inputs), base)


def test_plan_counts_what_training_trains() -> None:
    model = classifier()
    planned = pc.plan(model, config("LOHA"))
    pc.add_adapter(model, "a", config("LOHA"))
    assert planned.trainable_params == pc.measure(model, "a").trainable_params == 2147


# peft fills IA3's feedforward_modules with its default for the model type (BERT: output.dense)
# and then refuses its own file when that default is no target; ours must load into peft.
@pytest.mark.parametrize("targets", [["query", "value"], ["query", "dense"]])
def test_ia3_files_without_feedforward_modules_load_into_peft(
    targets: list[str], tmp_path: Path
) -> None:
    ours = classifier()
    pc.add_adapter(ours, "a", pc.AnyPeft({"peft_type": "IA3", "target_modules": targets}))
    scramble(ours, "a")
    inputs = batch(ours)
    expected = logits(ours, inputs)
    pc.save_adapter(ours, "a", tmp_path, format="peft")
    theirs = PeftModel.from_pretrained(classifier(), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, inputs), expected, rtol=0, atol=0)
    loaded = classifier()
    pc.load_adapter(loaded, tmp_path)
    torch.testing.assert_close(logits(loaded, inputs), expected)


def test_a_pissa_lora_loads_only_once_peft_has_converted_it(tmp_path: Path) -> None:
    """PiSSA starts the adapter from the weights' principal components and leaves the residual
    in the base: its files fit only that residual base until peft converts them into a LoRA for
    the real base (rank 2r)."""
    from peft import LoraConfig

    torch.manual_seed(0)
    tuned = get_peft_model(
        classifier(),
        LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="pissa"),
    )
    tuned.save_pretrained(tmp_path / "initial")  # the starting adapter, before training
    with torch.no_grad():  # "training"
        for name, parameter in tuned.named_parameters():
            if "lora_" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    inputs = batch(tuned)
    tuned.eval()
    expected = logits(tuned, inputs)  # the residual base with the trained adapter
    tuned.save_pretrained(tmp_path / "unconverted")
    tuned.save_pretrained(
        tmp_path / "converted", path_initial_model_for_weight_conversion=str(tmp_path / "initial")
    )
    model = classifier()  # the real base
    with pytest.raises(pc.AdapterFormatError, match="init_lora_weights 'pissa' and not converted"):
        pc.load_adapter(model, tmp_path / "unconverted")
    assert pc.list_adapters(model) == []
    record = pc.load_adapter(model, tmp_path / "converted")
    assert record.config.rank == 8  # the trained adapter beside the negated start
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-5)

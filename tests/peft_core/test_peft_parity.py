"""Parity with Hugging Face peft, the reference LoRA implementation.

- the same LoRA weights give the same logits in both;
- our PEFT-format files load in ``peft.PeftModel.from_pretrained`` with identical outputs;
- a LoRA trained and saved by peft loads into peft_core with identical outputs.
"""

from __future__ import annotations

import copy
import json
import warnings

import peft
import pytest
import torch
import transformers as T

import peft_core as pc
from tests.helpers import batch, logits, minilm_path, perturb_adapter

ATOL = 1e-5


def minilm():
    return T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()


def train_peft_a_little(peft_model, inputs, steps=3):
    """A few real optimiser steps so B is non-zero and the head moves."""
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    is_classifier = type(peft_model.get_base_model()).__name__.endswith("SequenceClassification")
    ids = inputs["input_ids"]
    labels = torch.zeros(ids.shape[0], dtype=torch.long) if is_classifier else ids
    for _ in range(steps):
        loss = peft_model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()


class TestSameWeightsSameLogits:
    def test_minilm_query_value(self):
        model = minilm()
        reference = peft.get_peft_model(
            copy.deepcopy(model),
            peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]),
        ).eval()
        ours = copy.deepcopy(model)
        pc.add_adapter(ours, "a", pc.LoRA(rank=8, alpha=16, targets=("q", "v")))
        with torch.no_grad():
            for name, param in reference.named_parameters():
                if "lora_" in name:
                    param.normal_(std=0.05)
                    module = name.removeprefix("base_model.model.").split(".lora_")[0]
                    which = "lora_A" if ".lora_A." in name else "lora_B"
                    getattr(ours.get_submodule(module).adapters["a"], which).weight.copy_(param)
        inputs = batch(model)
        torch.testing.assert_close(
            logits(ours, inputs), logits(reference, inputs), atol=ATOL, rtol=0
        )


class TestAllLinear:
    @pytest.mark.parametrize(
        ("family", "head", "task_type"),
        [
            ("minilm", "classification", "SEQ_CLS"),  # the pooler's dense too, as in peft
            ("gpt2", "causal-lm", "CAUSAL_LM"),
            ("llama", "causal-lm", "CAUSAL_LM"),
        ],
    )
    def test_adapts_the_modules_peft_all_linear_adapts(self, tiny_model, family, head, task_type):
        model = minilm() if family == "minilm" else tiny_model(family, head)
        config = peft.LoraConfig(r=4, target_modules="all-linear", task_type=task_type)
        reference = peft.get_peft_model(copy.deepcopy(model), config)
        theirs = {
            name.removeprefix("base_model.model.").removesuffix(".lora_A")
            for name, _ in reference.named_modules()
            if name.endswith(".lora_A")
        }
        record = pc.add_adapter(model, "a", pc.LoRA(rank=4, targets=("all-linear",)))
        ours = {target.module_name for target in record.targets}
        assert ours == theirs
        assert len(ours) == {"minilm": 6 * 6 + 1, "gpt2": 2 * 4, "llama": 2 * 7}[family]

    def test_the_body_only_not_a_pretrained_heads_layers(self, tiny_model):
        """peft's all-linear also adapts a masked-LM head's transform; the pre-trained head
        stays frozen here (every method adapts the body)."""
        model = tiny_model("bert", "masked-lm")
        record = pc.add_adapter(model, "a", pc.LoRA(targets=("all-linear",)))
        names = {target.module_name for target in record.targets}
        assert len(names) == 2 * 6 and all(name.startswith("bert.encoder.") for name in names)


class TestOurFilesLoadInPeft:
    @pytest.mark.parametrize(
        ("family", "head", "targets"),
        [
            ("minilm", "classification", ("q", "v")),
            ("bert", "masked-lm", ("q", "k", "v", "o", "ffn_in", "ffn_out")),
            ("gpt2", "causal-lm", ("q", "v")),  # slices of the fused c_attn
            ("gpt2", "classification", ("q", "v", "o")),  # fused and plain: rank_pattern
            ("llama", "causal-lm", ("q", "v", "ffn_in")),
            ("llama", "causal-lm", ("all-linear",)),
            ("gpt2", "causal-lm", ("all-linear",)),  # c_attn whole, as peft adapts it
        ],
    )
    def test_identical_outputs(self, tiny_model, family, head, targets, tmp_path):
        model = minilm() if family == "minilm" else tiny_model(family, head)
        pristine = copy.deepcopy(model)
        pc.add_adapter(model, "a", pc.LoRA(rank=4, alpha=8, targets=targets))
        perturb_adapter(model, "a")
        inputs = batch(model)
        expected = logits(model, inputs)
        pc.save_adapter(model, "a", tmp_path / "a", format="peft")

        config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA"
        assert not set(config) - set(peft.LoraConfig.__dataclass_fields__), "no unknown keys"
        with warnings.catch_warnings():
            # peft warns when target_modules selects a module the file has no tensors for
            warnings.filterwarnings("error", message="Found missing adapter keys")
            loaded = peft.PeftModel.from_pretrained(pristine, tmp_path / "a").eval()
        torch.testing.assert_close(logits(loaded, inputs), expected, atol=ATOL, rtol=1e-5)

    def test_layout_matches_what_serving_engines_read(self, tmp_path):
        from safetensors.torch import load_file

        model = minilm()
        pc.add_adapter(model, "sst2", pc.LoRA(rank=8, targets=("q", "v")))
        pc.save_adapter(model, "sst2", tmp_path, format="peft")
        assert {p.name for p in tmp_path.iterdir()} == {
            "adapter_config.json",
            "adapter_model.safetensors",
            "adapterops.json",
        }
        keys = set(load_file(tmp_path / "adapter_model.safetensors"))
        assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
        assert "base_model.model.bert.encoder.layer.5.attention.self.value.lora_B.weight" in keys
        assert "base_model.model.classifier.weight" in keys
        config = json.loads((tmp_path / "adapter_config.json").read_text())
        assert config["target_modules"] == ["query", "value"]
        assert config["modules_to_save"] == ["classifier"]
        assert config["r"] == 8 and config["lora_alpha"] == 16
        assert config["task_type"] == "SEQ_CLS"

    def test_non_lora_methods_cannot_use_the_peft_format(self, tmp_path):
        model = minilm()
        pc.add_adapter(model, "a", pc.Pfeiffer())
        with pytest.raises(
            pc.ConfigError, match=r"PEFT format holds dora, ia3, lora adapters; .a. is pfeiffer"
        ):
            pc.save_adapter(model, "a", tmp_path, format="peft")
        assert not any(tmp_path.iterdir())


class TestPeftFilesLoadInOurs:
    @pytest.mark.parametrize(
        ("family", "head", "lora_config"),
        [
            (
                "minilm",
                "classification",
                peft.LoraConfig(
                    r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"
                ),
            ),
            (
                "gpt2",
                "causal-lm",
                peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True),
            ),
            (
                "llama",
                "causal-lm",
                peft.LoraConfig(
                    r=4,
                    lora_alpha=4,
                    target_modules=["q_proj", "down_proj"],
                    rank_pattern={"down_proj": 2},
                    alpha_pattern={"down_proj": 8},
                ),
            ),
            (
                "bert",
                "classification",
                peft.LoraConfig(
                    r=4,
                    lora_alpha=16,
                    target_modules=["query"],
                    use_rslora=True,
                    modules_to_save=["classifier"],
                ),
            ),
        ],
    )
    def test_identical_outputs(self, tiny_model, family, head, lora_config, tmp_path):
        model = minilm() if family == "minilm" else tiny_model(family, head)
        pristine = copy.deepcopy(model)
        inputs = batch(model)
        reference = peft.get_peft_model(model, lora_config)
        train_peft_a_little(reference, inputs)
        expected = logits(reference, inputs)
        reference.save_pretrained(tmp_path / "peft")

        record = pc.load_adapter(pristine, tmp_path / "peft", name="from_peft")
        assert record.name == "from_peft"
        torch.testing.assert_close(logits(pristine, inputs), expected, atol=ATOL, rtol=1e-5)

    def test_a_peft_lora_without_head_loads_into_a_classifier(self, tiny_model, tmp_path):
        model = tiny_model("bert", "classification")
        pristine = copy.deepcopy(model)
        inputs = batch(model)
        reference = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query"]))
        train_peft_a_little(reference, inputs)
        expected = logits(reference, inputs)  # the base model's own classifier
        reference.save_pretrained(tmp_path)
        record = pc.load_adapter(pristine, tmp_path, name="nohead")
        assert not record.head.trainable
        torch.testing.assert_close(logits(pristine, inputs), expected, atol=ATOL, rtol=1e-5)

"""IA3 and DoRA against Hugging Face peft, the reference implementation of both.

For each: the same weights give the same logits; a file peft trained and saved loads into
peft_core with identical outputs; our PEFT-format files load in peft with identical outputs;
our merged weights equal peft's ``merge_and_unload``; per-row routing equals each row alone.
(Merge/unmerge, save/load and the rest of the invariants run for both in test_invariants.py.)
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import peft
import pytest
import torch

import peft_core as pc
from tests.helpers import batch, logits, perturb_adapter
from tests.peft_core.test_peft_parity import train_peft_a_little

ATOL = 1e-5


@dataclass(frozen=True)
class Case:
    family: str
    head: str
    ours: pc.MethodConfig
    theirs: peft.PeftConfig


CASES = {
    "ia3-bert": Case(
        "bert",
        "classification",
        pc.IA3(targets=("k", "v", "ffn_out"), feedforward=("ffn_out",)),
        peft.IA3Config(
            target_modules=r".*\.(attention\.self\.(key|value)|\d+\.output\.dense)",
            feedforward_modules=r".*\.\d+\.output\.dense",
            modules_to_save=["classifier"],
        ),
    ),
    "ia3-llama": Case(
        "llama",
        "causal-lm",
        pc.IA3(targets=("k_proj", "v_proj", "down_proj"), feedforward=("down_proj",)),
        peft.IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
        ),
    ),
    "ia3-gpt2": Case(
        "gpt2",
        "causal-lm",
        pc.IA3(targets=("c_attn", "mlp.c_proj"), feedforward=("mlp.c_proj",)),
        peft.IA3Config(
            target_modules=["c_attn", "mlp.c_proj"],
            feedforward_modules=["mlp.c_proj"],
            fan_in_fan_out=True,
        ),
    ),
    "ia3-llama-all-linear": Case(  # feedforward needs no listing among every linear layer
        "llama",
        "causal-lm",
        pc.IA3(targets=("all-linear",), feedforward=("ffn_out",)),
        peft.IA3Config(target_modules="all-linear", feedforward_modules=["down_proj"]),
    ),
    "dora-bert": Case(
        "bert",
        "classification",
        pc.DoRA(rank=4, alpha=8, targets=("query", "value")),
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["query", "value"],
            use_dora=True,
            modules_to_save=["classifier"],
        ),
    ),
    "dora-llama": Case(
        "llama",
        "causal-lm",
        pc.DoRA(rank=4, alpha=16, targets=("q_proj", "v_proj", "down_proj")),
        peft.LoraConfig(
            r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True
        ),
    ),
    "dora-llama-all-linear": Case(
        "llama",
        "causal-lm",
        pc.DoRA(rank=4, alpha=16, targets=("all-linear",)),
        peft.LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", use_dora=True),
    ),
    "dora-gpt2": Case(
        "gpt2",
        "causal-lm",
        pc.DoRA(rank=2, alpha=4, targets=("c_attn",)),
        peft.LoraConfig(
            r=2, lora_alpha=4, target_modules=["c_attn"], use_dora=True, fan_in_fan_out=True
        ),
    ),
}


def _peft_model(model, case: Case):
    return peft.get_peft_model(copy.deepcopy(model), copy.deepcopy(case.theirs)).eval()


def _our_key(peft_name: str) -> str:
    """peft parameter name -> our adapter_state_dict key."""
    module, _, rest = peft_name.removeprefix("base_model.model.").partition(".")
    plain = f"{module}.{rest}".replace(".default", "")
    plain = plain.replace("lora_magnitude_vector.weight", "lora_magnitude_vector")
    return plain


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
class TestAgainstPeft:
    def test_same_weights_same_logits(self, tiny_model, case):
        model = tiny_model(case.family, case.head)
        reference = _peft_model(model, case)
        ours = copy.deepcopy(model)
        pc.add_adapter(ours, "a", case.ours)
        state = pc.adapter_state_dict(ours, "a")
        moved = 0
        with torch.no_grad():
            for name, param in reference.named_parameters():
                if not param.requires_grad or "modules_to_save" in name:
                    continue
                param.add_(torch.randn_like(param) * 0.1)
                target = state[_our_key(name)]
                target.copy_(param.reshape(target.shape))
                moved += 1
        assert moved == len([k for k in state if not k.startswith(("classifier", "score"))])
        inputs = batch(model)
        if case.head == "classification":  # the head copies start equal; compare the body
            pc.set_active(ours, "a")
        torch.testing.assert_close(
            _hidden(ours, inputs), _hidden(reference, inputs), atol=ATOL, rtol=1e-5
        )
        assert not torch.allclose(_hidden(ours, inputs), _hidden(model, inputs), atol=1e-3)

    def test_peft_files_load_in_ours(self, tiny_model, case, tmp_path):
        model = tiny_model(case.family, case.head)
        pristine = copy.deepcopy(model)
        inputs = batch(model)
        reference = peft.get_peft_model(model, copy.deepcopy(case.theirs))
        train_peft_a_little(reference, inputs)
        expected = logits(reference, inputs)
        reference.save_pretrained(tmp_path / "peft")
        record = pc.load_adapter(pristine, tmp_path / "peft", name="from_peft")
        assert record.config.type == case.ours.type
        torch.testing.assert_close(logits(pristine, inputs), expected, atol=ATOL, rtol=1e-5)

    def test_our_files_load_in_peft(self, tiny_model, case, tmp_path):
        model = tiny_model(case.family, case.head)
        pristine, again = copy.deepcopy(model), copy.deepcopy(model)
        pc.add_adapter(model, "a", case.ours)
        perturb_adapter(model, "a", scale=0.1)
        inputs = batch(model)
        expected = logits(model, inputs)
        pc.save_adapter(model, "a", tmp_path / "a", format="peft")
        config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
        config_class = type(case.theirs)
        assert config["peft_type"] == case.theirs.peft_type.value
        assert not set(config) - set(config_class.__dataclass_fields__), "no unknown keys"
        loaded = peft.PeftModel.from_pretrained(pristine, tmp_path / "a").eval()
        torch.testing.assert_close(logits(loaded, inputs), expected, atol=ATOL, rtol=1e-5)
        # and back into ours, through the same files
        pc.load_adapter(again, tmp_path / "a")
        torch.testing.assert_close(logits(again, inputs), expected, atol=ATOL, rtol=1e-5)

    def test_merged_weights_equal_peft_merge_and_unload(self, tiny_model, case, tmp_path):
        model = tiny_model(case.family, case.head)
        pristine = copy.deepcopy(model)
        inputs = batch(model)
        reference = peft.get_peft_model(model, copy.deepcopy(case.theirs))
        train_peft_a_little(reference, inputs)
        reference.save_pretrained(tmp_path)
        theirs = reference.merge_and_unload().state_dict()
        pc.load_adapter(pristine, tmp_path, name="a")
        ours = pc.merged_state_dict(pristine, "a")
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            torch.testing.assert_close(value, theirs[key], atol=1e-5, rtol=1e-5, msg=key)

    def test_per_row_equals_each_row_alone(self, tiny_model, case):
        model = tiny_model(case.family, case.head)
        for name, scale in (("a", 0.1), ("b", 0.3)):
            pc.add_adapter(model, name, case.ours)
            perturb_adapter(model, name, scale=scale)
        pc.add_adapter(model, "lora", pc.LoRA(rank=2, targets=("q",)))  # a third method beside
        perturb_adapter(model, "lora")
        inputs = batch(model, rows=4)
        rows = ["a", None, "b", "lora"]
        alone = []
        for i, name in enumerate(rows):
            pc.set_active(model, name)
            alone.append(logits(model, {k: v[i : i + 1] for k, v in inputs.items()}))
        with pc.per_row(model, rows):
            mixed = logits(model, inputs)
        torch.testing.assert_close(mixed, torch.cat(alone), atol=ATOL, rtol=1e-5)


def _hidden(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return out.hidden_states[-1]
